"""The local control API: HTTP with JSON bodies over a unix socket.

Theory of operation
-------------------
``swarmctl`` talks to the daemon through this server (spec:
protocol/control-api.md).  It runs on the daemon's asyncio thread and answers
from a :class:`ControlProvider`, which reads the latest published snapshot, so
reads never cross into the trio thread.

Access control is the file system: the socket is created mode 0600 inside a
directory created 0700, so only the daemon's user (and root) can connect.  The
socket is bound and chmod-ed *before* ``listen()``, so there is no window in
which another user could connect.

Start-up is careful with an existing path: if something answers on it another
swarmd is running and we refuse (:class:`~swarmd.config.ConfigError`); if
nothing answers it is a stale socket left by a crash and we remove it; a path
that is not a socket is never removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from swarmd.config import ConfigError
from swarmd.core.views import ModelsDoc, StatusDoc

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("swarmd.control")

API_PREFIX = "/v1"
LEAVE_WAIT_S = 1.0  # how long POST /v1/leave waits for the provider before answering


class ControlProvider(Protocol):
    """The control socket's view of the daemon (documents: :mod:`swarmd.core.views`)."""

    def status(self) -> StatusDoc: ...

    async def leave(self) -> None: ...

    def join_line(self) -> str: ...

    def models(self) -> ModelsDoc: ...

    async def drain(self, on: bool) -> None: ...


def error_response(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status)


_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error"}


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        resp: web.StreamResponse = await handler(request)
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(
            exc.status,
            exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason,
            _TYPES.get(exc.status, "invalid_request_error"),
            exc.reason.lower().replace(" ", "_"),
        )
    except Exception as exc:
        log.exception("control request %s %s failed", request.method, request.path)
        return error_response(500, f"{type(exc).__name__}: {exc}", "server_error", "internal")


class ControlServer:
    """A running control server; :meth:`stop` closes it and removes the socket."""

    def __init__(self, path: Path, runner: web.AppRunner, inode: tuple[int, int]) -> None:
        self.path = path
        self._runner = runner
        self._inode = inode

    async def stop(self) -> None:
        await self._runner.cleanup()
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)


def _log_late_failure(task: asyncio.Task[None]) -> None:
    """A leave that fails after we answered: the caller is gone, so log it."""
    if not task.cancelled() and task.exception() is not None:
        log.error("leave failed after the reply was sent", exc_info=task.exception())


class _Handlers:
    def __init__(self, provider: ControlProvider, registry: CollectorRegistry | None) -> None:
        self.provider = provider
        self.registry = registry
        self._tasks: set[asyncio.Task[None]] = set()

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.provider.status())

    async def nodes(self, request: web.Request) -> web.Response:
        return web.json_response({"nodes": self.provider.status()["nodes"]})

    async def join(self, request: web.Request) -> web.Response:
        return web.json_response({"join": self.provider.join_line()})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(self.provider.models())

    async def leave(self, request: web.Request) -> web.Response:
        # Leaving ends with the daemon (and this server) stopping: answer as
        # soon as the leave is under way, but report an immediate failure.
        task = asyncio.ensure_future(self.provider.leave())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        done, _ = await asyncio.wait({task}, timeout=LEAVE_WAIT_S)
        if done:
            task.result()  # raises into the middleware on failure
        else:
            task.add_done_callback(_log_late_failure)
        return web.json_response({"ok": True, "leaving": True})

    async def drain(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError):
            return error_response(400, "body is not valid JSON", "invalid_request_error", "bad_json")
        if not isinstance(body, dict) or not isinstance(body.get("on"), bool):
            return error_response(
                400, 'body must be {"on": true|false}', "invalid_request_error", "bad_body"
            )
        await self.provider.drain(body["on"])
        return web.json_response({"ok": True, "draining": body["on"]})

    async def usage(self, request: web.Request) -> web.Response:
        from swarmd.api.accounting import usage_answer

        acct = getattr(self.provider, "accounting", None)
        if acct is None:
            return error_response(503, "usage is not available on this node yet",
                                  "server_error", "unavailable")
        status, doc = usage_answer(acct, request.query, None)
        return web.json_response(doc, status=status)

    async def engines(self, request: web.Request) -> web.Response:
        mgr = getattr(self.provider, "engine_manager", None)
        if mgr is None:
            return error_response(503, "engines are not available on this node yet",
                                  "server_error", "unavailable")
        rows = [{"id": e.id, "kind": e.kind, "url": e.url, "healthy": e.healthy,
                 "models": list(e.models), "error": e.error} for e in mgr.engines()]
        return web.json_response({"engines": rows})

    async def engine_test(self, request: web.Request) -> web.Response:
        from swarmd.engines.engine_test import check_engine

        mgr = getattr(self.provider, "engine_manager", None)
        if mgr is None:
            return error_response(503, "engines are not available on this node yet",
                                  "server_error", "unavailable")
        eid = request.match_info["id"]
        try:
            engine = mgr.engine(eid)
        except KeyError:
            known = ", ".join(e.id for e in mgr.engines()) or "none"
            return error_response(404, f"no engine {eid!r} on this node (engines: {known})",
                                  "not_found_error", "engine_not_found")
        chat = request.query.get("chat") in ("1", "true")
        return web.json_response(await check_engine(engine, mgr.http, chat=chat))

    async def metrics(self, request: web.Request) -> web.Response:
        from swarmd.metrics import metrics_response

        assert self.registry is not None
        return metrics_response(self.registry)


def build_app(provider: ControlProvider, registry: CollectorRegistry | None = None) -> web.Application:
    h = _Handlers(provider, registry)
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app.router.add_get(f"{API_PREFIX}/status", h.status)
    app.router.add_get(f"{API_PREFIX}/nodes", h.nodes)
    app.router.add_post(f"{API_PREFIX}/leave", h.leave)
    app.router.add_get(f"{API_PREFIX}/join", h.join)
    app.router.add_get(f"{API_PREFIX}/models", h.models)
    app.router.add_post(f"{API_PREFIX}/drain", h.drain)
    from swarmd.control import models_routes  # model store routes (a provider's model_service)

    models_routes.register(app, lambda: getattr(provider, "model_service", None), API_PREFIX)
    from swarmd.api.key_service import register_key_routes  # a provider's key_service

    register_key_routes(app, lambda: getattr(provider, "key_service", None), API_PREFIX)
    from swarmd.api.key_service import register_budget_routes

    register_budget_routes(app, lambda: getattr(provider, "budget_service", None), API_PREFIX)
    app.router.add_get(f"{API_PREFIX}/usage", h.usage)
    from swarmd.control import deploy_routes  # a provider's deployer

    deploy_routes.register(app, lambda: getattr(provider, "deployer", None), API_PREFIX)
    app.router.add_get(f"{API_PREFIX}/engines", h.engines)
    app.router.add_post(f"{API_PREFIX}/engines/{{id}}/test", h.engine_test)
    if registry is not None:
        app.router.add_get("/metrics", h.metrics)
    return app


def _someone_listens(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise ConfigError("control.socket", f"cannot probe {path}: {exc}") from None
    finally:
        s.close()
    return True


def _prepare_path(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise ConfigError("control.socket", f"cannot create {parent}: {exc}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError("control.socket", f"{path} exists and is not a socket")
    if _someone_listens(path):
        raise ConfigError("control.socket", f"another swarmd is running on {path}")
    log.info("removing stale control socket %s", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _bind(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)  # before listen(): nobody can connect in between
    except OSError as exc:
        sock.close()
        raise ConfigError("control.socket", f"cannot bind {path}: {exc}") from None
    sock.setblocking(False)
    return sock


async def start_control_server(
    path: Path,
    provider: ControlProvider,
    registry: CollectorRegistry | None = None,
) -> ControlServer:
    """Bind ``path`` (mode 0600) and serve the control API until ``stop()``."""
    path = Path(path)
    _prepare_path(path)
    sock = _bind(path)
    st = os.lstat(path)
    runner = web.AppRunner(build_app(provider, registry), access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    log.info("control API on %s", path)
    return ControlServer(path, runner, (st.st_dev, st.st_ino))
