"""Talking to one engine: the shared shape of a proxied request and answer.

Theory of operation
-------------------
The proxy handler does not care whether an engine is on this node (an HTTP
call with aiohttp, :class:`LocalUpstream`) or on another node (frames over a
libp2p stream, :mod:`swarmd.runtime.forward`): both take a
:class:`ProxyRequest` plus :class:`Deadlines` and give back an
:class:`UpstreamResponse` -- status, headers, then ``read()`` chunks until
``b""``.

Failures are :class:`UpstreamError` with a ``kind``; the handler retries on
another candidate only while nothing has reached its client.  Kinds:
``connect`` (could not reach the engine: 502), ``timeout`` (a deadline
passed: 504), ``saturated`` (the engine said 429 / queue full: 429),
``unavailable`` (the engine said 503, or is unknown here: 503), ``upstream``
(the exchange broke: 502), ``cancelled``.

Deadlines: ``connect`` for TCP connect (local) or stream open (remote);
``first_byte`` until the response head; ``idle`` between two chunks;
``total_at`` an absolute ``time.monotonic()`` instant for the whole request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from swarmd.core.routing import EngineLoad

#: Engine statuses that mean "not now, try elsewhere" (retryable before the first byte).
RETRY_STATUSES = {429: "saturated", 503: "unavailable"}

#: Request headers passed to engines (everything else is dropped; the engine
#: adapter adds its own authorization).
FORWARDED_HEADERS = ("content-type", "accept", "user-agent", "x-request-id", "openai-beta")

#: Response headers never relayed (hop-by-hop or set by our server).
HOP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "server", "date",
})


class UpstreamError(Exception):
    def __init__(self, kind: str, message: str, *, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self.status = status


@dataclass(frozen=True)
class Deadlines:
    connect: float
    first_byte: float
    idle: float
    total_at: float  # time.monotonic() instant

    def left(self) -> float:
        return self.total_at - time.monotonic()

    def cap(self, seconds: float) -> float:
        """``seconds`` or the time left, whichever is less (never negative)."""
        return max(0.0, min(seconds, self.left()))


@dataclass(frozen=True)
class ProxyRequest:
    route: str  # "/v1/chat/completions"
    body: bytes
    model: str
    headers: tuple[tuple[str, str], ...] = ()
    method: str = "POST"
    request_id: str = ""


class UpstreamResponse(Protocol):
    status: int
    headers: tuple[tuple[str, str], ...]

    async def read(self) -> bytes:
        """The next bytes of the body (whatever is available); b"" at the end.
        Raises UpstreamError if the exchange breaks or a deadline passes."""
        ...

    async def aclose(self) -> None:
        """Release the exchange; before the end this cancels the upstream request."""
        ...


class UpstreamRequestLike(Protocol):
    """What an engine adapter produces (swarmd.engines ``UpstreamRequest``)."""

    @property
    def method(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def body(self) -> bytes: ...


class LocalEngines(Protocol):
    """This node's engines as the API needs them (glue over EngineManager)."""

    def request(self, engine_id: str, route: str, body: bytes,
                headers: Mapping[str, str]) -> UpstreamRequestLike:
        """The HTTP request to send; KeyError if the engine is unknown."""
        ...

    def inflight(self, engine_id: str) -> AbstractContextManager[Any]:
        """Counts one request in flight on the engine while entered."""
        ...

    def current_load(self, engine_id: str) -> EngineLoad | None:
        """The engine's load now: polled load corrected by fresh in-flight counts."""
        ...


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After") or headers.get("retry-after")
    if raw is None:
        return None
    try:
        v = float(raw)
    except ValueError:
        return None
    return v if 0 <= v <= 3600 else None


class _LocalResponse:
    def __init__(self, resp: aiohttp.ClientResponse, stack: ExitStack,
                 deadlines: Deadlines) -> None:
        self._resp = resp
        self._stack = stack
        self._deadlines = deadlines
        self.status = resp.status
        self.headers = tuple(
            (k, v) for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS
        )
        self._done = False

    async def read(self) -> bytes:
        if self._done:
            return b""
        wait = self._deadlines.cap(self._deadlines.idle)
        try:
            async with asyncio.timeout(wait):
                data = await self._resp.content.readany()
        except TimeoutError:
            raise UpstreamError("timeout", "engine went silent (idle timeout)") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError("upstream", f"engine broke the response: {exc}") from None
        if not data:
            self._done = True
        return data

    async def aclose(self) -> None:
        if not self._done:
            self._resp.close()  # drops the connection: the engine sees a disconnect
        else:
            self._resp.release()
        self._stack.close()


class LocalUpstream:
    """Calls this node's engines over HTTP with one shared aiohttp session."""

    def __init__(self, engines: LocalEngines, session: aiohttp.ClientSession) -> None:
        self.engines = engines
        self.session = session

    @staticmethod
    def new_session(limit: int = 1000) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0),
            auto_decompress=False,  # relay bytes exactly as the engine sent them
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def open(self, engine_id: str, req: ProxyRequest, deadlines: Deadlines) -> _LocalResponse:
        headers = {k: v for k, v in req.headers}
        try:
            up = self.engines.request(engine_id, req.route, req.body, headers)
        except KeyError:
            raise UpstreamError("unavailable", f"engine {engine_id} is not on this node") from None
        stack = ExitStack()
        stack.enter_context(self.engines.inflight(engine_id))
        send_headers = dict(up.headers)
        send_headers["Accept-Encoding"] = "identity"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=deadlines.cap(deadlines.connect))
        try:
            async with asyncio.timeout(deadlines.cap(deadlines.first_byte)):
                resp = await self.session.request(
                    up.method, up.url, data=up.body, headers=send_headers, timeout=timeout,
                    allow_redirects=False,
                )
        except TimeoutError:
            stack.close()
            raise UpstreamError("timeout", "no answer from the engine in time") from None
        except aiohttp.ServerTimeoutError:
            stack.close()
            raise UpstreamError("timeout", "connecting to the engine timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            stack.close()
            raise UpstreamError("connect", f"cannot reach the engine: {exc}") from None
        except BaseException:
            stack.close()
            raise
        kind = RETRY_STATUSES.get(resp.status)
        if kind is not None:
            ra = retry_after_of(resp.headers)
            resp.close()
            stack.close()
            raise UpstreamError(kind, f"engine answered {resp.status}", retry_after=ra,
                                status=resp.status)
        return _LocalResponse(resp, stack, deadlines)
