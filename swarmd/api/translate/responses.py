"""OpenAI's Responses API (``POST /v1/responses``) to and from chat completions.

Theory of operation
-------------------
:func:`chat_request` maps a Responses body to a chat-completions body:
``instructions`` becomes the first system message, then the stored
conversation of ``previous_response_id`` (chat messages the caller fetched),
then ``input`` (a string, or items: messages with ``input_text`` /
``output_text`` / ``input_image`` parts, ``function_call`` and
``function_call_output``; ``reasoning`` items are dropped).  Function tools
and ``tool_choice`` map one to one, ``text.format`` to ``response_format``,
``max_output_tokens`` to ``max_tokens``.  Anything else that changes the
answer and cannot be expressed (built-in tools, ``background``, file inputs,
``item_reference``) is a 400 naming the parameter.

:func:`response_object` builds the Response from a non-streamed answer;
:class:`EventStream` turns OpenAI SSE bytes into the Responses event stream
(``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta`` ... ``.done``,
``response.function_call_arguments.delta`` / ``.done``,
``response.output_item.done``, then ``response.completed`` -- or
``response.incomplete`` when the token limit cut the answer -- with usage),
each with a ``sequence_number``.  Item ids derive from the response id, so a
mapping is deterministic given the id.  :func:`history_of` gives the chat
messages a stored response contributes to a follow-up.

Errors are OpenAI's error object (the same as the chat routes); a stream that
fails after it started ends with an ``error`` event and ``response.failed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from swarmd.api.translate.common import (
    ChatAnswer,
    ChatDeltas,
    Failure,
    JsonObj,
    Reasoning,
    SseReader,
    Text,
    ToolArgs,
    ToolStart,
    TranslateError,
    Usage,
    dumps,
    encode_str,
    require_model,
)

CHAT = "/v1/chat/completions"
_PASS = ("temperature", "top_p", "parallel_tool_calls", "user")


def error_body(message: str, *, status: int, param: str | None = None,
               code: str | None = None) -> JsonObj:
    etype = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        etype = "rate_limit_error"
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


def _parts(content: Any, where: str, role: str) -> str | list[JsonObj]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TranslateError(f"'{where}.content' must be a string or an array of parts",
                             param=f"{where}.content")
    parts: list[JsonObj] = []
    for k, p in enumerate(content):
        pw = f"{where}.content[{k}]"
        kind = p.get("type") if isinstance(p, Mapping) else None
        if kind in ("input_text", "output_text", "text", "refusal"):
            text = p.get("text", p.get("refusal", ""))
            parts.append({"type": "text", "text": str(text)})
        elif kind == "input_image":
            url = p.get("image_url")
            if not isinstance(url, str) or not url:
                raise TranslateError(f"'{pw}': only input_image with image_url is supported "
                                     "(file_id needs a file store swarmd does not have)",
                                     param=pw, code="unsupported_parameter")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise TranslateError(f"'{pw}': content part type {kind!r} is not supported",
                                 param=pw, code="unsupported_parameter")
    if role != "user" or all(p["type"] == "text" for p in parts):
        return "".join(p.get("text", "") for p in parts)
    return parts


def input_messages(raw: Any) -> list[JsonObj]:
    """The ``input`` of a Responses request as chat messages."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise TranslateError("'input' must be a string or an array of items", param="input")
    out: list[JsonObj] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise TranslateError(f"'{where}' must be an object", param=where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise TranslateError(f"'{where}.role' must be user, assistant, system or "
                                     "developer", param=f"{where}.role")
            role = "system" if role == "developer" else role
            out.append({"role": role, "content": _parts(item.get("content"), where, role)})
        elif kind == "function_call":
            cid, name = item.get("call_id"), item.get("name")
            if not isinstance(cid, str) or not isinstance(name, str):
                raise TranslateError(f"'{where}' needs string call_id and name", param=where)
            args = item.get("arguments")
            call = {"id": cid, "type": "function",
                    "function": {"name": name, "arguments": args if isinstance(args, str)
                                 else ""}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                # a string beside tool calls: llama-cpp-python rejects null content
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            cid, output = item.get("call_id"), item.get("output")
            if not isinstance(cid, str):
                raise TranslateError(f"'{where}.call_id' must be a string",
                                     param=f"{where}.call_id")
            text = output if isinstance(output, str) else _parts(output, where, "tool")
            out.append({"role": "tool", "tool_call_id": cid, "content": text})
        elif kind == "reasoning":
            continue  # the engine's own reasoning is not fed back
        else:
            raise TranslateError(f"'{where}': input item type {kind!r} is not supported",
                                 param=where, code="unsupported_parameter")
    return out


def _tools(body: Mapping[str, Any], out: JsonObj) -> None:
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise TranslateError("'tools' must be an array", param="tools")
        mapped = []
        for i, t in enumerate(tools):
            if not isinstance(t, Mapping) or t.get("type") != "function" \
                    or not isinstance(t.get("name"), str):
                kind = t.get("type") if isinstance(t, Mapping) else None
                raise TranslateError(f"'tools[{i}]': only function tools are supported "
                                     f"(got {kind!r})", param=f"tools[{i}]",
                                     code="unsupported_parameter")
            fn = {k: t[k] for k in ("name", "description", "parameters", "strict")
                  if t.get(k) is not None}
            mapped.append({"type": "function", "function": fn})
        out["tools"] = mapped
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        out["tool_choice"] = choice
    elif isinstance(choice, Mapping):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise TranslateError("'tool_choice' must be auto, none, required or a function",
                                 param="tool_choice", code="unsupported_parameter")
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}


def _text_format(body: Mapping[str, Any], out: JsonObj) -> None:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if not isinstance(fmt, Mapping) or fmt.get("type") in (None, "text"):
        return
    if fmt["type"] == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description")
                  if k in fmt}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise TranslateError(f"'text.format.type' {fmt['type']!r} is not supported",
                             param="text.format", code="unsupported_parameter")


@dataclass(frozen=True)
class Mapped:
    body: JsonObj  # the chat-completions body
    stream: bool
    conversation: list[JsonObj]  # history + this input, without instructions


def chat_request(body: Mapping[str, Any], model: str,
                 history: list[JsonObj] | None = None) -> Mapped:
    require_model(body)
    for key in ("background", "conversation", "prompt"):
        if body.get(key):
            raise TranslateError(f"'{key}' is not supported by swarmd", param=key,
                                 code="unsupported_parameter")
    stream = body.get("stream") is True
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise TranslateError("'stream' must be a boolean", param="stream")
    if "input" not in body:
        raise TranslateError("'input' is required", param="input",
                             code="missing_required_parameter")
    conversation = [*(history or []), *input_messages(body["input"])]
    if not conversation:
        raise TranslateError("'input' must not be empty", param="input")
    messages = list(conversation)
    instr = body.get("instructions")
    if isinstance(instr, str) and instr:
        messages.insert(0, {"role": "system", "content": instr})
    out: JsonObj = {"model": model, "messages": messages}
    mot = body.get("max_output_tokens")
    if mot is not None:
        if not isinstance(mot, int) or isinstance(mot, bool) or mot < 1:
            raise TranslateError("'max_output_tokens' must be a positive integer",
                                 param="max_output_tokens")
        out["max_tokens"] = mot
    for k in _PASS:
        if body.get(k) is not None:
            out[k] = body[k]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and isinstance(reasoning.get("effort"), str):
        out["reasoning_effort"] = reasoning["effort"]
    _tools(body, out)
    _text_format(body, out)
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return Mapped(out, stream, conversation)


# -- answers -------------------------------------------------------------------------


def _usage(u: Usage | None) -> JsonObj | None:
    if u is None:
        return None
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens}


def _hex(resp_id: str) -> str:
    return resp_id.removeprefix("resp_").split("_", 1)[0]


def _message_item(resp_id: str, text: str, status: str = "completed") -> JsonObj:
    return {"type": "message", "id": f"msg_{_hex(resp_id)}", "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}] if status == "completed" else []}


def _call_item(resp_id: str, i: int, call_id: str, name: str, args: str,
               status: str = "completed") -> JsonObj:
    return {"type": "function_call", "id": f"fc_{_hex(resp_id)}_{i}", "call_id": call_id,
            "name": name, "arguments": args, "status": status}


def _reasoning_item(resp_id: str, text: str) -> JsonObj:
    return {"type": "reasoning", "id": f"rs_{_hex(resp_id)}", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def skeleton(body: Mapping[str, Any], resp_id: str, model: str, created_at: int,
             status: str) -> JsonObj:
    """The Response object's fields that echo the request."""
    text = body.get("text") if isinstance(body.get("text"), Mapping) else None
    return {
        "id": resp_id, "object": "response", "created_at": created_at, "status": status,
        "background": False, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "model": model, "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True) is not False,
        "temperature": body.get("temperature", 1.0),
        "text": dict(text) if text else {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"), "tools": list(body.get("tools") or []),
        "top_p": body.get("top_p", 1.0), "truncation": "disabled", "usage": None,
        "user": body.get("user"), "metadata": dict(body.get("metadata") or {}),
    }


def _finished(doc: JsonObj, finish: str, usage: Usage | None) -> JsonObj:
    if finish == "length":
        doc["status"] = "incomplete"
        doc["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish == "content_filter":
        doc["status"] = "incomplete"
        doc["incomplete_details"] = {"reason": "content_filter"}
    else:
        doc["status"] = "completed"
    doc["usage"] = _usage(usage or Usage(0, 0))
    return doc


def response_object(ans: ChatAnswer, body: Mapping[str, Any], resp_id: str, model: str,
                    created_at: int) -> JsonObj:
    doc = skeleton(body, resp_id, model, created_at, "completed")
    if ans.reasoning:
        doc["output"].append(_reasoning_item(resp_id, ans.reasoning))
    if ans.text or not ans.tool_calls:
        doc["output"].append(_message_item(resp_id, ans.text))
    for i, c in enumerate(ans.tool_calls):
        doc["output"].append(_call_item(resp_id, i, c.call_id, c.name, c.arguments))
    return _finished(doc, ans.finish, ans.usage)


def history_of(conversation: list[JsonObj], response: Mapping[str, Any]) -> list[JsonObj]:
    """The chat messages a follow-up on ``response`` starts from."""
    msg: JsonObj = {"role": "assistant", "content": ""}
    texts: list[str] = []
    calls: list[JsonObj] = []
    for item in response.get("output") or []:
        if item.get("type") == "message":
            texts += [p.get("text", "") for p in item.get("content") or []
                      if p.get("type") == "output_text"]
        elif item.get("type") == "function_call":
            calls.append({"id": item["call_id"], "type": "function",
                          "function": {"name": item["name"], "arguments": item["arguments"]}})
    msg["content"] = "".join(texts)
    if calls:
        msg["tool_calls"] = calls
    return [*conversation, msg]


def sse_event(doc: JsonObj) -> bytes:
    return b"event: " + str(doc["type"]).encode() + b"\ndata: " + dumps(doc) + b"\n\n"


_TEXT_DELTA = b"response.output_text.delta"
_REASONING_DELTA = b"response.reasoning_text.delta"
_ARGS_DELTA = b"response.function_call_arguments.delta"


@dataclass
class EventStream:
    """OpenAI chat SSE bytes in, Responses API SSE events out."""

    body: Mapping[str, Any]
    resp_id: str
    model: str
    created_at: int
    sse: SseReader = field(default_factory=SseReader)
    deltas: ChatDeltas = field(default_factory=ChatDeltas)
    seq: int = 0
    ended: bool = False
    response: JsonObj | None = None  # the final Response, once ended
    response_json: bytes | None = None  # ... and its JSON encoding
    _out: list[JsonObj] = field(default_factory=list)  # output items so far
    _open: JsonObj | None = None  # the item being streamed
    _text: list[str] = field(default_factory=list)

    def _ev(self, kind: str, **fields: Any) -> bytes:
        doc = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse_event(doc)

    def start(self) -> bytes:
        """``response.created`` and ``response.in_progress``."""
        snap = dumps(skeleton(self.body, self.resp_id, self.model, self.created_at,
                              "in_progress"))  # the same object twice: encoded once
        return (self._frame(b"response.created", b',"response":' + snap)
                + self._frame(b"response.in_progress", b',"response":' + snap))

    def _close_open(self) -> bytes:
        item = self._open
        if item is None:
            return b""
        self._open = None
        idx = len(self._out)
        out = b""
        if item["type"] == "message":
            text = "".join(self._text)
            self._text = []
            self._out.append(_message_item(self.resp_id, text))
            return self._message_done(item["id"], idx, text)
        if item["type"] == "reasoning":
            text = "".join(self._text)
            self._text = []
            out += self._ev("response.reasoning_text.done", item_id=item["id"],
                            output_index=idx, content_index=0, text=text)
            item = _reasoning_item(self.resp_id, text)
        else:
            item = {**item, "status": "completed"}
            out += self._ev("response.function_call_arguments.done", item_id=item["id"],
                            output_index=idx, name=item["name"], arguments=item["arguments"])
        self._out.append(item)
        return out + self._ev("response.output_item.done", output_index=idx, item=item)

    def _open_item(self, item: JsonObj) -> bytes:
        out = self._close_open()
        self._open = item
        idx = len(self._out)
        if item["type"] == "message":
            return out + self._message_added(item["id"], idx)
        return out + self._ev("response.output_item.added", output_index=idx, item=item)

    # Events built from pieces, byte for byte as :meth:`_ev` writes them (the
    # golden vectors hold them to that): the ones every text answer has.

    def _frame(self, kind: bytes, fields: bytes) -> bytes:
        """One event of type ``kind``, numbered; ``fields``: the JSON members
        after ``sequence_number``, each with its leading comma."""
        seq = self.seq
        self.seq += 1
        return (b"event: " + kind + b'\ndata: {"type":"' + kind + b'","sequence_number":'
                + b"%d" % seq + fields + b"}\n\n")

    def _message_added(self, item_id: str, idx: int) -> bytes:
        """``output_item.added`` and ``content_part.added`` of a message."""
        mid = encode_str(item_id).encode()
        at = b"%d" % idx
        return (self._frame(b"response.output_item.added", b',"output_index":' + at
                            + b',"item":{"type":"message","id":' + mid
                            + b',"status":"in_progress","role":"assistant","content":[]}')
                + self._frame(b"response.content_part.added", b',"item_id":' + mid
                              + b',"output_index":' + at + b',"content_index":0,"part":'
                              b'{"type":"output_text","text":"","annotations":[],'
                              b'"logprobs":[]}'))

    def _message_done(self, item_id: str, idx: int, text: str) -> bytes:
        """``output_text.done``, ``content_part.done`` and ``output_item.done``."""
        mid = encode_str(item_id).encode()
        at = b"%d" % idx
        txt = encode_str(text).encode()
        part = b'{"type":"output_text","text":' + txt + b',"annotations":[],"logprobs":[]}'
        return (self._frame(b"response.output_text.done", b',"item_id":' + mid
                            + b',"output_index":' + at + b',"content_index":0,"text":' + txt
                            + b',"logprobs":[]')
                + self._frame(b"response.content_part.done", b',"item_id":' + mid
                              + b',"output_index":' + at + b',"content_index":0,"part":' + part)
                + self._frame(b"response.output_item.done", b',"output_index":' + at
                              + b',"item":{"type":"message","id":' + mid
                              + b',"status":"completed","role":"assistant","content":['
                              + part + b"]}"))

    def feed(self, data: bytes) -> bytes:
        if self.ended:
            return b""
        try:
            chunks = self.sse.feed(data)
        except TranslateError as exc:
            return self.fail(exc.message)
        out: list[bytes] = []
        for chunk in chunks:
            for ev in self.deltas.feed(chunk):
                out.append(self._event(ev))
                if self.ended:
                    return b"".join(out)
        if self.sse.done:
            out.append(self.finish())
        return b"".join(out)

    def _delta(self, kind: bytes, idx: int, delta: str, tail: bytes) -> bytes:
        """A ``*.delta`` event of the open item (the stream's hot path)."""
        assert self._open is not None
        return self._frame(kind, b',"item_id":' + encode_str(self._open["id"]).encode()
                           + b',"output_index":' + b"%d" % idx + tail
                           + encode_str(delta).encode()
                           + (b',"logprobs":[]' if kind == _TEXT_DELTA else b""))

    def _event(self, ev: Any) -> bytes:
        out = b""
        idx = len(self._out)
        # ``type(ev) is``: the events are final classes (cheaper than a union).
        if type(ev) is Text or type(ev) is Reasoning:
            want = "message" if type(ev) is Text else "reasoning"
            if self._open is None or self._open["type"] != want:
                item = (_message_item(self.resp_id, "", "in_progress") if want == "message"
                        else {"type": "reasoning", "id": f"rs_{_hex(self.resp_id)}",
                              "summary": [], "content": []})
                out += self._open_item(item)
                idx = len(self._out)
            self._text.append(ev.text)
            out += self._delta(_TEXT_DELTA if want == "message" else _REASONING_DELTA, idx,
                               ev.text, b',"content_index":0,"delta":')
        elif type(ev) is ToolStart:
            n = sum(1 for it in self._out if it["type"] == "function_call")
            out += self._open_item(_call_item(self.resp_id, n, ev.call_id, ev.name, "",
                                              "in_progress"))
        elif type(ev) is ToolArgs and self._open is not None \
                and self._open["type"] == "function_call":
            self._open["arguments"] += ev.delta
            out += self._delta(_ARGS_DELTA, idx, ev.delta, b',"delta":')
        elif type(ev) is Failure:
            out += self.fail(ev.message)
        return out

    def finish(self) -> bytes:
        """The stream's end: close the open item, then ``response.completed``."""
        if self.ended:
            return b""
        out = self._close_open()
        if not self._out:
            out += self._open_item(_message_item(self.resp_id, "", "in_progress"))
            out += self._close_open()
        self.ended = True
        doc = skeleton(self.body, self.resp_id, self.model, self.created_at, "completed")
        doc["output"] = list(self._out)
        doc = _finished(doc, self.deltas.finished or "stop", self.deltas.usage)
        self.response = doc
        self.response_json = encoded = dumps(doc)
        kind = (b"response.completed" if doc["status"] == "completed"
                else b"response.incomplete")
        return out + self._frame(kind, b',"response":' + encoded)

    def fail(self, message: str, code: str = "server_error") -> bytes:
        self.ended = True
        doc = skeleton(self.body, self.resp_id, self.model, self.created_at, "failed")
        doc["output"] = list(self._out)
        doc["error"] = {"code": code, "message": message}
        return (self._ev("error", code=code, message=message, param=None,
                         error={"type": "server_error", "code": code, "message": message})
                + self._ev("response.failed", response=doc))
