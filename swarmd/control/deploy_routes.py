"""Control API routes of the deployments (``swarmctl run|stop|ps|logs``).

``POST /v1/deployments`` ``{"source", "name"?, "replicas"?, "everywhere"?, "gpu"?, "ctx"?,
"slots"?}`` pulls on this node and writes the deployment (201, the deployment);
``DELETE /v1/deployments/{model}`` stops it everywhere; ``GET /v1/deployments``
lists them with their placements; ``GET /v1/ps`` has one row per managed engine
in the swarm; ``GET /v1/engines/{id}/logs?offset=N`` returns this node's log of a
managed engine from byte ``offset`` (``{"text", "offset", "size"}``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from swarmd.engines.deployer import Deployer, DeployError

MAX_LOG_CHUNK = 256 * 1024


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                        "param": None, "code": code}}, status=status)


def _read_log(path: Path, offset: int) -> tuple[bytes, int, int]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            if offset > size:  # rotated under us: start over
                offset = 0
            f.seek(offset)
            return f.read(MAX_LOG_CHUNK), offset, size
    except FileNotFoundError:
        return b"", 0, 0


def register(app: web.Application, deployer: Callable[[], Deployer | None],
             prefix: str = "/v1") -> None:
    def need() -> Deployer:
        d = deployer()
        if d is None:
            raise web.HTTPServiceUnavailable(text="deployments are not available on this node")
        return d

    async def create(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            return _error(400, "body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("source"), str):
            return _error(400, '"source" (a model source or a name) is required')
        args: dict[str, Any] = {}
        for k, typ, default in (("replicas", int, 1), ("ctx", int, 4096), ("slots", int, 1)):
            v = body.get(k, default)
            if not isinstance(v, typ) or isinstance(v, bool) or v < (0 if k == "replicas" else 1):
                return _error(400, f"{k!r} must be a positive integer")
            args[k] = v
        everywhere, gpu, name = body.get("everywhere", False), body.get("gpu"), body.get("name")
        kind = body.get("kind", "")
        if not isinstance(everywhere, bool) or gpu not in (None, True, False) or (
                name is not None and not isinstance(name, str)) or not isinstance(kind, str):
            return _error(400, "everywhere and gpu are booleans, name and kind strings")
        args["kind"] = kind
        try:
            doc = await need().deploy(body["source"], name=name, everywhere=everywhere, gpu=gpu,
                                      **args)
        except DeployError as exc:
            return _error(exc.status, str(exc))
        return web.json_response(doc, status=201)

    async def delete(request: web.Request) -> web.Response:
        try:
            return web.json_response(await need().undeploy(request.match_info["model"]))
        except DeployError as exc:
            return _error(exc.status, str(exc))

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"deployments": need().listing()})

    async def ps(request: web.Request) -> web.Response:
        return web.json_response({"engines": need().ps()})

    async def logs(request: web.Request) -> web.Response:
        d = need()
        m = d.supervisor.engines.get(request.match_info["id"])
        if m is None:
            known = ", ".join(d.supervisor.engines) or "none"
            return _error(404, f"no managed engine {request.match_info['id']!r} on this node "
                               f"(here: {known}; `swarmctl ps` says where each runs)",
                          "engine_not_found")
        try:
            offset = max(0, int(request.query.get("offset", "0")))
        except ValueError:
            return _error(400, "offset must be an integer")
        data, offset, size = await asyncio.to_thread(_read_log, m.log_path, offset)
        return web.json_response({"text": data.decode(errors="replace"),
                                  "offset": offset + len(data), "size": size})

    app.router.add_post(f"{prefix}/deployments", create)
    app.router.add_get(f"{prefix}/deployments", listing)
    app.router.add_delete(f"{prefix}/deployments/{{model}}", delete)
    app.router.add_get(f"{prefix}/ps", ps)
    app.router.add_get(f"{prefix}/engines/{{id}}/logs", logs)
