"""What every client-API translator shares: request errors, the OpenAI SSE
reader, and the chat answer folded into neutral events.

Theory of operation
-------------------
:class:`SseReader` takes the bytes of an OpenAI stream as they arrive (any
split, ``\\n`` or ``\\r\\n`` line ends) and gives back the JSON object of each
complete ``data:`` event; ``data: [DONE]`` sets :attr:`SseReader.done`.
:class:`ChatDeltas` turns each ``chat.completion.chunk`` into a list of
:data:`Event` (:class:`Text`, :class:`Reasoning`, :class:`ToolStart`,
:class:`ToolArgs`, :class:`Finish`, :class:`Usage`, :class:`Failure`);
:func:`answer_of` reads a non-streamed ``chat.completion`` into one
:class:`ChatAnswer`.  The target APIs' translators only ever see these, so
engine quirks (tool calls split over chunks or sent whole, ``reasoning`` vs
``reasoning_content``, a usage chunk with or without ``choices``) are
handled once, here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JsonObj = dict[str, Any]


class TranslateError(Exception):
    """A request (or an engine answer) the translator cannot map.

    ``status`` is the HTTP status the client gets (400 for a bad request,
    502 for an engine answer that is not what OpenAI's API returns)."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code


def require_object(raw: bytes) -> JsonObj:
    """The request body as a JSON object, else TranslateError(400)."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TranslateError(f"request body is not valid JSON: {exc}",
                             code="invalid_json") from None
    if not isinstance(doc, dict):
        raise TranslateError("request body must be a JSON object", code="invalid_json")
    return doc


def require_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise TranslateError("'model' is required and must be a non-empty string",
                             param="model", code="missing_required_parameter"
                             if "model" not in body else "invalid_type")
    return model


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the one serialisation every translator emits (one
    shared encoder: ``json.dumps`` with options builds a new one per call)."""
    return _ENCODER.encode(obj).encode()


def image_data_url(b64: str) -> str:
    """A ``data:`` URL for base64 image bytes, the type sniffed from its first bytes."""
    mime = "image/png"
    for prefix, kind in (("/9j/", "image/jpeg"), ("R0lG", "image/gif"),
                         ("UklGR", "image/webp"), ("iVBOR", "image/png")):
        if b64.startswith(prefix):
            mime = kind
            break
    return f"data:{mime};base64,{b64}"


def args_object(arguments: str) -> JsonObj:
    """OpenAI's tool-call ``arguments`` string as the object Ollama and
    Anthropic want.  Not a JSON object: ``{"_arguments": <the text>}``."""
    try:
        val = json.loads(arguments) if arguments else {}
    except ValueError:
        return {"_arguments": arguments}
    return val if isinstance(val, dict) else {"_arguments": arguments}


def openai_error_of(doc: Any, status: int) -> tuple[str, str | None, str | None]:
    """(message, code, param) of an OpenAI error body (anything else: a generic line)."""
    if isinstance(doc, Mapping):
        err = doc.get("error")
        if isinstance(err, Mapping):
            msg = err.get("message")
            code, param = err.get("code"), err.get("param")
            return (str(msg) if msg else f"engine answered {status}",
                    code if isinstance(code, str) else None,
                    param if isinstance(param, str) else None)
        if isinstance(err, str):
            return err, None, None
        detail = doc.get("detail")  # FastAPI-style validation errors (llama-cpp-python)
        if detail is not None:
            return f"engine rejected the request: {json.dumps(detail)[:500]}", None, None
    return f"engine answered {status}", None, None


# -- OpenAI SSE in -----------------------------------------------------------------


class SseReader:
    """Incremental parser of an OpenAI SSE stream into JSON chunk objects."""

    def __init__(self) -> None:
        self._buf = b""
        self.done = False

    def feed(self, data: bytes) -> list[JsonObj]:
        """The JSON payloads of the events completed by ``data``.

        A payload that is not a JSON object raises TranslateError(502)."""
        self._buf = (self._buf + data).replace(b"\r\n", b"\n")
        out: list[JsonObj] = []
        while True:
            end = self._buf.find(b"\n\n")
            if end < 0:
                return out
            event, self._buf = self._buf[:end], self._buf[end + 2:]
            payload = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n")
                                 if line.startswith(b"data:"))
            if not payload:
                continue  # comments, event:/id: lines only
            if payload.strip() == b"[DONE]":
                self.done = True
                continue
            try:
                obj = _DECODER.decode(payload.decode())
            except ValueError:  # UnicodeDecodeError included
                raise TranslateError("engine sent a stream event that is not JSON",
                                     status=502, code="upstream_error") from None
            if not isinstance(obj, dict):
                raise TranslateError("engine sent a stream event that is not an object",
                                     status=502, code="upstream_error")
            out.append(obj)


# -- neutral events ------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Reasoning:
    text: str


@dataclass(frozen=True)
class ToolStart:
    index: int  # the tool call's position in this answer, 0-based
    call_id: str
    name: str


@dataclass(frozen=True)
class ToolArgs:
    index: int
    delta: str


@dataclass(frozen=True)
class Finish:
    reason: str  # OpenAI's finish_reason: stop | length | tool_calls | content_filter


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failure:
    """An error event inside the stream (the proxy's mid-stream error, or the engine's)."""

    message: str
    code: str | None = None


Event = Text | Reasoning | ToolStart | ToolArgs | Finish | Usage | Failure


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def usage_of(u: Any) -> Usage | None:
    if not isinstance(u, Mapping):
        return None
    return Usage(_int(u.get("prompt_tokens")), _int(u.get("completion_tokens")))


def _reasoning_of(d: Mapping[str, Any]) -> str:
    r = d.get("reasoning_content", d.get("reasoning"))
    return r if isinstance(r, str) else ""


@dataclass
class ChatDeltas:
    """Folds a stream of ``chat.completion.chunk`` objects into :data:`Event` lists."""

    id: str = ""
    model: str = ""
    _tools: dict[int, int] = field(default_factory=dict)  # engine index -> our index
    _ids: dict[int, str] = field(default_factory=dict)
    finished: str | None = None
    usage: Usage | None = None

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        err = chunk.get("error")
        if err is not None:
            msg, code, _ = openai_error_of(chunk, 502)
            return [Failure(msg, code)]
        if not self.id and isinstance(chunk.get("id"), str):
            self.id = chunk["id"]
        if not self.model and isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        out: list[Event] = []
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, Mapping):
                if r := _reasoning_of(delta):
                    out.append(Reasoning(r))
                content = delta.get("content")
                if isinstance(content, str) and content:
                    out.append(Text(content))
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for pos, call in enumerate(calls):
                        if isinstance(call, Mapping):
                            out.extend(self._tool_delta(pos, call))
            text = choice.get("text")  # a /v1/completions chunk
            if isinstance(text, str) and text:
                out.append(Text(text))
            fr = choice.get("finish_reason")
            if isinstance(fr, str) and fr and self.finished is None:
                self.finished = fr
                out.append(Finish(fr))
        u = usage_of(chunk.get("usage"))
        if u is not None and self.usage is None:
            self.usage = u
            out.append(u)
        return out

    def _tool_delta(self, pos: int, call: Mapping[str, Any]) -> list[Event]:
        raw_index = call.get("index")
        key = raw_index if isinstance(raw_index, int) else pos
        fn = call.get("function")
        fn = fn if isinstance(fn, Mapping) else {}
        out: list[Event] = []
        if key not in self._tools:
            ours = len(self._tools)
            self._tools[key] = ours
            cid = call.get("id")
            cid = cid if isinstance(cid, str) and cid else f"call_{ours}"
            self._ids[ours] = cid
            name = fn.get("name")
            out.append(ToolStart(ours, cid, name if isinstance(name, str) else ""))
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            out.append(ToolArgs(self._tools[key], args))
        return out


@dataclass(frozen=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True)
class ChatAnswer:
    """A non-streamed ``chat.completion``, read."""

    id: str
    model: str
    text: str
    reasoning: str
    tool_calls: tuple[ToolCall, ...]
    finish: str
    usage: Usage


def answer_of(doc: Any) -> ChatAnswer:
    """Read a ``chat.completion`` body; TranslateError(502) if it is not one."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("choices"), list) \
            or not doc["choices"] or not isinstance(doc["choices"][0], Mapping):
        raise TranslateError("engine answer has no choices", status=502,
                             code="upstream_error")
    choice = doc["choices"][0]
    msg = choice.get("message")
    msg = msg if isinstance(msg, Mapping) else {}
    content = msg.get("content") if msg else choice.get("text")  # chat, or /v1/completions
    calls: list[ToolCall] = []
    for i, c in enumerate(msg.get("tool_calls") or []):
        if not isinstance(c, Mapping):
            continue
        fn = c.get("function") if isinstance(c.get("function"), Mapping) else {}
        assert isinstance(fn, Mapping)
        cid = c.get("id") if isinstance(c.get("id"), str) and c.get("id") else f"call_{i}"
        args = fn.get("arguments")
        if isinstance(args, Mapping):  # some engines send an object
            args = json.dumps(args, ensure_ascii=False)
        calls.append(ToolCall(str(cid), str(fn.get("name") or ""),
                              args if isinstance(args, str) else ""))
    fr = choice.get("finish_reason")
    return ChatAnswer(
        id=str(doc.get("id") or ""),
        model=str(doc.get("model") or ""),
        text=content if isinstance(content, str) else "",
        reasoning=_reasoning_of(msg),
        tool_calls=tuple(calls),
        finish=fr if isinstance(fr, str) and fr else "stop",
        usage=usage_of(doc.get("usage")) or Usage(0, 0),
    )


def text_of_parts(content: Any, kinds: tuple[str, ...] = ("text",)) -> str:
    """The text of a string or a list of ``{"type": kind, "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content
                       if isinstance(p, Mapping) and p.get("type") in kinds)
    return ""
