"""One committed answer from an engine: :class:`Exchange`.

The proxy (:mod:`swarmd.api.proxy`) hands one out once an attempt has its
head and first bytes; the OpenAI relay and the translated APIs (Ollama,
Responses, Anthropic) read it the same way.  While the body passes it
watches for token usage (a forwarded answer carries it in its SSE events or
JSON body; a local one brings it from :mod:`swarmd.api.upstream`), and on
close it tells its owner, which books the outcome (router, queue, usage
event).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from swarmd.api.upstream import UpstreamError, UpstreamResponse
from swarmd.api.usage import BodyUsage, SseUsage, Ticket, Usage
from swarmd.core.routing import Target


class ExchangeOwner(Protocol):
    def note_failure(self, target: Target, exc: UpstreamError) -> None: ...

    def exchange_closed(self, ex: Exchange) -> None: ...


class Exchange:
    """A committed answer from one engine: the head arrived and the first
    bytes are read.  ``read()`` gives the body (first bytes first), ``b""``
    at the end; ``aclose()`` must be called (``async with`` does)."""

    def __init__(self, owner: ExchangeOwner, target: Target, kind: str, route: str, model: str,
                 up: UpstreamResponse, first: bytes, started: float) -> None:
        self._owner = owner
        ctype = next((v for k, v in up.headers if k.lower() == "content-type"), "")
        # Usage as the answer passes (for forwarded answers; a local one
        # carries it already): SSE events, or the JSON body at the end.
        self._sse: SseUsage | None = None
        self._body: BodyUsage | None = None
        if getattr(up, "usage", None) is None and route in ("/v1/chat/completions",
                                                            "/v1/completions"):
            if ctype.startswith("text/event-stream"):
                self._sse = SseUsage(inject=False)
            elif ctype.startswith("application/json"):
                self._body = BodyUsage()
        #: Set by the proxy: what on_usage reports at close.
        self.request_id = ""
        self.received = started
        self.first_at: float | None = None
        self.sent_status: int | None = None
        self.principal: Mapping[str, Any] = {}
        #: The limits' hold on this request (settled at close), if any.
        self.ticket: Ticket | None = None
        self._target = target
        self._up = up
        self._first: bytes | None = first
        self.started = started
        #: Seconds from routing to the attempt that answered (queueing, retries).
        self.queue_wait = 0.0
        self._model = model
        self._ended = False
        self._failed = False
        self._closed = False
        self.status = up.status
        self.headers = up.headers
        self.node_id = target.node_id
        self.engine_id = target.engine_id
        self.engine_kind = kind
        self.route = route

    @property
    def usage(self) -> Usage | None:
        """Token usage once the body ended, if known."""
        own = getattr(self._up, "usage", None)
        if isinstance(own, Usage):
            return own
        if self._sse is not None and self._sse.done:
            return self._sse.usage()
        if self._body is not None:
            return self._body.usage()
        return None

    def _watch(self, data: bytes) -> None:
        if self._sse is not None and not self._sse.done:
            self._sse.feed(data)  # output ignored: only watching
        elif self._body is not None:
            self._body.feed(data)

    async def read(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            if self.first_at is None:
                self.first_at = time.monotonic()
            if first:
                self._watch(first)
                return first
            self._ended = True
            return b""
        if self._ended:
            return b""
        try:
            data = await self._up.read()
        except UpstreamError as exc:
            self._failed = True
            self._owner.note_failure(self._target, exc)
            raise
        if not data:
            self._ended = True
        else:
            self._watch(data)
        return data

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._up.aclose()
        finally:
            self._owner.exchange_closed(self)

    @property
    def target(self) -> Target:
        return self._target

    @property
    def model(self) -> str:
        return self._model

    @property
    def completed(self) -> bool:
        """The body ended and nothing failed."""
        return self._ended and not self._failed

    async def __aenter__(self) -> Exchange:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
