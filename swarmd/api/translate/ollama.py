"""Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/embed``,
``/api/embeddings``) to and from the OpenAI routes.

Theory of operation
-------------------
Requests: :func:`chat_request`, :func:`generate_request` and
:func:`embed_request` check an Ollama body and return the OpenAI route and
body to send to an engine that is not Ollama; :func:`native_body` is what an
Ollama engine gets instead (the client's body, model resolved), so every
option keeps its meaning there.  Ollama defaults to ``stream: true``; a
translated stream asks for ``stream_options.include_usage`` so the final
line has real counts.

Answers: :func:`chat_response` / :func:`generate_response` /
:func:`embed_response` map a non-streamed OpenAI answer; :class:`NdjsonStream`
turns OpenAI SSE bytes into Ollama's NDJSON lines (one per text delta, tool
calls whole in one line once their arguments are complete, then the final
``done: true`` line with ``done_reason``, counts and durations).  Durations
are nanoseconds measured by the caller's clock (passed in, never read here):
``prompt_eval_duration`` = time to first token, ``eval_duration`` = first
token to end, ``load_duration`` 0 (swarmd cannot tell).

Errors are Ollama's ``{"error": "<message>"}`` (:func:`error_body`), and the
same object as an NDJSON line when a stream fails after it started.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from swarmd.api.translate.common import (
    ChatAnswer,
    ChatDeltas,
    Failure,
    Finish,
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
    image_data_url,
    require_model,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"

#: Ollama ``options`` -> the OpenAI (or llama.cpp / vLLM extension) field.
OPTION_MAP = {
    "num_predict": "max_tokens", "temperature": "temperature", "top_p": "top_p",
    "top_k": "top_k", "min_p": "min_p", "repeat_penalty": "repeat_penalty", "seed": "seed",
    "stop": "stop", "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}

#: OpenAI finish_reason -> Ollama done_reason.
DONE_REASON = {"stop": "stop", "length": "length", "tool_calls": "stop",
               "content_filter": "stop"}


def error_body(message: str) -> JsonObj:
    return {"error": message}


def iso_time(t: float) -> str:
    """Ollama's ``created_at``: RFC 3339 UTC with microseconds, e.g. ``2024-05-01T10:00:00.000001Z``."""
    dt = datetime.fromtimestamp(t, UTC)
    if dt.year < 1000:  # strftime's %Y does not pad the year (isoformat does)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # The same text as that strftime, at a quarter of its cost: "+00:00" -> "Z".
    return dt.isoformat(timespec="microseconds")[:-6] + "Z"


def _stream_flag(body: Mapping[str, Any]) -> bool:
    s = body.get("stream", True)
    if s is None:
        return True
    if not isinstance(s, bool):
        raise TranslateError("'stream' must be a boolean", param="stream")
    return s


def _options(body: Mapping[str, Any], out: JsonObj) -> None:
    opts = body.get("options")
    if opts is None:
        return
    if not isinstance(opts, Mapping):
        raise TranslateError("'options' must be an object", param="options")
    for k, target in OPTION_MAP.items():
        if k not in opts or opts[k] is None:
            continue
        v = opts[k]
        if k == "num_predict":
            if not isinstance(v, int) or isinstance(v, bool):
                raise TranslateError("'options.num_predict' must be an integer",
                                     param="options.num_predict")
            if v < 0:  # -1: unlimited, -2: fill the context
                continue
        elif k == "stop":
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise TranslateError("'options.stop' must be a list of strings",
                                     param="options.stop")
        elif not isinstance(v, int | float) or isinstance(v, bool):
            raise TranslateError(f"'options.{k}' must be a number", param=f"options.{k}")
        out[target] = v


def _format(body: Mapping[str, Any], out: JsonObj) -> None:
    fmt = body.get("format")
    if fmt is None or fmt == "":
        return
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, Mapping):
        out["response_format"] = {"type": "json_schema",
                                  "json_schema": {"name": "format", "schema": dict(fmt),
                                                  "strict": True}}
    else:
        raise TranslateError('\'format\' must be "json" or a JSON schema object',
                             param="format")


def _images(msg: Mapping[str, Any], where: str) -> list[str]:
    imgs = msg.get("images")
    if imgs is None:
        return []
    if not isinstance(imgs, list) or not all(isinstance(i, str) for i in imgs):
        raise TranslateError(f"'{where}.images' must be a list of base64 strings",
                             param=f"{where}.images")
    return imgs


def _user_content(text: str, images: list[str]) -> str | list[JsonObj]:
    if not images:
        return text
    parts: list[JsonObj] = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": image_data_url(i)}} for i in images]
    return parts


def _messages(raw: Any) -> list[JsonObj]:
    if not isinstance(raw, list):
        raise TranslateError("'messages' must be an array", param="messages")
    out: list[JsonObj] = []
    pending: list[tuple[str, str]] = []  # (call id, name) of calls not yet answered
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise TranslateError(f"'{where}' must be an object with a string 'role'",
                                 param=where)
        role = m["role"]
        content = m.get("content") or ""
        if not isinstance(content, str):
            raise TranslateError(f"'{where}.content' must be a string", param=f"{where}.content")
        if role in ("system", "user"):
            out.append({"role": role, "content": _user_content(content, _images(m, where))})
        elif role == "assistant":
            msg: JsonObj = {"role": "assistant", "content": content}
            calls = m.get("tool_calls")
            if calls:
                if not isinstance(calls, list):
                    raise TranslateError(f"'{where}.tool_calls' must be an array",
                                         param=f"{where}.tool_calls")
                msg["tool_calls"] = [_tool_call(c, f"{where}.tool_calls[{j}]", i, j, pending)
                                     for j, c in enumerate(calls)]
            out.append(msg)
        elif role == "tool":
            out.append({"role": "tool", "content": content,
                        "tool_call_id": _answered(m, pending)})
        else:
            raise TranslateError(f"'{where}.role' must be system, user, assistant or tool",
                                 param=f"{where}.role")
    return out


def _tool_call(c: Any, where: str, i: int, j: int,
               pending: list[tuple[str, str]]) -> JsonObj:
    fn = c.get("function") if isinstance(c, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise TranslateError(f"'{where}.function.name' is required", param=where)
    args = fn.get("arguments", {})
    text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    cid = c.get("id") if isinstance(c.get("id"), str) and c.get("id") else f"call_{i}_{j}"
    pending.append((cid, fn["name"]))
    return {"id": cid, "type": "function", "function": {"name": fn["name"], "arguments": text}}


def _answered(m: Mapping[str, Any], pending: list[tuple[str, str]]) -> str:
    """The call a tool message answers: its ``tool_call_id``, else the first
    pending call with its ``tool_name``, else the first pending call."""
    explicit = m.get("tool_call_id")
    if isinstance(explicit, str) and explicit:
        pending[:] = [p for p in pending if p[0] != explicit]
        return explicit
    name = m.get("tool_name") or m.get("name")
    for k, (cid, n) in enumerate(pending):
        if name is None or n == name:
            del pending[k]
            return cid
    return f"call_{name or 'unknown'}"


def _tools(body: Mapping[str, Any], out: JsonObj) -> None:
    tools = body.get("tools")
    if not tools:
        return
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
        raise TranslateError("'tools' must be an array of tool objects", param="tools")
    out["tools"] = [dict(t) for t in tools]  # Ollama's tools are OpenAI's shape


def _common(body: Mapping[str, Any], out: JsonObj, stream: bool) -> None:
    _options(body, out)
    _format(body, out)
    think = body.get("think")
    if isinstance(think, str) and think in ("low", "medium", "high"):
        out["reasoning_effort"] = think
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}


@dataclass(frozen=True)
class Mapped:
    """An Ollama request mapped: the OpenAI route and body, and whether it streams."""

    route: str
    body: JsonObj
    stream: bool
    empty: bool = False  # no input at all: Ollama's "load the model" request


def chat_request(body: Mapping[str, Any], model: str) -> Mapped:
    """``/api/chat`` -> ``/v1/chat/completions`` (``model`` already resolved)."""
    require_model(body)
    stream = _stream_flag(body)
    raw = body.get("messages")
    if raw is None or raw == []:
        return Mapped(CHAT, {}, stream, empty=True)
    out: JsonObj = {"model": model, "messages": _messages(raw)}
    _tools(body, out)
    _common(body, out, stream)
    return Mapped(CHAT, out, stream)


def generate_request(body: Mapping[str, Any], model: str) -> Mapped:
    """``/api/generate``: templated (chat) unless ``raw`` or ``suffix`` (completions)."""
    require_model(body)
    stream = _stream_flag(body)
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise TranslateError("'prompt' must be a string", param="prompt")
    images = _images(body, "request")
    suffix = body.get("suffix")
    if not prompt and not images:
        return Mapped(CHAT, {}, stream, empty=True)
    if body.get("raw") is True or suffix:
        out: JsonObj = {"model": model, "prompt": prompt}
        if isinstance(suffix, str) and suffix:
            out["suffix"] = suffix
        route = COMPLETIONS
    else:
        msgs: list[JsonObj] = []
        system = body.get("system")
        if isinstance(system, str) and system:
            msgs.append({"role": "system", "content": system})
        msgs.append({"role": "user", "content": _user_content(prompt, images)})
        out = {"model": model, "messages": msgs}
        route = CHAT
    _common(body, out, stream)
    return Mapped(route, out, stream)


def embed_request(body: Mapping[str, Any], model: str, *, legacy: bool) -> tuple[JsonObj, int]:
    """``/api/embed`` (``input``) or legacy ``/api/embeddings`` (``prompt``) ->
    ``/v1/embeddings``; also returns the number of inputs."""
    require_model(body)
    key = "prompt" if legacy else "input"
    raw = body.get(key)
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw) and not legacy:
        inputs = list(raw)
    else:
        want = "a string" if legacy else "a string or a non-empty array of strings"
        raise TranslateError(f"'{key}' must be {want}", param=key)
    out: JsonObj = {"model": model, "input": inputs if len(inputs) > 1 else inputs[0]}
    dims = body.get("dimensions")
    if isinstance(dims, int) and not isinstance(dims, bool) and dims > 0:
        out["dimensions"] = dims
    return out, len(inputs)


def native_body(body: Mapping[str, Any], model: str) -> bytes:
    """What an Ollama engine gets: the client's body with ``model`` resolved."""
    if body.get("model") == model:
        return dumps(body)
    return dumps({**body, "model": model})


# -- answers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Caller's clock readings (seconds, any monotonic origin)."""

    start: float
    first: float  # first token (or the answer, when not streamed)
    end: float


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _final_fields(reason: str, usage: Usage, t: Timing) -> JsonObj:
    return {"done": True, "done_reason": DONE_REASON.get(reason, "stop"),
            "total_duration": _ns(t.end - t.start), "load_duration": 0,
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": _ns(t.first - t.start),
            "eval_count": usage.completion_tokens,
            "eval_duration": _ns(t.end - t.first)}


def _ollama_calls(calls: list[tuple[str, str, str]]) -> list[JsonObj]:
    return [{"id": cid, "function": {"index": i, "name": name,
                                      "arguments": args_object(args)}}
            for i, (cid, name, args) in enumerate(calls)]


def load_response(model: str, now: float, *, chat: bool) -> JsonObj:
    """Ollama's answer to a request with no input (it loads the model and returns)."""
    doc: JsonObj = {"model": model, "created_at": iso_time(now)}
    if chat:
        doc["message"] = {"role": "assistant", "content": ""}
    else:
        doc["response"] = ""
    return {**doc, "done": True, "done_reason": "load"}


def chat_response(ans: ChatAnswer, model: str, now: float, t: Timing) -> JsonObj:
    msg: JsonObj = {"role": "assistant", "content": ans.text}
    if ans.reasoning:
        msg["thinking"] = ans.reasoning
    if ans.tool_calls:
        msg["tool_calls"] = _ollama_calls([(c.call_id, c.name, c.arguments)
                                           for c in ans.tool_calls])
    return {"model": model, "created_at": iso_time(now), "message": msg,
            **_final_fields(ans.finish, ans.usage, t)}


def generate_response(ans: ChatAnswer, model: str, now: float, t: Timing) -> JsonObj:
    doc: JsonObj = {"model": model, "created_at": iso_time(now), "response": ans.text}
    if ans.reasoning:
        doc["thinking"] = ans.reasoning
    return {**doc, **_final_fields(ans.finish, ans.usage, t)}


def embed_response(doc: Any, model: str, t: Timing, *, legacy: bool) -> JsonObj:
    data = doc.get("data") if isinstance(doc, Mapping) else None
    if not isinstance(data, list) or not data:
        raise TranslateError("engine answer has no embeddings", status=502,
                             code="upstream_error")
    rows = sorted((d for d in data if isinstance(d, Mapping)),
                  key=lambda d: d.get("index", 0) if isinstance(d.get("index"), int) else 0)
    vecs = [d.get("embedding") for d in rows]
    if not all(isinstance(v, list) for v in vecs):
        raise TranslateError("engine answered an embedding that is not a list of floats",
                             status=502, code="upstream_error")
    if legacy:
        return {"embedding": vecs[0]}
    usage = doc.get("usage") if isinstance(doc.get("usage"), Mapping) else {}
    tokens = usage.get("prompt_tokens") if isinstance(usage, Mapping) else 0
    return {"model": model, "embeddings": vecs, "total_duration": _ns(t.end - t.start),
            "load_duration": 0,
            "prompt_eval_count": tokens if isinstance(tokens, int) else 0}


@dataclass
class NdjsonStream:
    """OpenAI SSE bytes in, Ollama NDJSON lines out (``chat`` or ``generate`` shape)."""

    model: str
    chat: bool
    start: float
    sse: SseReader = field(default_factory=SseReader)
    deltas: ChatDeltas = field(default_factory=ChatDeltas)
    first: float | None = None
    failed: bool = False
    ended: bool = False
    _calls: list[list[str]] = field(default_factory=list)  # [id, name, args]
    #: The last ``wall`` seen, its ``created_at`` and the start of a line with
    #: it, ``{"model":...,"created_at":"...",`` (formatted once per clock reading).
    _head: tuple[float, str, bytes] | None = field(default=None, repr=False)

    def _created(self, wall: float) -> tuple[float, str, bytes]:
        head = self._head
        if head is None or head[0] != wall:
            created = iso_time(wall)
            head = self._head = (wall, created, b'{"model":' + dumps(self.model)
                                 + b',"created_at":"' + created.encode() + b'",')
        return head

    def _line(self, now: float, text: str = "", thinking: str = "",
              calls: list[JsonObj] | None = None) -> JsonObj:
        doc: JsonObj = {"model": self.model, "created_at": self._created(now)[1]}
        if self.chat:
            msg: JsonObj = {"role": "assistant", "content": text}
            if thinking:
                msg["thinking"] = thinking
            if calls:
                msg["tool_calls"] = calls
            doc["message"] = msg
        else:
            doc["response"] = text
            if thinking:
                doc["thinking"] = thinking
        doc["done"] = False
        return doc

    def _delta_line(self, wall: float, text: str, thinking: bool) -> bytes:
        """``dumps(self._line(wall, text=...)) + b"\\n"`` (or ``thinking=``), built
        from pieces: one per delta, so this is the stream's hot path."""
        head = self._created(wall)[2]
        enc = encode_str(text).encode()
        if self.chat:
            if thinking:
                return (head + b'"message":{"role":"assistant","content":"","thinking":'
                        + enc + b'},"done":false}\n')
            return head + b'"message":{"role":"assistant","content":' + enc \
                + b'},"done":false}\n'
        if thinking:
            return head + b'"response":"","thinking":' + enc + b',"done":false}\n'
        return head + b'"response":' + enc + b',"done":false}\n'

    def feed(self, data: bytes, now: float, wall: float) -> bytes:
        """NDJSON for the bytes ``data`` (``now``: the caller's monotonic clock,
        ``wall``: epoch seconds for ``created_at``)."""
        if self.ended:
            return b""
        out: list[bytes] = []
        try:
            chunks = self.sse.feed(data)
        except TranslateError as exc:
            return self.fail(exc.message)
        for chunk in chunks:
            for ev in self.deltas.feed(chunk):
                # ``type(ev) is``: the events are final classes, and it is
                # cheaper than isinstance on a union.
                if type(ev) is Text or type(ev) is Reasoning:
                    if self.first is None:
                        self.first = now
                    out.append(self._delta_line(wall, ev.text, type(ev) is Reasoning))
                elif type(ev) is ToolStart:
                    if self.first is None:
                        self.first = now
                    self._calls.append([ev.call_id, ev.name, ""])
                elif type(ev) is ToolArgs:
                    self._calls[ev.index][2] += ev.delta
                elif type(ev) is Finish and self._calls:
                    out.append(dumps(self._tool_line(wall)) + b"\n")
                elif type(ev) is Failure:
                    return b"".join(out) + self.fail(ev.message)
        if self.sse.done:
            if self._calls:
                out.append(dumps(self._tool_line(wall)) + b"\n")
            out.append(dumps(self._final(now, wall)) + b"\n")
        return b"".join(out)

    def _tool_line(self, wall: float) -> JsonObj:
        calls = _ollama_calls([(c[0], c[1], c[2]) for c in self._calls])
        self._calls = []
        return self._line(wall, calls=calls)

    def _final(self, now: float, wall: float) -> JsonObj:
        self.ended = True
        first = self.first if self.first is not None else now
        usage = self.deltas.usage or Usage(0, 0)
        return {**self._line(wall), **_final_fields(self.deltas.finished or "stop", usage,
                                                    Timing(self.start, first, now))}

    def finish(self, now: float, wall: float) -> bytes:
        """The engine's body ended: the final line, if ``[DONE]`` did not already give it."""
        if self.ended:
            return b""
        out = [self._tool_line(wall)] if self._calls else []
        out.append(self._final(now, wall))
        return b"".join(dumps(o) + b"\n" for o in out)

    def fail(self, message: str) -> bytes:
        """The error line for a stream that broke after it started."""
        self.ended = self.failed = True
        return dumps(error_body(message)) + b"\n"
