"""The OpenAI-compatible HTTP app and its server on ``[api] listen``.

Theory of operation
-------------------
Runs in the daemon's asyncio thread.  Routes:

- ``GET /v1/models`` and ``GET /v1/models/{id}``: the swarm-wide union of
  models served by healthy engines on alive nodes, read from the snapshot
  (:mod:`swarmd.api.catalog`); each object carries ``swarmd.nodes`` and
  ``swarmd.engines``; aliases appear with ``swarmd.alias_of``.
- ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``:
  :class:`swarmd.api.proxy.Proxy`.
- ``GET /health``: liveness (200 while the server answers).
- ``GET /metrics``: Prometheus text (:mod:`swarmd.metrics`), when the
  daemon passes a registry.
- ``GET /ready``: 200 once the node has published a snapshot (the trio side
  is up and membership running), else 503; the body carries counts
  (nodes alive, local and swarm engines, models) and ``joined``.

Unknown paths and methods get OpenAI-style 404/405 errors; so does any
exception a handler did not expect (500, logged), so a client always gets
the error object.  :func:`create_app` needs only the objects listed in
:class:`ApiDeps`; :class:`ApiServer` binds and unbinds it.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from swarmd.api import catalog, http_errors
from swarmd.api.accounting import Accounting, usage_answer
from swarmd.api.auth import PRINCIPAL_KEY, Auth
from swarmd.api.client_apis import register_client_apis
from swarmd.api.errors import ApiError
from swarmd.api.key_service import (
    BudgetService,
    KeyService,
    register_budget_routes,
    register_key_routes,
)
from swarmd.api.proxy import Forwarder, Proxy
from swarmd.api.upstream import LocalEngines, LocalUpstream
from swarmd.config import ApiSection, RoutingSection, parse_hostport
from swarmd.core.routing import Router, RouterConfig
from swarmd.core.snapshot import Snapshot

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from swarmd.metrics import RequestMetrics

log = logging.getLogger("swarmd.api")

PROXY_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


@dataclass
class ApiDeps:
    """What the API needs from the daemon."""

    api: ApiSection
    routing: RoutingSection
    snapshot: Callable[[], Snapshot]  # SnapshotBox.get
    local: LocalEngines | None = None  # this node's engines
    remote: Forwarder | None = None  # forwarding to other nodes (BridgedForwarder)
    router: Router | None = None  # default: one built from `routing`
    session: aiohttp.ClientSession | None = None  # default: created on startup
    registry: CollectorRegistry | None = None  # served at GET /metrics when set
    metrics: RequestMetrics | None = None  # per-request series the proxy observes
    auth: Auth | None = None  # key checks in front of every route (None: none)
    keys: KeyService | None = None  # /v1/keys admin routes
    accounting: Accounting | None = None  # GET /v1/usage
    models: Any = None  # this node's ModelService: Ollama's /api/pull and /api/delete


PROXY_KEY = web.AppKey("proxy", Proxy)
DEPS_KEY = web.AppKey("deps", ApiDeps)


def _router_for(routing: RoutingSection) -> Router:
    return Router(RouterConfig(spill_load=routing.spill_load), random.Random())


@web.middleware
async def _errors(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as err:
        return err.response()
    except web.HTTPException as exc:
        if exc.status == 404:
            return ApiError(404, f"no route {request.path}", code="not_found").response()
        if exc.status == 405:
            return ApiError(405, f"method {request.method} not allowed on {request.path}",
                            code="method_not_allowed").response()
        if exc.status == 413:
            return ApiError(413, "request body too large", code="request_too_large").response()
        raise
    except Exception:
        log.exception("API handler failed", extra={"path": request.path})
        return ApiError(500, "internal error in swarmd", code="internal_error").response()


async def _models(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    objs = catalog.model_objects(deps.snapshot(), deps.routing.aliases)
    return web.json_response({"object": "list", "data": list(objs.values())})


async def _model(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    mid = request.match_info["id"]
    objs = catalog.model_objects(deps.snapshot(), deps.routing.aliases)
    if mid not in objs:
        raise ApiError(404, f"The model `{mid}` does not exist or no node serves it",
                       param="model", code="model_not_found")
    return web.json_response(objs[mid])


async def _metrics(request: web.Request) -> web.Response:
    from swarmd.metrics import metrics_response

    registry = request.app[DEPS_KEY].registry
    assert registry is not None
    return metrics_response(registry)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _ready(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    snap = deps.snapshot()
    engines = list(catalog.engines_of(snap))
    doc = {
        "ready": snap.seq > 0,
        "node_id": snap.node_id,
        "joined": snap.joined,
        "nodes_alive": len(snap.alive()),
        "engines_local": sum(1 for e in engines if e.is_local),
        "engines_local_healthy": sum(1 for e in engines if e.is_local and e.healthy),
        "engines_swarm": len(engines),
        "models": len(catalog.model_objects(snap, {})),
    }
    return web.json_response(doc, status=200 if doc["ready"] else 503)


def create_app(deps: ApiDeps) -> web.Application:
    """The aiohttp application; the client session is opened on startup."""
    middlewares = [_errors] + ([deps.auth.middleware] if deps.auth is not None else [])
    app = web.Application(middlewares=middlewares, client_max_size=deps.api.max_body_bytes)
    app[DEPS_KEY] = deps
    router = deps.router or _router_for(deps.routing)
    deps.router = router
    proxy = Proxy(api=deps.api, routing=deps.routing, snapshot=deps.snapshot, router=router,
                  local=None, remote=deps.remote)
    proxy.metrics = deps.metrics
    app[PROXY_KEY] = proxy

    async def _session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        own = deps.session is None
        session = deps.session or LocalUpstream.new_session()
        if deps.local is not None:
            proxy.local = LocalUpstream(deps.local, session)
        yield
        if own:
            await session.close()

    app.cleanup_ctx.append(_session_ctx)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{id:.+}", _model)
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    if deps.registry is not None:
        app.router.add_get("/metrics", _metrics)
    for path in PROXY_ROUTES:
        app.router.add_post(path, proxy.handle)
    register_client_apis(app, proxy, deps)  # Ollama, Responses, Anthropic (client_apis.py)
    if deps.keys is not None:
        keys = deps.keys
        register_key_routes(app, lambda: keys)  # admin scope (swarmd/api/auth.py)
        budgets = BudgetService(deps.snapshot, keys._write)
        register_budget_routes(app, lambda: budgets)
    if deps.accounting is not None:
        app.router.add_get("/v1/usage", _usage)
    return app


async def _usage(request: web.Request) -> web.Response:
    acct = request.app[DEPS_KEY].accounting
    assert acct is not None
    status, doc = usage_answer(acct, request.query, request.get(PRINCIPAL_KEY))
    return web.json_response(doc, status=status)


class ApiServer:
    """Binds the app on ``api.listen`` (host:port; port 0 picks one)."""

    def __init__(self, deps: ApiDeps) -> None:
        self.deps = deps
        self.app = create_app(deps)
        self._runner: web.AppRunner | None = None
        self.port: int = 0

    async def start(self, listen: str | None = None,
                    ssl_context: ssl.SSLContext | None = None) -> None:
        host, port = parse_hostport(listen or self.deps.api.listen)
        # handler_cancellation: a client that disconnects cancels its handler,
        # which cancels the upstream request (even before the first byte).
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        http_errors.install(self._runner)
        site = web.TCPSite(self._runner, host, port, reuse_address=True,
                           ssl_context=ssl_context, backlog=self.deps.api.backlog)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def proxy(self) -> Proxy:
        return self.app[PROXY_KEY]
