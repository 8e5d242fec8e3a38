"""What the Ollama, Responses and Anthropic front ends share.

Theory of operation
-------------------
Each front end (:mod:`swarmd.api.ollama_api`, :mod:`swarmd.api.responses_api`,
:mod:`swarmd.api.anthropic_api`) checks its API's body, maps it with the
pure translators in :mod:`swarmd.api.translate` and routes it through
:meth:`swarmd.api.proxy.Proxy.exchange`.  This module holds the pieces the
three have in common: the :class:`Exchanger` contract they call, reading
the body (413 past ``api.max_body_bytes``), reading a whole answer, and
relaying a stream through a translator (or a native answer unchanged).
Errors never leave a handler as an exception: each API renders its own
error shape (:class:`ClientError` carries status, message, param and code
until then), since the app's middleware would answer in OpenAI's shape.

It imports none of the front ends (they import it), so there is no cycle;
:mod:`swarmd.api.client_apis` registers the three.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from swarmd.api.auth import PRINCIPAL_KEY
from swarmd.api.errors import ApiError
from swarmd.api.translate.common import TranslateError, openai_error_of
from swarmd.api.upstream import UpstreamError

#: ``native(engine_kind)`` -> (engine path, body) to send instead of the OpenAI request.
Native = Callable[[str], tuple[str, bytes] | None]


class ExchangeLike(Protocol):
    status: int
    headers: tuple[tuple[str, str], ...]
    node_id: str
    engine_id: str
    engine_kind: str
    route: str

    async def read(self) -> bytes: ...
    async def aclose(self) -> None: ...


class Exchanger(Protocol):
    """What the handlers need of :class:`swarmd.api.proxy.Proxy`."""

    async def exchange(self, route: str, body: dict[str, Any], *,
                       headers: Mapping[str, str] | None = None,
                       request_id: str | None = None,
                       native: Native | None = None,
                       principal: Mapping[str, Any] | None = None) -> Any: ...


@dataclass
class ClientError(Exception):
    """An error for the client, rendered in its API's own shape by the handler."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    retry_after: float | None = None

    @classmethod
    def of(cls, exc: ApiError | TranslateError) -> ClientError:
        if isinstance(exc, ApiError):
            return cls(exc.status, exc.message, exc.param, exc.code, exc.retry_after)
        return cls(exc.status, exc.message, exc.param, exc.code)

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, int(self.retry_after + 0.999)))}


def request_id(request: web.Request) -> str:
    return request.headers.get("X-Request-Id") or uuid.uuid4().hex


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ClientError(413, f"request body exceeds {limit} bytes", code="request_too_large")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ClientError(413, f"request body exceeds {limit} bytes",
                          code="request_too_large") from None


async def open_exchange(proxy: Exchanger, route: str, body: dict[str, Any],
                        request: web.Request, rid: str,
                        native: Native | None = None) -> ExchangeLike:
    """Route ``body`` as the OpenAI ``route``; ClientError when nothing could be opened."""
    try:
        ex: ExchangeLike = await proxy.exchange(route, body, headers=request.headers,
                                                request_id=rid, native=native,
                                                principal=request.get(PRINCIPAL_KEY))
    except ApiError as exc:
        raise ClientError.of(exc) from None
    return ex


async def read_all(ex: ExchangeLike) -> tuple[bytes, float]:
    """The whole answer, and the monotonic time its first bytes came."""
    chunks: list[bytes] = []
    first = 0.0
    try:
        while chunk := await ex.read():
            if not chunks:
                first = time.monotonic()
            chunks.append(chunk)
    except UpstreamError as exc:
        raise ClientError(504 if exc.kind == "timeout" else 502,
                          f"the engine failed mid-answer: {exc.message}",
                          code="upstream_error") from None
    return b"".join(chunks), first or time.monotonic()


def engine_error(ex: ExchangeLike, raw: bytes) -> ClientError:
    """The engine's own 4xx/5xx answer, as a ClientError."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    message, code, param = openai_error_of(doc, ex.status)
    return ClientError(ex.status, message, param, code)


def answer_json(ex: ExchangeLike, raw: bytes) -> Any:
    if ex.status >= 400:
        raise engine_error(ex, raw)
    try:
        return json.loads(raw)
    except ValueError:
        raise ClientError(502, "the engine's answer is not JSON", code="upstream_error") from None


def routed_headers(ex: ExchangeLike, rid: str) -> dict[str, str]:
    return {"X-Request-Id": rid, "X-Swarmd-Node": ex.node_id, "X-Swarmd-Engine": ex.engine_id}


class HeadersWithBody(web.StreamResponse):
    """A StreamResponse whose headers wait for the first body bytes (as
    ``web.Response``'s do), so they share one write: a stream whose answer
    came at once goes out as one send (headers, events, end)."""

    _send_headers_immediately = False


@dataclass
class StreamTranslator:
    """The calls a stream relay makes on a translator, bound to it."""

    feed: Callable[[bytes], bytes]
    finish: Callable[[], bytes]
    fail: Callable[[str], bytes]
    #: Whether the translator has written its stream's last event (the
    #: engine's ``[DONE]``, or an error in the stream): the relay then books
    #: the request before that event goes out.
    ended: Callable[[], bool] = lambda: False


async def relay_stream(request: web.Request, ex: ExchangeLike, rid: str, content_type: str,
                       head: bytes, tr: StreamTranslator) -> web.StreamResponse:
    """Write ``head`` then each translated chunk of ``ex`` as it comes.  A break
    after the start is reported in the stream (``tr.fail``), then the
    connection is closed.

    The request is booked (``ex.aclose()``: usage record, limits) before the
    client can see the stream end: once the translator has its last event,
    the engine's body is read to its end and the exchange closed, then that
    event goes out with the end of the body in one write (with ``head`` and
    whatever came before it, when the engine's answer came at once)."""
    resp = HeadersWithBody(status=200, headers={"Content-Type": content_type,
                                                "Cache-Control": "no-cache",
                                                **routed_headers(ex, rid)})
    await resp.prepare(request)
    pending = head  # sent with the first translated bytes: one write, not two
    first = True
    try:
        while chunk := await ex.read():
            pending += tr.feed(chunk)
            if tr.ended():
                while await ex.read():  # the rest of the body (nothing after [DONE])
                    pass
                break
            if pending or first:  # the first write sends the headers, even if empty
                await resp.write(pending)
                pending = b""
                first = False
    except UpstreamError as exc:
        try:
            await resp.write(pending + tr.fail(f"the engine failed mid-stream: {exc.message}"))
        except ConnectionError:
            pass
        if request.transport is not None:
            request.transport.close()
        return resp
    tail = pending + tr.finish()
    await ex.aclose()  # book it (usage, limits) before the client sees the end
    await resp.write_eof(tail)
    return resp


async def passthrough(request: web.Request, ex: ExchangeLike, rid: str) -> web.StreamResponse:
    """Relay a native engine answer unchanged (status, content type, bytes)."""
    ctype = next((v for k, v in ex.headers if k.lower() == "content-type"),
                 "application/json")
    resp = web.StreamResponse(status=ex.status,
                              headers={"Content-Type": ctype, **routed_headers(ex, rid)})
    await resp.prepare(request)
    try:
        while chunk := await ex.read():
            await resp.write(chunk)
    except UpstreamError:
        if request.transport is not None:
            request.transport.close()
        return resp
    await ex.aclose()  # booked before the final chunk goes out
    await resp.write_eof()
    return resp


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def clock() -> tuple[float, float]:
    """(monotonic, wall) now: the one place the handlers read the clocks."""
    return time.monotonic(), time.time()
