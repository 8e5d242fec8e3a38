"""Token usage for every answer swarmd relays, even when the engine gives none.

Theory of operation
-------------------
Budgets and usage records need prompt and completion token counts for every
response, and a client that sends ``stream_options: {"include_usage": true}``
expects a last chunk with ``usage`` and empty ``choices``.  Engines differ:
vLLM, Ollama and llama-server send usage; llama-cpp-python's server sends
none in a stream.  This module is sans-IO: bytes in, bytes out.

:class:`SseUsage` watches an OpenAI SSE stream event by event.  It records a
``usage`` object when the engine sends one, otherwise it counts completion
tokens itself: llama.cpp streams one token per content delta, so the number
of chunks carrying text (``delta.content``, ``delta.reasoning_content``,
``delta.tool_calls`` or ``text``) is the completion count; llama-server's
``timings`` (``prompt_n``, ``predicted_n``) win where present.  At
``data: [DONE]`` the caller asks :meth:`SseUsage.finish` for the usage chunk to
insert (only when the client asked for usage and the engine sent none); the
prompt count comes from the engine's tokenizer when the caller could ask it,
else from :func:`estimate_tokens`.

:func:`ensure_body_usage` does the same for a non-streamed JSON answer.

Counts swarmd makes itself carry ``"swarmd_counted": true`` inside ``usage``
so a reader can tell them from the engine's own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Longest single SSE event buffered while looking for its end (bytes).
MAX_EVENT = 4 * 1024 * 1024


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: about 4 characters per token (OpenAI's rule
    of thumb for English), at least 1 for non-empty text."""
    return 0 if not text else max(1, (len(text) + 3) // 4)


def prompt_text(route: str, body: Mapping[str, Any]) -> str:
    """The text a request's prompt consists of, for counting its tokens."""
    if route.endswith("/chat/completions"):
        parts: list[str] = []
        for m in body.get("messages") or ():
            if not isinstance(m, Mapping):
                continue
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(p["text"] for p in content
                             if isinstance(p, Mapping) and isinstance(p.get("text"), str))
        return "\n".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return ""


def wants_usage(body: Mapping[str, Any]) -> bool:
    """Did a streaming client ask for the usage chunk?"""
    opts = body.get("stream_options")
    return isinstance(opts, Mapping) and opts.get("include_usage") is True


def _valid_usage(u: Any) -> bool:
    return isinstance(u, Mapping) and isinstance(u.get("completion_tokens"), int)


def usage_of(u: Any) -> Usage | None:
    """An OpenAI ``usage`` object as :class:`Usage`, None when it is not one."""
    if not _valid_usage(u):
        return None
    pt = u.get("prompt_tokens")
    return Usage(pt if isinstance(pt, int) else 0, int(u["completion_tokens"]),
                 counted=u.get("swarmd_counted") is True)


def _chunk_text(doc: Mapping[str, Any]) -> str | None:
    """The generated text (or a tool-call marker) a chunk carries, None if none."""
    choices = doc.get("choices")
    if not isinstance(choices, list):
        return None
    out: list[str] = []
    for c in choices:
        if not isinstance(c, Mapping):
            continue
        delta = c.get("delta")
        if isinstance(delta, Mapping):
            for k in ("content", "reasoning_content"):
                v = delta.get(k)
                if isinstance(v, str) and v:
                    out.append(v)
            if delta.get("tool_calls"):
                out.append("\x00")
        text = c.get("text")
        if isinstance(text, str) and text:
            out.append(text)
    return "".join(out) if out else None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    counted: bool = False  # True: swarmd's own count, not the engine's

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"prompt_tokens": self.prompt_tokens,
                             "completion_tokens": self.completion_tokens,
                             "total_tokens": self.prompt_tokens + self.completion_tokens}
        if self.counted:
            d["swarmd_counted"] = True
        return d


@dataclass
class SseUsage:
    """Watches one OpenAI SSE stream; see the module docstring."""

    inject: bool  # the client asked for the usage chunk
    engine_usage: dict[str, Any] | None = None
    chunks_with_text: int = 0
    timings_prompt: int | None = None
    timings_predicted: int | None = None
    last_id: str = ""
    last_model: str = ""
    last_created: int = 0
    last_object: str = "chat.completion.chunk"
    done: bool = False
    tail: bytes = b""  # from [DONE] on, held back by feed() for the caller
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Pass ``data`` through; returns (bytes to send now, at_done).

        When ``at_done`` is True the returned bytes stop *before* the
        ``data: [DONE]`` event, which the caller must send after
        :meth:`finish`'s chunk (held back in :attr:`tail`).
        """
        if self.done:
            return data, False
        self._buf += data
        out = bytearray()
        while True:
            end = self._buf.find(b"\n\n")
            if end < 0:
                if len(self._buf) > MAX_EVENT:  # not SSE as we know it: stop looking
                    out += self._buf
                    self._buf.clear()
                    self.done = True
                break
            event = bytes(self._buf[: end + 2])
            del self._buf[: end + 2]
            if self._observe(event):
                self.done = True
                self.tail = event + bytes(self._buf)
                self._buf.clear()
                return bytes(out), True
            out += event
        return bytes(out), False

    def _observe(self, event: bytes) -> bool:
        """Look at one event; True if it is ``[DONE]``."""
        for line in event.split(b"\n"):
            line = line.rstrip(b"\r")
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return True
            try:
                doc = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            if _valid_usage(doc.get("usage")):
                self.engine_usage = doc["usage"]
            timings = doc.get("timings")
            if isinstance(timings, Mapping):
                pn, dn = timings.get("prompt_n"), timings.get("predicted_n")
                if isinstance(pn, int):
                    self.timings_prompt = pn
                if isinstance(dn, int):
                    self.timings_predicted = dn
            if _chunk_text(doc) is not None:
                self.chunks_with_text += 1
            if isinstance(doc.get("id"), str):
                self.last_id = doc["id"]
            if isinstance(doc.get("model"), str):
                self.last_model = doc["model"]
            if isinstance(doc.get("created"), int):
                self.last_created = doc["created"]
            if isinstance(doc.get("object"), str):
                self.last_object = doc["object"]
        return False

    @property
    def needs_prompt_count(self) -> bool:
        """At [DONE]: must the caller count prompt tokens (engine gave none)?"""
        return self.engine_usage is None and self.timings_prompt is None

    def usage(self, prompt_tokens: int | None = None) -> Usage:
        engine = usage_of(self.engine_usage)
        if engine is not None:
            return engine
        completion = (self.timings_predicted if self.timings_predicted is not None
                      else self.chunks_with_text)
        prompt = self.timings_prompt if self.timings_prompt is not None else (prompt_tokens or 0)
        return Usage(prompt, completion, counted=True)

    def finish(self, prompt_tokens: int | None = None) -> bytes:
        """The usage chunk to send before ``[DONE]`` (b"" when none is due)."""
        if not self.inject or self.engine_usage is not None:
            return b""
        chunk = {"id": self.last_id, "object": self.last_object, "created": self.last_created,
                 "model": self.last_model, "choices": [],
                 "usage": self.usage(prompt_tokens).as_dict()}
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def body_text(doc: Mapping[str, Any]) -> str:
    """The generated text of a non-streamed chat/completions answer."""
    out: list[str] = []
    for c in doc.get("choices") or ():
        if not isinstance(c, Mapping):
            continue
        msg = c.get("message")
        if isinstance(msg, Mapping) and isinstance(msg.get("content"), str):
            out.append(msg["content"])
        if isinstance(c.get("text"), str):
            out.append(c["text"])
    return "".join(out)


def ensure_body_usage(raw: bytes, prompt_tokens: int | None,
                      completion_tokens: int | None) -> tuple[bytes, Usage | None]:
    """A non-streamed answer with ``usage`` present: unchanged when the engine
    gave it, else with swarmd's counts added.  Not JSON: unchanged, None."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw, None
    if not isinstance(doc, dict):
        return raw, None
    given = usage_of(doc.get("usage"))
    if given is not None:
        return raw, given
    if "choices" not in doc:
        return raw, None
    usage = Usage(prompt_tokens or 0,
                  completion_tokens if completion_tokens is not None
                  else estimate_tokens(body_text(doc)), counted=True)
    doc["usage"] = usage.as_dict()
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(), usage


class Ticket(Protocol):
    """An admitted request's hold on its limits (:mod:`swarmd.api.limits`)."""

    #: A rewritten request body to send instead (e.g. ``max_tokens`` capped
    #: to what the budget holds), or None.
    raw: bytes | None

    def settle(self, prompt_tokens: int, completion_tokens: int, known: bool) -> None:
        """The request ended: charge what it used (``known``: the engine said)."""

    def release(self) -> None:
        """The request never reached an engine: give the hold back."""


@dataclass(frozen=True)
class UsageEvent:
    """One finished request, as the node that received it saw it (the
    usage records and budgets consume these; see ``Proxy.on_usage``)."""

    request_id: str
    route: str
    model: str
    status: int  # HTTP status sent (499: the client went away)
    node_id: str = ""  # where the engine ran ("" when no engine answered)
    engine_id: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    counted: bool = False  # swarmd's count rather than the engine's
    latency_s: float = 0.0  # received -> last byte
    ttft_s: float | None = None  # received -> first byte of the answer
    queue_s: float = 0.0
    #: Who sent it, as the API's auth layer put it on the request (key id,
    #: user, project); empty when auth is off or not in place.
    principal: Mapping[str, Any] = field(default_factory=dict)
    #: The error code answered (e.g. ``insufficient_quota``), when it failed.
    error_code: str = ""


class BodyUsage:
    """Collects a non-streamed JSON answer (bounded) to read its usage at the end."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._limit = limit
        self._over = False

    def feed(self, data: bytes) -> None:
        if not self._over:
            self._buf += data
            if len(self._buf) > self._limit:
                self._over = True
                self._buf.clear()

    def usage(self) -> Usage | None:
        if self._over or not self._buf:
            return None
        try:
            doc = json.loads(self._buf)
        except ValueError:
            return None
        return usage_of(doc.get("usage")) if isinstance(doc, dict) else None
