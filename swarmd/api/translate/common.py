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
from collections.abc import Callable, Mapping
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
#: The decoder's scanner: one JSON value at an index, (value, end) -- what
#: ``_DECODER.decode`` runs under two layers of Python.
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


#: A str as a JSON string literal, exactly as :func:`dumps` writes one (the
#: encoder's own function): for frames built from pieces on a hot path.
encode_str: Callable[[str], str] = json.encoder.encode_basestring


def _c_encoder() -> Callable[[Any, int], Any] | None:
    """:data:`_ENCODER`'s C encoder, built once.  ``JSONEncoder.encode`` builds
    it anew on every call (most of the cost of a small object); without a
    circular-reference check (the translators never build cycles), so there
    is no state to carry from one call to the next."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    e = _ENCODER
    try:
        enc: Callable[[Any, int], Any] = make(
            None, e.default, json.encoder.encode_basestring, e.indent, e.key_separator,
            e.item_separator, e.sort_keys, e.skipkeys, e.allow_nan)
    except TypeError:  # another signature: the encoder's own way
        return None
    return enc


_C_ENCODE = _c_encoder()


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the one serialisation every translator emits (one
    shared encoder: ``json.dumps`` with options builds a new one per call)."""
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(obj, 0)).encode()
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
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self._buf = buf
            return []
        if cut and buf[cut - 1] == 10:  # a run of newlines: cut where split() would
            start = cut - 1
            while start and buf[start - 1] == 10:
                start -= 1
            cut -= (cut + 2 - start) % 2
        self._buf = buf[cut + 2:]
        try:
            # The complete events decoded at once (no character spans a
            # blank line), then each payload scanned in place.
            events = buf[:cut].decode().split("\n\n")
        except UnicodeDecodeError:
            return self._slow(buf[:cut].split(b"\n\n"), self._buf)
        out: list[JsonObj] = []
        for i, event in enumerate(events):
            if event.startswith("data: ") and "\n" not in event:
                payload = event[6:]  # the usual event: one data line
                if payload.startswith(" "):
                    payload = payload.lstrip(" ")
            else:
                payload = "\n".join(line[5:].lstrip(" ") for line in event.split("\n")
                                    if line.startswith("data:"))
            if not payload:
                continue  # comments, event:/id: lines only
            if payload == "[DONE]" or payload.strip(" \t\n\r\x0b\x0c") == "[DONE]":
                self.done = True
                continue
            try:
                obj, end = _SCAN(payload, 0)
                if end != len(payload):  # whitespace after it, or more than one value
                    obj = _DECODER.decode(payload)
            except (StopIteration, ValueError):  # not a value at 0 (whitespace, or not JSON)
                obj = self._decode(payload, events, i)
            if not isinstance(obj, dict):
                self._keep(events, i)
                raise TranslateError("engine sent a stream event that is not an object",
                                     status=502, code="upstream_error")
            out.append(obj)
        return out

    def _keep(self, events: list[str], i: int) -> None:
        """After a bad event ``i``: the buffer holds what came after it."""
        self._buf = b"\n\n".join([*(e.encode() for e in events[i + 1:]), self._buf])

    def _decode(self, payload: str, events: list[str], i: int) -> Any:
        try:
            return _DECODER.decode(payload)
        except ValueError:
            self._keep(events, i)
            raise TranslateError("engine sent a stream event that is not JSON",
                                 status=502, code="upstream_error") from None

    def _slow(self, events: list[bytes], rest: bytes) -> list[JsonObj]:
        """:meth:`feed` for events that are not all UTF-8: one at a time, so the
        events before the bad one count as they did."""
        out: list[JsonObj] = []
        for i, event in enumerate(events):
            payload = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n")
                                 if line.startswith(b"data:"))
            if not payload:
                continue
            if payload.strip() == b"[DONE]":
                self.done = True
                continue
            try:
                obj = _DECODER.decode(payload.decode())
            except ValueError:  # UnicodeDecodeError included
                self._buf = b"\n\n".join([*events[i + 1:], rest])
                raise TranslateError("engine sent a stream event that is not JSON",
                                     status=502, code="upstream_error") from None
            if not isinstance(obj, dict):
                self._buf = b"\n\n".join([*events[i + 1:], rest])
                raise TranslateError("engine sent a stream event that is not an object",
                                     status=502, code="upstream_error")
            out.append(obj)
        return out


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
        # ``type(x) is dict`` first: parsed JSON is always a dict, and the
        # Mapping check (an ABC) is the slow part of an event otherwise.
        err = chunk.get("error")
        if err is not None:
            msg, code, _ = openai_error_of(chunk, 502)
            return [Failure(msg, code)]
        if not self.id:
            cid = chunk.get("id")
            if isinstance(cid, str):
                self.id = cid
        if not self.model:
            model = chunk.get("model")
            if isinstance(model, str):
                self.model = model
        out: list[Event] = []
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices:
            choice = choices[0]
            if type(choice) is dict or isinstance(choice, Mapping):
                delta = choice.get("delta")
                if type(delta) is dict or isinstance(delta, Mapping):
                    if "reasoning_content" in delta or "reasoning" in delta:
                        if r := _reasoning_of(delta):
                            out.append(Reasoning(r))
                    content = delta.get("content")
                    if content and isinstance(content, str):
                        out.append(Text(content))
                    calls = delta.get("tool_calls")
                    if isinstance(calls, list):
                        for pos, call in enumerate(calls):
                            if isinstance(call, Mapping):
                                out.extend(self._tool_delta(pos, call))
                text = choice.get("text")  # a /v1/completions chunk
                if text and isinstance(text, str):
                    out.append(Text(text))
                fr = choice.get("finish_reason")
                if fr and isinstance(fr, str) and self.finished is None:
                    self.finished = fr
                    out.append(Finish(fr))
        u = chunk.get("usage")
        if u is not None and self.usage is None:
            usage = usage_of(u)
            if usage is not None:
                self.usage = usage
                out.append(usage)
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
