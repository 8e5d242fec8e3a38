"""Proxying one OpenAI request to an engine somewhere in the swarm.

Theory of operation
-------------------
1. Read the body (413 past ``api.max_body_bytes``), validate it
   (:mod:`swarmd.api.validate`), resolve the alias.
2. Candidates: every engine that lists the model in the current snapshot
   (404 ``model_not_found`` if none).  The router orders them
   (:mod:`swarmd.core.routing`); if none is usable the answer is 503
   (no healthy engine) or 429 (all saturated), each with Retry-After.
3. Attempts walk down the router's list (at most MAX_ATTEMPTS).  For each:
   open the exchange (local HTTP or remote stream), wait for the head and
   the first body bytes.  Any failure up to that point -- connect error,
   timeout, 429/503 from the engine, a broken exchange -- costs nothing
   visible, so the next target is tried.  The first bytes *commit* the
   attempt: head and bytes go to the client and no retry happens after.
4. Relay: chunks are written as they come (SSE pass-through is byte-exact;
   the engine's Content-Length and Content-Encoding are kept).  A failure
   after the commit ends the response: for an SSE stream, an OpenAI error
   event ``data: {"error": {...}}`` is written, then the connection is
   closed without ``data: [DONE]`` (the openai SDK raises APIError on such
   an event); for any other body the connection is closed mid-body, which
   clients report as an incomplete response.  Never a hang: every read has
   the idle and total deadlines.
5. If the client goes away, the handler is cancelled (aiohttp
   ``handler_cancellation``) or its write fails; the exchange is closed,
   which cancels the upstream request (local: the engine connection is
   dropped; remote: a Cancel frame and a stream reset).

When every attempt failed: 504 if any timed out, else 429 if every engine
said it was saturated, else 503 if each was saturated or unavailable, else
502.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from swarmd.api import catalog
from swarmd.api.errors import ApiError, sse_error_event
from swarmd.api.upstream import (
    FORWARDED_HEADERS,
    Deadlines,
    LocalEngines,
    LocalUpstream,
    ProxyRequest,
    UpstreamError,
    UpstreamResponse,
)
from swarmd.api.validate import ParsedRequest, parse_request
from swarmd.config import ApiSection, RoutingSection
from swarmd.core.routing import Candidate, RequestFeatures, Router, Target, affinity_key
from swarmd.runtime.snapshot import Snapshot

if TYPE_CHECKING:
    from swarmd.metrics import RequestMetrics

log = logging.getLogger("swarmd.api")

#: Most targets tried for one request.
MAX_ATTEMPTS = 3


class Forwarder(Protocol):
    """Opens an exchange with an engine on another node (asyncio side)."""

    async def open(self, node_id: str, engine_id: str, req: ProxyRequest,
                   deadlines: Deadlines) -> UpstreamResponse: ...


@dataclass
class ProxyStats:
    requests: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


def _final_error(errors: list[UpstreamError]) -> ApiError:
    kinds = {e.kind for e in errors}
    ras = [e.retry_after for e in errors if e.retry_after is not None]
    ra = min(ras) if ras else None
    last = errors[-1].message if errors else "no engine could be tried"
    if "timeout" in kinds:
        return ApiError(504, f"the engine did not answer in time ({last})",
                        code="upstream_timeout")
    if kinds == {"saturated"}:
        return ApiError(429, "every engine serving this model is saturated",
                        code="engines_saturated", retry_after=ra or 1.0)
    if kinds <= {"saturated", "unavailable"}:
        return ApiError(503, "no engine serving this model is available",
                        code="no_healthy_engine", retry_after=ra or 5.0)
    return ApiError(502, f"the engine failed: {last}", code="upstream_error")


class Proxy:
    def __init__(self, *, api: ApiSection, routing: RoutingSection,
                 snapshot: Callable[[], Snapshot], router: Router,
                 local: LocalUpstream | None, remote: Forwarder | None) -> None:
        self.api = api
        self.routing = routing
        self.snapshot = snapshot
        self.router = router
        self.local = local
        self.remote = remote
        self.stats = ProxyStats()
        #: Per-request Prometheus series (swarmd.metrics); None: not observed.
        self.metrics: RequestMetrics | None = None

    # -- request intake ------------------------------------------------------------

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.api.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"request body exceeds {limit} bytes",
                           code="request_too_large")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"request body exceeds {limit} bytes",
                           code="request_too_large") from None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = request.path
        rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        self.stats.requests += 1
        t0 = time.monotonic()
        status = 499  # the client went away (nginx's convention)
        try:
            raw = await self._read_body(request)
            parsed = parse_request(route, raw, self.routing.aliases)
            resp = await self._serve(request, parsed, rid, t0)
            status = resp.status
            return resp
        except ApiError as err:
            self.stats.count_error(err.code or str(err.status))
            status = err.status
            return err.response({"X-Request-Id": rid})
        except Exception:
            status = 500
            raise
        finally:
            if self.metrics is not None:
                self.metrics.finished(route, status, time.monotonic() - t0)

    # -- routing and attempts ----------------------------------------------------------

    async def _serve(self, request: web.Request, p: ParsedRequest,
                     rid: str, t0: float) -> web.StreamResponse:
        snap = self.snapshot()
        if not catalog.known_model(snap, p.model):
            raise ApiError(
                404, f"The model `{p.requested_model}` does not exist or no node serves it",
                param="model", code="model_not_found")
        cands = catalog.candidates(snap, p.model, remote_ok=self.remote is not None)
        if self.local is not None:
            engines = self.local.engines
            cands = [self._fresh(c, engines) for c in cands]
        feats = RequestFeatures(p.model, affinity_key(p.route, p.body,
                                                      self.routing.affinity_messages))
        decision = self.router.choose(feats, cands, time.monotonic())
        if decision.status == "saturated":
            raise ApiError(429, "every engine serving this model is saturated",
                           code="engines_saturated", retry_after=decision.retry_after)
        if decision.status != "ok":
            raise ApiError(503, "no healthy engine serves this model",
                           code="no_healthy_engine",
                           retry_after=decision.retry_after or 5.0)
        api = self.api
        deadlines = Deadlines(api.connect_timeout, api.first_byte_timeout, api.idle_timeout,
                              time.monotonic() + api.request_timeout)
        headers = tuple((k, request.headers[k]) for k in FORWARDED_HEADERS
                        if k in request.headers)
        headers += (("X-Request-Id", rid),) if "x-request-id" not in request.headers else ()
        req = ProxyRequest(route=p.route, body=p.raw, model=p.model, headers=headers,
                           request_id=rid)
        errors: list[UpstreamError] = []
        for attempt, target in enumerate(decision.targets[:MAX_ATTEMPTS]):
            if deadlines.left() <= 0:
                errors.append(UpstreamError("timeout", "request deadline passed"))
                break
            if attempt:
                self.stats.retries += 1
            started = time.monotonic()
            self.router.start(target, started)
            up: UpstreamResponse | None = None
            try:
                up = await self._open(target, req, deadlines)
                first = await up.read()
            except UpstreamError as exc:
                self.router.finish(target)
                if up is not None:
                    await up.aclose()
                self._note_failure(target, exc)
                errors.append(exc)
                log.info("attempt failed", extra={"target": target.key, "kind": exc.kind,
                                                  "error": exc.message})
                continue
            except BaseException:
                self.router.finish(target)
                if up is not None:
                    await up.aclose()
                raise
            if self.metrics is not None:
                self.metrics.first_byte(p.route, time.monotonic() - t0)
            try:
                return await self._relay(request, up, first, target, started, rid)
            finally:
                self.router.finish(target)
                await up.aclose()
        err = _final_error(errors)
        raise err

    @staticmethod
    def _fresh(c: Candidate, engines: LocalEngines) -> Candidate:
        """A local engine with its load as of now, not as of its last poll."""
        cur = engines.current_load(c.target.engine_id) if c.is_local else None
        return c if cur is None else replace(c, load=cur)

    async def _open(self, target: Target, req: ProxyRequest,
                    deadlines: Deadlines) -> UpstreamResponse:
        if target.node_id == self.snapshot().node_id:
            return await self.open_local(target.engine_id, req, deadlines)
        if self.remote is None:
            raise UpstreamError("unavailable", "forwarding to other nodes is off")
        return await self.remote.open(target.node_id, target.engine_id, req, deadlines)

    async def open_local(self, engine_id: str, req: ProxyRequest,
                         deadlines: Deadlines) -> UpstreamResponse:
        """A request on one of this node's engines (the forward server's entry)."""
        if self.local is None:
            raise UpstreamError("unavailable", "no local engines on this node")
        return await self.local.open(engine_id, req, deadlines)

    def _note_failure(self, target: Target, exc: UpstreamError) -> None:
        now = time.monotonic()
        if exc.kind == "saturated":
            self.router.refuse(target, now + (exc.retry_after or 1.0))
        elif exc.kind == "unavailable":
            self.router.refuse(target, now + (exc.retry_after or 5.0))
        elif exc.kind != "cancelled":
            self.router.observe(target, 0.0, False, now)

    # -- relaying the answer ---------------------------------------------------------------

    async def _relay(self, request: web.Request, up: UpstreamResponse, first: bytes,
                     target: Target, started: float, rid: str) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status)
        for k, v in up.headers:
            resp.headers.add(k, v)
        resp.headers["X-Request-Id"] = rid
        resp.headers["X-Swarmd-Node"] = target.node_id
        resp.headers["X-Swarmd-Engine"] = target.engine_id
        ctype = resp.headers.get("Content-Type", "")
        sse = ctype.startswith("text/event-stream")
        await resp.prepare(request)
        chunk = first
        try:
            while chunk:
                await resp.write(chunk)
                chunk = await up.read()
        except UpstreamError as exc:
            self._note_failure(target, exc)
            code = "upstream_timeout" if exc.kind == "timeout" else "upstream_error"
            self.stats.count_error("midstream_" + code)
            log.warning("engine failed mid-response",
                        extra={"target": target.key, "kind": exc.kind, "error": exc.message})
            if sse:
                err = ApiError(504 if exc.kind == "timeout" else 502,
                               f"the engine failed mid-stream: {exc.message}", code=code)
                try:
                    await resp.write(sse_error_event(err))
                except ConnectionError:
                    pass
            _close_connection(request)
            return resp
        except (ConnectionError, asyncio.CancelledError):
            # The client went away: closing `up` (caller) cancels the upstream.
            raise
        self.router.observe(target, time.monotonic() - started, True, time.monotonic())
        await resp.write_eof()
        return resp


def _close_connection(request: web.Request) -> None:
    """End the HTTP exchange abruptly (flushes what was written, then closes)."""
    transport = request.transport
    if transport is not None:
        transport.close()
