"""Anthropic's Messages API (``POST /v1/messages``) to and from chat completions.

Theory of operation
-------------------
:func:`chat_request` maps a Messages body: ``system`` (a string or text
blocks) becomes the first system message; each message's content blocks
map to chat content -- ``text``; ``image`` (base64 or url source) to an
``image_url`` part; an assistant's ``tool_use`` blocks to ``tool_calls``
(``input`` serialised as the arguments string); a user's ``tool_result``
blocks to ``tool`` messages placed before that user's remaining text;
``thinking`` blocks are dropped.  ``max_tokens`` (required), ``stop_sequences``
(``stop``), ``temperature``, ``top_p``, ``top_k``, ``output_config``
(``format`` -> ``response_format`` json_schema, ``effort`` ->
``reasoning_effort``), ``tools`` (``input_schema``
as ``parameters``), ``tool_choice`` (auto / any -> required / tool -> the
named function / none) and ``disable_parallel_tool_use`` map directly.
Document blocks, server tools and citations are a 400 naming the field.

:func:`message_object` maps a non-streamed answer (``finish_reason`` stop ->
``end_turn``, length -> ``max_tokens``, tool_calls -> ``tool_use``);
:class:`EventStream` turns OpenAI SSE bytes into Anthropic's events:
``message_start``, ``content_block_start`` / ``content_block_delta``
(``text_delta``, ``thinking_delta``, ``input_json_delta``) /
``content_block_stop`` per block, ``message_delta`` with ``stop_reason`` and
usage, ``message_stop``.  The input token count is known only at the end of
an OpenAI stream, so ``message_start`` carries 0 and ``message_delta`` the
real ``input_tokens`` and ``output_tokens``.

Errors are Anthropic's ``{"type": "error", "error": {"type", "message"}}``
(:func:`error_body`), and an ``error`` event when a stream fails after it
started.
"""

from __future__ import annotations

import json
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
    args_object,
    dumps,
    encode_str,
    require_model,
    text_of_parts,
)

CHAT = "/v1/chat/completions"

STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
               "content_filter": "refusal"}

#: HTTP status -> Anthropic error type.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(message: str, status: int) -> JsonObj:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def _system(raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and all(isinstance(b, Mapping) and b.get("type") == "text"
                                     for b in raw):
        return "\n".join(str(b.get("text", "")) for b in raw)
    raise TranslateError("'system' must be a string or an array of text blocks",
                         param="system")


def _image(block: Mapping[str, Any], where: str) -> JsonObj:
    src = block.get("source")
    if isinstance(src, Mapping) and src.get("type") == "base64":
        url = f"data:{src.get('media_type', 'image/png')};base64,{src.get('data', '')}"
    elif isinstance(src, Mapping) and src.get("type") == "url":
        url = str(src.get("url", ""))
    else:
        raise TranslateError(f"'{where}.source' must be a base64 or url image source",
                             param=f"{where}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        for k, b in enumerate(content):
            if not isinstance(b, Mapping) or b.get("type") not in ("text", "image"):
                raise TranslateError(f"'{where}.content[{k}]' must be a text block",
                                     param=f"{where}.content")
        return text_of_parts(content)
    raise TranslateError(f"'{where}.content' must be a string or blocks",
                         param=f"{where}.content")


def _message(m: Any, i: int) -> list[JsonObj]:
    where = f"messages[{i}]"
    if not isinstance(m, Mapping) or m.get("role") not in ("user", "assistant"):
        raise TranslateError(f"'{where}.role' must be user or assistant",
                             param=f"{where}.role")
    role, content = m["role"], m.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise TranslateError(f"'{where}.content' must be a string or an array of blocks",
                             param=f"{where}.content")
    parts: list[JsonObj] = []
    calls: list[JsonObj] = []
    tools: list[JsonObj] = []
    for k, b in enumerate(content):
        bw = f"{where}.content[{k}]"
        kind = b.get("type") if isinstance(b, Mapping) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(b.get("text", ""))})
        elif kind == "image" and role == "user":
            parts.append(_image(b, bw))
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise TranslateError(f"'{bw}' needs string id and name", param=bw)
            calls.append({"id": b["id"], "type": "function",
                          "function": {"name": b["name"],
                                       "arguments": json.dumps(b.get("input") or {},
                                                               ensure_ascii=False)}})
        elif kind == "tool_result" and role == "user":
            if not isinstance(b.get("tool_use_id"), str):
                raise TranslateError(f"'{bw}.tool_use_id' must be a string",
                                     param=f"{bw}.tool_use_id")
            text = _tool_result_text(b.get("content"), bw)
            if b.get("is_error") is True:
                text = f"Error: {text}"
            tools.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise TranslateError(f"'{bw}': block type {kind!r} is not supported here",
                                 param=bw, code="unsupported_parameter")
    out: list[JsonObj] = list(tools)
    if role == "assistant":
        # content is a string even beside tool calls: llama-cpp-python rejects null.
        msg: JsonObj = {"role": "assistant", "content": text_of_parts(parts)}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    elif parts:
        simple = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": text_of_parts(parts) if simple else parts})
    return out


def _tools(body: Mapping[str, Any], out: JsonObj) -> None:
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise TranslateError("'tools' must be an array", param="tools")
        mapped = []
        for i, t in enumerate(tools):
            if not isinstance(t, Mapping) or not isinstance(t.get("name"), str) \
                    or t.get("type") not in (None, "custom"):
                raise TranslateError(f"'tools[{i}]': only custom tools with a name and "
                                     "input_schema are supported", param=f"tools[{i}]",
                                     code="unsupported_parameter")
            fn: JsonObj = {"name": t["name"],
                           "parameters": t.get("input_schema") or {"type": "object"}}
            if isinstance(t.get("description"), str):
                fn["description"] = t["description"]
            mapped.append({"type": "function", "function": fn})
        out["tools"] = mapped
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice, Mapping) and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise TranslateError("'tool_choice.type' must be auto, any, tool or none",
                             param="tool_choice")
    if isinstance(choice, Mapping) and choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _output_config(body: Mapping[str, Any], out: JsonObj) -> None:
    """``output_config``: ``format`` (a JSON schema) -> ``response_format``,
    ``effort`` -> ``reasoning_effort``."""
    oc = body.get("output_config")
    if oc is None:
        return
    if not isinstance(oc, Mapping):
        raise TranslateError("'output_config' must be an object", param="output_config")
    fmt = oc.get("format")
    if fmt is not None:
        if not isinstance(fmt, Mapping) or fmt.get("type") != "json_schema" \
                or not isinstance(fmt.get("schema"), Mapping):
            raise TranslateError("'output_config.format' must be {type: json_schema, schema}",
                                 param="output_config.format")
        out["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": dict(fmt["schema"]), "strict": True}}
    if isinstance(oc.get("effort"), str):
        out["reasoning_effort"] = oc["effort"]


@dataclass(frozen=True)
class Mapped:
    body: JsonObj
    stream: bool


def chat_request(body: Mapping[str, Any], model: str, *, count_only: bool = False) -> Mapped:
    """``/v1/messages`` (or ``count_tokens``: no ``max_tokens`` needed) -> chat body."""
    require_model(body)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise TranslateError("'messages' must be a non-empty array", param="messages",
                             code="missing_required_parameter" if raw is None
                             else "invalid_value")
    messages: list[JsonObj] = []
    if system := _system(body.get("system")):
        messages.append({"role": "system", "content": system})
    for i, m in enumerate(raw):
        messages.extend(_message(m, i))
    out: JsonObj = {"model": model, "messages": messages}
    if count_only:
        out["max_tokens"] = 1
        _tools(body, out)
        return Mapped(out, False)
    mt = body.get("max_tokens")
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        raise TranslateError("'max_tokens' is required and must be a positive integer",
                             param="max_tokens")
    out["max_tokens"] = mt
    stops = body.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise TranslateError("'stop_sequences' must be an array of strings",
                                 param="stop_sequences")
        out["stop"] = stops
    for k in ("temperature", "top_p", "top_k"):
        if body.get(k) is not None:
            out[k] = body[k]
    _output_config(body, out)
    _tools(body, out)
    stream = body.get("stream") is True
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return Mapped(out, stream)


# -- answers -------------------------------------------------------------------------


def _usage(u: Usage) -> JsonObj:
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def message_object(ans: ChatAnswer, msg_id: str, model: str) -> JsonObj:
    content: list[JsonObj] = []
    if ans.reasoning:
        content.append({"type": "thinking", "thinking": ans.reasoning, "signature": ""})
    if ans.text:
        content.append({"type": "text", "text": ans.text})
    for c in ans.tool_calls:
        content.append({"type": "tool_use", "id": c.call_id, "name": c.name,
                        "input": args_object(c.arguments)})
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": STOP_REASON.get(ans.finish, "end_turn"),
            "stop_sequence": None, "usage": _usage(ans.usage)}


def sse_event(kind: str, doc: JsonObj) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps({"type": kind, **doc}) + b"\n\n"


# The frames of a stream's hot path, as :func:`sse_event` writes them, in pieces.
_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT = b',"delta":{"type":"text_delta","text":'
_THINKING = b',"delta":{"type":"thinking_delta","thinking":'
_JSON = b',"delta":{"type":"input_json_delta","partial_json":'
_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
_PING = sse_event("ping", {})
_MESSAGE_STOP = sse_event("message_stop", {})


@dataclass
class EventStream:
    """OpenAI chat SSE bytes in, Anthropic Messages stream events out."""

    msg_id: str
    model: str
    sse: SseReader = field(default_factory=SseReader)
    deltas: ChatDeltas = field(default_factory=ChatDeltas)
    ended: bool = False
    _block: int = -1  # index of the open content block
    _kind: str = ""  # "text" | "thinking" | "tool_use"
    _tools: dict[int, int] = field(default_factory=dict)  # tool index -> block index

    def start(self) -> bytes:
        msg: JsonObj = {"id": self.msg_id, "type": "message", "role": "assistant",
               "model": self.model,
               "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": _usage(Usage(0, 0))}
        return sse_event("message_start", {"message": msg}) + _PING

    def _close(self) -> bytes:
        if self._block < 0 or not self._kind:
            return b""
        self._kind = ""
        return _STOP + b"%d}\n\n" % self._block

    def _open(self, kind: str, block: JsonObj) -> bytes:
        out = self._close()
        self._block += 1
        self._kind = kind
        return out + sse_event("content_block_start", {"index": self._block,
                                                       "content_block": block})

    def _delta(self, kind: bytes, text: str) -> bytes:
        """A ``content_block_delta`` of the open block (``kind``: its delta's start)."""
        return _DELTA + b"%d" % self._block + kind + encode_str(text).encode() + b"}}\n\n"

    def feed(self, data: bytes) -> bytes:
        if self.ended:
            return b""
        try:
            chunks = self.sse.feed(data)
        except TranslateError as exc:
            return self.fail(exc.message, 502)
        out: list[bytes] = []
        for chunk in chunks:
            for ev in self.deltas.feed(chunk):
                # ``type(ev) is``: the events are final classes (cheaper than a union).
                if type(ev) is Text:
                    if self._kind != "text":
                        out.append(self._open("text", {"type": "text", "text": ""}))
                    out.append(self._delta(_TEXT, ev.text))
                elif type(ev) is Reasoning:
                    if self._kind != "thinking":
                        out.append(self._open("thinking", {"type": "thinking", "thinking": "",
                                                           "signature": ""}))
                    out.append(self._delta(_THINKING, ev.text))
                elif type(ev) is ToolStart:
                    out.append(self._open("tool_use", {"type": "tool_use", "id": ev.call_id,
                                                       "name": ev.name, "input": {}}))
                    self._tools[ev.index] = self._block
                elif type(ev) is ToolArgs and self._tools.get(ev.index) == self._block:
                    out.append(self._delta(_JSON, ev.delta))
                elif type(ev) is Failure:
                    return b"".join(out) + self.fail(ev.message, 502)
        if self.sse.done:
            out.append(self.finish())
        return b"".join(out)

    def finish(self) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        out = self._close()
        u = self.deltas.usage or Usage(0, 0)
        reason = STOP_REASON.get(self.deltas.finished or "stop", "end_turn")
        out += sse_event("message_delta", {
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}})
        return out + _MESSAGE_STOP

    def fail(self, message: str, status: int) -> bytes:
        self.ended = True
        return sse_event("error", {"error": {"type": error_type(status), "message": message}})
