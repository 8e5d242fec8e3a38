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
(the exchange broke, or the engine answered 500/501/5xx -- "this engine
cannot": 502, never with the engine's own text), ``cancelled``.

An engine's 4xx is the client's problem and is relayed, in OpenAI's error
shape: an engine body that is not ``{"error": {...}}`` is wrapped, so
internals never reach the client.

At most ``capacity`` requests run on an engine at once when its capacity is
known (llama-cpp-python runs one and, by default, *interrupts* the running
stream when a second arrives): the others wait their turn in
:class:`_Gate` for up to :data:`GATE_WAIT` seconds, then get ``saturated``.
The proxy's queue normally keeps the gate empty; it guards against several
nodes sending to one engine in the same instant.

Usage: chat and completions answers leave here with usage
(:mod:`swarmd.api.usage`): the engine's own, else swarmd's count (prompt
tokens from the engine's tokenizer where it has one).

Deadlines: ``connect`` for TCP connect (local) or stream open (remote);
``first_byte`` until the response head; ``idle`` between two chunks;
``total_at`` an absolute ``time.monotonic()`` instant for the whole request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from swarmd.api.usage import (
    SseUsage,
    Usage,
    ensure_body_usage,
    estimate_tokens,
    prompt_text,
    wants_usage,
)
from swarmd.core.error_kinds import kind_of_status
from swarmd.core.routing import EngineLoad

#: Longest a request waits at an engine's capacity gate on its own node (s).
GATE_WAIT = 10.0

#: Largest engine error body read to relay a 4xx (bytes).
MAX_ERROR_BODY = 64 * 1024

#: Largest non-streamed answer buffered to add missing usage (bytes).
MAX_USAGE_BODY = 8 * 1024 * 1024

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
    #: Did the client ask for the stream's usage chunk?  None: read ``body``
    #: to know (a caller that parsed it already says, sparing a second parse).
    usage_asked: bool | None = None


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

    def capacity(self, engine_id: str) -> int | None:
        """Most requests the engine takes at once, when known."""
        ...

    async def count_tokens(self, engine_id: str, model: str, text: str) -> int | None:
        """The engine's token count for ``text`` (None: it cannot tell)."""
        ...

    def note_result(self, engine_id: str, ok: bool) -> None:
        """A request on the engine succeeded, or failed for engine reasons."""
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


class _Gate:
    """At most ``capacity`` holders at once; FIFO waiters (see module doc)."""

    def __init__(self) -> None:
        self.holders = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, capacity: int, wait: float) -> bool:
        if self.holders < capacity and not self._waiters:
            self.holders += 1
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(wait):
                while self.holders >= capacity:
                    await fut
                    if self.holders >= capacity:  # woken, but a slot was taken back
                        fut = asyncio.get_running_loop().create_future()
                        self._waiters.appendleft(fut)
        except TimeoutError:
            return False
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)
        self.holders += 1
        self._wake()
        return True

    def release(self) -> None:
        self.holders = max(0, self.holders - 1)
        self._wake()

    def _wake(self) -> None:
        if self._waiters and not self._waiters[0].done():
            self._waiters.popleft().set_result(None)


def _error_body(engine_id: str, status: int, raw: bytes) -> bytes:
    """An engine's 4xx body in OpenAI's error shape (wrapped when it is not)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        out = {"message": err["message"][:2000],
               "type": err.get("type") if isinstance(err.get("type"), str)
               else "invalid_request_error",
               "param": err.get("param") if isinstance(err.get("param"), str) else None,
               "code": err.get("code") if isinstance(err.get("code"), str | int) else None}
    else:
        detail = ""
        if isinstance(doc, dict) and isinstance(doc.get("detail"), str):
            detail = doc["detail"]  # FastAPI's shape (llama-cpp-python)
        elif isinstance(err, str):
            detail = err  # Ollama's / TGI's {"error": "..."}
        msg = f"engine {engine_id} refused the request (HTTP {status})"
        if detail:
            msg += f": {detail[:500]}"
        out = {"message": msg, "type": "invalid_request_error", "param": None,
               "code": f"engine_{status}"}
    return json.dumps({"error": out}).encode()


class _Buffered:
    """A whole body already read (an engine's 4xx, or a non-streamed answer
    that got its usage added)."""

    def __init__(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes,
                 usage: Usage | None = None) -> None:
        self.status = status
        self.headers = tuple((k, v) for k, v in headers
                             if k.lower() not in ("content-length", "content-encoding"))
        self.headers += (("Content-Length", str(len(body))),)
        self._body = body
        self.usage = usage

    async def read(self) -> bytes:
        body, self._body = self._body, b""
        return body

    async def aclose(self) -> None:
        pass


class _LocalResponse:
    def __init__(self, resp: aiohttp.ClientResponse, stack: ExitStack,
                 deadlines: Deadlines, watch: SseUsage | None = None,
                 count_prompt: Callable[[], Awaitable[int | None]] | None = None) -> None:
        self._resp = resp
        self._stack = stack
        self._deadlines = deadlines
        self.status = resp.status
        self.headers = tuple(
            (k, v) for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS
        )
        self._done = False
        self._watch = watch
        self._count_prompt = count_prompt
        self.usage: Usage | None = None

    async def _raw(self) -> bytes:
        wait = self._deadlines.cap(self._deadlines.idle)
        try:
            async with asyncio.timeout(wait):
                return await self._resp.content.readany()
        except TimeoutError:
            raise UpstreamError("timeout", "engine went silent (idle timeout)") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError("upstream", f"engine broke the response: {exc}") from None

    async def read(self) -> bytes:
        if self._done:
            return b""
        while True:
            data = await self._raw()
            if not data:
                self._done = True
                return b""
            if self._watch is None:
                return data
            out, at_done = self._watch.feed(data)
            if at_done:
                prompt = None
                if self._watch.needs_prompt_count and self._count_prompt is not None:
                    prompt = await self._count_prompt()
                self.usage = self._watch.usage(prompt)
                # The events before [DONE], the usage chunk swarmd adds, then
                # [DONE] and what came with it: one piece, so a relay that
                # books at [DONE] sends the end of a fast answer in one write.
                out += self._watch.finish(prompt) + self._watch.tail
                self._watch = None
                return out
            if out:
                return out

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
        self._gates: dict[str, _Gate] = {}

    @staticmethod
    def new_session(limit: int = 1000) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0),
            auto_decompress=False,  # relay bytes exactly as the engine sent them
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def _enter_gate(self, engine_id: str, stack: ExitStack, deadlines: Deadlines) -> None:
        cap = self.engines.capacity(engine_id)
        if not cap:
            return
        gate = self._gates.setdefault(engine_id, _Gate())
        if not await gate.acquire(cap, deadlines.cap(GATE_WAIT)):
            raise UpstreamError("saturated", f"engine {engine_id} is at capacity ({cap})",
                                retry_after=1.0, status=429)
        stack.callback(gate.release)

    async def open(self, engine_id: str, req: ProxyRequest,
                   deadlines: Deadlines) -> UpstreamResponse:
        headers = {k: v for k, v in req.headers}
        try:
            up = self.engines.request(engine_id, req.route, req.body, headers)
        except KeyError:
            raise UpstreamError("unavailable", f"engine {engine_id} is not on this node") from None
        stack = ExitStack()
        try:
            await self._enter_gate(engine_id, stack, deadlines)
        except BaseException:
            stack.close()
            raise
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
            raise UpstreamError("timeout", f"no answer from engine {engine_id} in time") from None
        except aiohttp.ServerTimeoutError:
            stack.close()
            raise UpstreamError("timeout", f"connecting to engine {engine_id} timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            stack.close()
            self.engines.note_result(engine_id, False)
            raise UpstreamError("connect", f"cannot reach engine {engine_id}: {exc}") from None
        except BaseException:
            stack.close()
            raise
        try:
            return await self._answer(engine_id, req, resp, stack, deadlines)
        except BaseException:
            resp.close()
            stack.close()
            raise

    async def _answer(self, engine_id: str, req: ProxyRequest, resp: aiohttp.ClientResponse,
                      stack: ExitStack, deadlines: Deadlines) -> UpstreamResponse:
        status = resp.status
        kind = kind_of_status(status)
        if kind in ("saturated", "unavailable"):
            ra = retry_after_of(resp.headers)
            resp.close()
            stack.close()
            raise UpstreamError(kind, f"engine {engine_id} answered HTTP {status}",
                                retry_after=ra, status=status)
        if kind is not None:
            # "This engine cannot": retried elsewhere; its text (tracebacks,
            # paths) stays in its own log.
            resp.close()
            stack.close()
            self.engines.note_result(engine_id, False)
            raise UpstreamError("upstream", f"engine {engine_id} failed (HTTP {status})",
                                status=status)
        self.engines.note_result(engine_id, True)
        hdrs = tuple((k, v) for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS)
        if status >= 400:
            raw = await self._read_all(resp, deadlines, MAX_ERROR_BODY)
            resp.release()
            stack.close()
            return _Buffered(status, hdrs, _error_body(engine_id, status, raw))
        if req.route not in USAGE_ROUTES:
            return _LocalResponse(resp, stack, deadlines)
        ctype = resp.headers.get("Content-Type", "")

        async def count_prompt() -> int | None:
            # Only when the engine gave no counts: the body is parsed then.
            text = prompt_text(req.route, _body_doc(req.body))
            n = await self.engines.count_tokens(engine_id, req.model, text)
            return n if n is not None else estimate_tokens(text)

        if ctype.startswith("text/event-stream"):
            asked = req.usage_asked
            if asked is None:
                asked = b"include_usage" in req.body and wants_usage(_body_doc(req.body))
            return _LocalResponse(resp, stack, deadlines, SseUsage(inject=asked), count_prompt)
        if ctype.startswith("application/json") and (resp.content_length or 0) <= MAX_USAGE_BODY:
            raw = await self._read_all(resp, deadlines, MAX_USAGE_BODY)
            resp.release()
            try:
                body, usage = ensure_body_usage(raw, None, None)
                if usage is not None and usage.counted:
                    prompt = await count_prompt()
                    body, usage = ensure_body_usage(raw, prompt, None)
            finally:
                stack.close()
            return _Buffered(status, hdrs, body, usage)
        return _LocalResponse(resp, stack, deadlines)

    @staticmethod
    async def _read_all(resp: aiohttp.ClientResponse, deadlines: Deadlines, limit: int) -> bytes:
        buf = bytearray()
        try:
            async with asyncio.timeout(deadlines.cap(deadlines.idle)):
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    if len(buf) > limit:
                        raise UpstreamError("upstream", f"engine answer over {limit} bytes")
        except TimeoutError:
            raise UpstreamError("timeout", "engine went silent (idle timeout)") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError("upstream", f"engine broke the response: {exc}") from None
        return bytes(buf)


#: Routes whose answers carry token usage.
USAGE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})


def _body_doc(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
