"""Proxying one OpenAI request to an engine somewhere in the swarm.

Theory of operation
-------------------
1. Read the body (413 past ``api.max_body_bytes``), validate it
   (:mod:`swarmd.api.validate`: JSON whatever the Content-Type, types and
   ranges of the common fields, 400 before any engine sees a bad one),
   resolve the alias.
2. Candidates: every engine that lists the model in the current snapshot
   (if none, a model some node stores is started on demand and waited for,
   ``Proxy.on_demand``; else 404 ``model_not_found``) and can serve the route (its
   capabilities; 400 if the model is served only by engines that cannot).
   The router orders them (:mod:`swarmd.core.routing`).
3. Queue: when every candidate is at capacity the request waits in a FIFO
   per model on this node (:mod:`swarmd.api.waitqueue`), up to
   ``routing.queue_timeout`` with at most ``routing.queue_max`` waiting,
   then 429 with Retry-After.  It goes to whichever candidate frees a slot
   first, anywhere in the swarm: a remote engine's gossiped load is
   corrected by this node's own in-flight requests on it (:meth:`_fresh`).
4. Attempts walk down the router's list (at most MAX_ATTEMPTS).  For each:
   open the exchange (local HTTP or remote stream), wait for the head and
   the first body bytes.  Any failure up to that point -- connect error,
   timeout, 429/500/501/503 from the engine, a broken exchange -- costs
   nothing visible, so the next target is tried; every failed attempt is
   logged with engine, node and cause.  The first bytes *commit* the
   attempt (an :class:`Exchange`): no retry happens after.
5. Relay: chunks are written as they come (SSE pass-through is byte-exact,
   plus the usage chunk swarmd adds when the engine sends none).  A failure
   after the commit ends the response: for an SSE stream, an OpenAI error
   event ``data: {"error": {...}}`` is written, then the connection is
   closed without ``data: [DONE]``; for any other body the connection is
   closed mid-body.  Never a hang: every read has the idle and total
   deadlines.
6. If the client goes away, the handler is cancelled (aiohttp
   ``handler_cancellation``) or its write fails; the exchange is closed,
   which cancels the upstream request.  A client closing a finished stream
   is not an error.

When every attempt failed: 504 if any timed out, else 429 if every engine
said it was saturated (after queueing), else 503 if each was saturated or
unavailable, else 502 naming the engines.

Other APIs (Ollama, Responses, Anthropic) translate to an OpenAI route and
call :meth:`Proxy.exchange`, which runs steps 2-4 and hands back the
committed :class:`Exchange`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from swarmd.api import catalog
from swarmd.api.auth import PRINCIPAL_KEY, check_model
from swarmd.api.errors import ApiError
from swarmd.api.exchange import Exchange
from swarmd.api.relay import relay
from swarmd.api.upstream import (
    FORWARDED_HEADERS,
    Deadlines,
    LocalEngines,
    LocalUpstream,
    ProxyRequest,
    UpstreamError,
    UpstreamResponse,
)
from swarmd.api.usage import Ticket, UsageEvent, wants_usage
from swarmd.api.validate import ParsedRequest, parse_doc, parse_request
from swarmd.api.waitqueue import QueueFull, QueueTimeout, WaitQueues
from swarmd.config import ApiSection, RoutingSection
from swarmd.core.error_kinds import KINDS
from swarmd.core.record import ROUTE_CAPABILITY
from swarmd.core.routing import (
    Candidate,
    Decision,
    EngineLoad,
    RequestFeatures,
    Router,
    Target,
    affinity_key,
)
from swarmd.core.snapshot import Snapshot

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



#: Seconds between gossip updates of this node's queue depths (coalesced).
QUEUE_GOSSIP_INTERVAL = 0.5

#: Seconds a remote engine's gossiped load may lag behind this node's own
#: requests on it: the owner polls every 2 s (``[local_engines]
#: poll_interval``) and gossip takes a fraction of a second more.  Within it,
#: load this node may have caused is taken to be this node's own.
LOAD_LAG = 3.0


#: Native request for an engine kind: kind -> (path, body) or None (use OpenAI).
NativeFn = Callable[[str], "tuple[str, bytes] | None"]


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
    causes = "; ".join(dict.fromkeys(e.message for e in errors))
    return ApiError(502, f"the engine failed: {causes}", code="upstream_error")


class _AllSaturated(Exception):
    """Every attempt was refused as saturated: wait in the queue again."""


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
        #: Hears every finished request (usage records, budgets); called on
        #: the API's thread, must not block.
        self.on_usage: Callable[[UsageEvent], None] | None = None
        #: Hears this node's queue depths per model (coalesced); the daemon
        #: gossips them in the node record as ``queued``.
        self.on_queue_depths: Callable[[dict[str, int]], None] | None = None
        #: Rate limits and budgets (:mod:`swarmd.api.limits`): called once the
        #: model is known, before routing; raises ApiError (429) to refuse, or
        #: returns a ticket settled with the real usage when the exchange closes.
        self.admission: Callable[[Mapping[str, Any], ParsedRequest],
                                 Awaitable[Ticket | None]] | None = None
        #: Starts a model the swarm stores but no engine serves
        #: (:mod:`swarmd.engines.on_demand`): True once it is served, False if
        #: nothing stores it (404); raises ApiError (503) if it cannot load.
        self.on_demand: Callable[[str], Awaitable[bool]] | None = None
        self.queues: WaitQueues[Exchange] = WaitQueues(
            timeout=routing.queue_timeout, max_waiting=routing.queue_max,
            on_depth=self._queue_depth, on_wait=self._queue_wait)
        self._depth_pending = False
        #: Remote targets: (gossiped load last seen, our in-flight on it then).
        self._seen: dict[Target, tuple[EngineLoad, int]] = {}
        #: Remote targets: (most of our requests in flight on it lately, until when).
        self._peak: dict[Target, tuple[int, float]] = {}

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
        principal = request.get(PRINCIPAL_KEY) or {}
        model = ""
        try:
            raw = await self._read_body(request)
            parsed = parse_request(route, raw, self.routing.aliases)
            model = parsed.model
            ex = await self._open(parsed, request.headers, rid, None, t0, principal)
            try:
                resp = await relay(request, ex, rid, self.stats.count_error)
                ex.sent_status = resp.status
            finally:
                await ex.aclose()
            status = resp.status
            return resp
        except ApiError as err:
            self.stats.count_error(err.code or str(err.status))
            status = err.status
            self._report_failure(rid, route, model, err.status, t0, principal, err.code or "")
            return err.response({"X-Request-Id": rid})
        except Exception:
            status = 500
            raise
        finally:
            if self.metrics is not None:
                self.metrics.finished(route, status, time.monotonic() - t0)

    async def exchange(self, route: str, body: dict[str, Any], *,
                       headers: Mapping[str, str] | None = None,
                       request_id: str | None = None,
                       native: NativeFn | None = None,
                       principal: Mapping[str, Any] | None = None) -> Exchange:
        """Route an OpenAI request given as a parsed body; the committed
        exchange, or ApiError (see the module docstring).  ``native(kind)``
        may give the (path, body) to send instead to an engine of that kind."""
        t0 = time.monotonic()
        rid = request_id or uuid.uuid4().hex
        self.stats.requests += 1
        model = body.get("model") if isinstance(body.get("model"), str) else ""
        try:
            parsed = parse_doc(route, body, self.routing.aliases)
            ex = await self._open(parsed, headers or {}, rid, native, t0, principal or {})
        except ApiError as err:
            self.stats.count_error(err.code or str(err.status))
            self._report_failure(rid, route, str(model), err.status, t0, principal or {},
                                 err.code or "")
            raise
        return ex

    # -- routing, queueing and attempts ----------------------------------------------

    async def _open(self, p: ParsedRequest, client_headers: Mapping[str, str], rid: str,
                    native: NativeFn | None, t0: float,
                    principal: Mapping[str, Any]) -> Exchange:
        denied = check_model(principal, p.model)
        if denied is not None:
            raise ApiError(403, denied, type="permission_error", param="model",
                           code="model_not_allowed")
        if not catalog.known_model(self.snapshot(), p.model) and (
                self.on_demand is None or not await self.on_demand(p.model)):
            raise ApiError(
                404, f"The model `{p.requested_model}` does not exist or no node serves it",
                param="model", code="model_not_found")
        ticket = await self.admission(principal, p) if self.admission is not None else None
        if ticket is not None and ticket.raw is not None:
            p = dataclasses.replace(p, raw=ticket.raw)
        try:
            ex = await self._open_admitted(p, client_headers, rid, native, t0)
        except BaseException:
            if ticket is not None:
                ticket.release()
            raise
        ex.principal = principal
        ex.ticket = ticket
        return ex

    async def _open_admitted(self, p: ParsedRequest, client_headers: Mapping[str, str],
                             rid: str, native: NativeFn | None, t0: float) -> Exchange:
        api = self.api
        deadlines = Deadlines(api.connect_timeout, api.first_byte_timeout, api.idle_timeout,
                              t0 + api.request_timeout)
        # The body was parsed as JSON whatever the client's Content-Type said.
        headers = (("Content-Type", "application/json"),) + tuple(
            (k, client_headers[k]) for k in FORWARDED_HEADERS
            if k in client_headers and k != "content-type")
        headers += (("X-Request-Id", rid),) if "x-request-id" not in client_headers else ()
        req = ProxyRequest(route=p.route, body=p.raw, model=p.model, headers=headers,
                           request_id=rid, usage_asked=wants_usage(p.body))
        feats = RequestFeatures(p.model, affinity_key(p.route, p.body,
                                                      self.routing.affinity_messages))
        capability = ROUTE_CAPABILITY.get(p.route)
        errors: list[UpstreamError] = []  # over every round, queued or not

        async def attempt() -> Exchange | None:
            decided = self._decide(p, feats, capability)
            if decided is None:
                return None
            decision, kinds = decided
            try:
                return await self._attempts(p, decision, kinds, req, deadlines, native, t0,
                                            errors)
            except _AllSaturated:
                return None

        t_queue = time.monotonic()
        try:
            ex = await self.queues.dispatch(p.model, attempt)
            ex.queue_wait = max(0.0, ex.started - t_queue)
            ex.request_id = rid
            ex.received = t0
            return ex
        except QueueFull:
            raise ApiError(429, f"the queue for `{p.requested_model}` is full "
                                f"({self.routing.queue_max} waiting)",
                           code="queue_full", retry_after=5.0) from None
        except QueueTimeout as exc:
            if errors and any(e.kind != "saturated" for e in errors):
                raise _final_error(errors) from None
            raise ApiError(429, f"every engine serving `{p.requested_model}` stayed busy; "
                                f"waited {exc.waited:.0f} s in the queue",
                           code="queue_timeout", retry_after=5.0) from None

    def _decide(self, p: ParsedRequest, feats: RequestFeatures,
                capability: str | None) -> tuple[Decision, dict[Target, str]] | None:
        """The router's decision and each candidate's engine kind, or None
        when every candidate is full (queue)."""
        snap = self.snapshot()
        remote_ok = self.remote is not None
        cands = catalog.candidates(snap, p.model, remote_ok=remote_ok, capability=capability)
        if not cands:
            others = catalog.candidates(snap, p.model, remote_ok=remote_ok)
            if others:
                raise ApiError(400, f"The model `{p.requested_model}` is not served for "
                                    f"{p.route} by any engine (no engine of it has the "
                                    f"'{capability}' capability)",
                               param="model", code="model_not_supported")
            raise ApiError(503, "no healthy engine serves this model",
                           code="no_healthy_engine", retry_after=5.0)
        engines = self.local.engines if self.local is not None else None
        cands = [self._fresh(c, engines) for c in cands]
        decision = self.router.choose(feats, cands, time.monotonic())
        if decision.status == "saturated":
            return None
        if decision.status != "ok":
            raise ApiError(503, "no healthy engine serves this model",
                           code="no_healthy_engine",
                           retry_after=decision.retry_after or 5.0)
        return decision, {c.target: c.kind for c in cands}

    async def _attempts(self, p: ParsedRequest, decision: Decision, kinds: dict[Target, str],
                        req: ProxyRequest, deadlines: Deadlines, native: NativeFn | None,
                        t0: float, errors: list[UpstreamError]) -> Exchange:
        """Try the decision's targets in order.  ``errors`` holds the failed
        attempts of earlier rounds too: a request makes at most MAX_ATTEMPTS
        failed attempts in all.  Raises _AllSaturated to wait in the queue
        again when the failures were "not now" ones and full candidates
        (left out of the decision) may free up."""
        for target in decision.targets:
            if len(errors) >= MAX_ATTEMPTS:
                break
            if deadlines.left() <= 0:
                errors.append(UpstreamError("timeout", "request deadline passed"))
                break
            attempt = len(errors)
            if attempt:
                self.stats.retries += 1
            kind = kinds.get(target, "")
            treq = req
            if native is not None:
                nat = native(kind)
                if nat is not None:
                    treq = replace(req, route=nat[0], body=nat[1], usage_asked=None)
            started = time.monotonic()
            self.router.start(target, started)
            if target.node_id != self.snapshot().node_id:
                self._note_peak(target, started)
            up: UpstreamResponse | None = None
            try:
                up = await self._open_target(target, treq, deadlines)
                first = await up.read()
            except UpstreamError as exc:
                self.router.finish(target)
                if up is not None:
                    await up.aclose()
                self._note_failure(target, exc)
                errors.append(exc)
                log.warning("attempt %d for %s on node %s engine %s failed (%s): %s",
                            attempt + 1, p.model, target.node_id[-8:], target.engine_id,
                            exc.kind, exc.message)
                continue
            except BaseException:
                self.router.finish(target)
                if up is not None:
                    await up.aclose()
                self.queues.notify(p.model)
                raise
            if self.metrics is not None:
                self.metrics.first_byte(p.route, time.monotonic() - t0)
            return Exchange(self, target, kind, treq.route, p.model, up, first, started)
        if errors and all(e.kind == "saturated" for e in errors):
            raise _AllSaturated()
        if (decision.full and len(errors) < MAX_ATTEMPTS
                and "timeout" not in {e.kind for e in errors} and deadlines.left() > 0):
            raise _AllSaturated()  # others were full: the queue tries again
        raise _final_error(errors)

    def _fresh(self, c: Candidate, engines: LocalEngines | None) -> Candidate:
        """A candidate with its load as of now, not as of its last poll or gossip.

        Local: the engine manager's polled load corrected by in-flight counts.
        Remote: the gossiped outstanding figure minus this node's requests on
        it -- when that figure was first seen, or at most in the last
        LOAD_LAG seconds, since the figure may be that old -- plus this
        node's requests now; so a slot this node frees is free at once,
        without waiting for the owner's next record.  Over-counting others'
        requests would leave a free engine idle; under-counting is safe,
        since the owner's gate holds an engine to its capacity.
        """
        if c.is_local:
            cur = engines.current_load(c.target.engine_id) if engines is not None else None
            return c if cur is None else replace(c, load=cur)
        load = c.load
        ours = self.router.inflight(c.target)
        seen = self._seen.get(c.target)
        if seen is None or seen[0] != load:
            if len(self._seen) > 4096:
                self._seen.clear()
            seen = self._seen[c.target] = (load, ours)
        if load.running is None and load.waiting is None:
            return c
        mine = seen[1]
        peak = self._peak.get(c.target)
        if peak is not None and peak[1] > time.monotonic():
            mine = max(mine, peak[0])
        others = max(0, (load.running or 0) + (load.waiting or 0) - mine)
        return replace(c, load=replace(load, running=ours + others, waiting=0))

    def _note_peak(self, target: Target, now: float) -> None:
        n = self.router.inflight(target)
        old = self._peak.get(target)
        if old is not None and old[1] > now:
            n = max(n, old[0])
        if len(self._peak) > 4096:
            self._peak.clear()
        self._peak[target] = (n, now + LOAD_LAG)

    async def _open_target(self, target: Target, req: ProxyRequest,
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

    def exchange_closed(self, ex: Exchange) -> None:
        """An Exchange was closed: book its outcome."""
        self.router.finish(ex.target)
        if ex.completed:
            now = time.monotonic()
            self.router.observe(ex.target, now - ex.started, True, now)
        self.queues.notify(ex.model)
        self._report(ex)

    def note_failure(self, target: Target, exc: UpstreamError) -> None:
        self._note_failure(target, exc)

    def _note_failure(self, target: Target, exc: UpstreamError) -> None:
        now = time.monotonic()
        kind = KINDS.get(exc.kind)
        if kind is not None and kind.refuse_s is not None:
            self.router.refuse(target, now + (exc.retry_after or kind.refuse_s))
        elif exc.kind != "cancelled":
            self.router.observe(target, 0.0, False, now)

    # -- usage events ------------------------------------------------------------------------

    def _report(self, ex: Exchange) -> None:
        u = ex.usage
        if ex.ticket is not None:
            ticket, ex.ticket = ex.ticket, None
            try:
                ticket.settle(u.prompt_tokens if u else 0, u.completion_tokens if u else 0,
                              u is not None)
            except Exception:
                log.exception("settling a request's limits failed")
        if self.on_usage is None:
            return
        now = time.monotonic()
        status = ex.sent_status if ex.sent_status is not None else (
            ex.status if ex.completed else 499)
        ev = UsageEvent(
            request_id=ex.request_id, route=ex.route, model=ex.model, status=status,
            node_id=ex.node_id, engine_id=ex.engine_id,
            prompt_tokens=u.prompt_tokens if u else 0,
            completion_tokens=u.completion_tokens if u else 0,
            counted=u.counted if u else False, latency_s=now - ex.received,
            ttft_s=(ex.first_at - ex.received) if ex.first_at is not None else None,
            queue_s=ex.queue_wait, principal=ex.principal)
        self._emit(ev)

    def _report_failure(self, rid: str, route: str, model: str, status: int, t0: float,
                        principal: Mapping[str, Any], code: str = "") -> None:
        if self.on_usage is not None:
            self._emit(UsageEvent(request_id=rid, route=route, model=model, status=status,
                                  latency_s=time.monotonic() - t0, principal=principal,
                                  error_code=code))

    def _emit(self, ev: UsageEvent) -> None:
        assert self.on_usage is not None
        try:
            self.on_usage(ev)
        except Exception:
            log.exception("usage callback failed")

    # -- queue depth: metrics and gossip --------------------------------------------------

    def _queue_depth(self, model: str, depth: int) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth(model, depth)
        if self.on_queue_depths is None or self._depth_pending:
            return
        self._depth_pending = True
        try:
            asyncio.get_running_loop().call_later(QUEUE_GOSSIP_INTERVAL, self._flush_depths)
        except RuntimeError:
            self._depth_pending = False

    def _flush_depths(self) -> None:
        self._depth_pending = False
        if self.on_queue_depths is not None:
            try:
                self.on_queue_depths(self.queues.depths())
            except Exception:
                log.exception("queue depth callback failed")

    def _queue_wait(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.queue_wait(seconds)

    # -- relaying the answer ---------------------------------------------------------------
