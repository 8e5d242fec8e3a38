"""Control-API routes for the node's model store: list, pull (NDJSON progress), remove.

Theory of operation
-------------------
``register(app, service)`` adds three routes (spec: protocol/control-api.md,
"Model store"):

- ``GET /v1/store``: the store's models (manifest fields, path, last use),
  its usage in bytes and ``max_disk``;
- ``POST /v1/store/pull`` ``{"source": SPEC, "name"?: NAME}``: a stream of
  JSON lines (``application/x-ndjson``), one progress object per line, the
  last ``{"status": "success", "name", "digest", "size", "path"}`` or
  ``{"status": "error", "error": {"message", "type", "code"}}``.  The pull
  runs in a worker thread (blocking I/O, never on the event loop); progress
  crosses back with ``call_soon_threadsafe``.  A client that goes away
  cancels the pull, leaving its partial blobs to resume next time;
- ``POST /v1/store/rm`` ``{"name": NAME}``: removes the model and every blob
  no other model uses; 404 if there is none, 409 if an engine uses it.
  With ``"node": ID-or-name`` it removes it from that node's store instead
  (over the data plane), with ``"everywhere": true`` from every node holding
  it (this one included); the answer then lists ``results``, one per node
  (``node``, ``name``, ``status``, and ``removed`` or ``error``), and its
  status is 200 only if every removal succeeded (else the first failure's).

``service`` is a callable returning the daemon's
:class:`~swarmd.models.service.ModelService` or None (503: no store).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from swarmd.models.spec import SpecError, parse_spec, valid_name

if TYPE_CHECKING:
    from swarmd.models.service import ModelService

ServiceFn = Callable[[], "ModelService | None"]


def _error(status: int, message: str, code: str) -> web.Response:
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}, status=status)


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError):
        return _error(400, "body is not valid JSON", "bad_json")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object", "bad_body")
    return body


class _Routes:
    def __init__(self, service: ServiceFn) -> None:
        self.service = service

    def _svc(self) -> ModelService | web.Response:
        svc = self.service()
        return svc if svc is not None else _error(503, "this daemon has no model store", "no_store")

    async def listing(self, request: web.Request) -> web.Response:
        svc = self._svc()
        if isinstance(svc, web.Response):
            return svc
        return web.json_response(await asyncio.to_thread(svc.listing))

    async def remove(self, request: web.Request) -> web.Response:
        svc = self._svc()
        if isinstance(svc, web.Response):
            return svc
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return _error(400, 'body must be {"name": NAME}', "bad_body")
        node, everywhere = body.get("node"), body.get("everywhere") is True
        if node is None and not everywhere:
            status, doc = await asyncio.to_thread(svc.try_remove, name)
            if status != 200:
                return _error(status, doc["error"], doc["code"])
            return web.json_response({"ok": True, "removed": doc["removed"]})
        peers = svc.peers
        if peers is None:
            return _error(503, "this daemon has no data plane to reach other nodes' stores",
                          "no_dataplane")
        targets: list[tuple[str, str]] = []
        if everywhere:
            if svc.store.find(name) is not None:
                targets.append(("", "this node"))
            targets += peers.holders(name)
            if not targets:
                return _error(404, f"no node holds {name!r}", "model_not_found")
        else:
            found = peers.find_node(node) if isinstance(node, str) else None
            if found is None:
                return _error(404, f"no member {node!r}", "node_not_found")
            targets.append(("", "this node") if found[0] == peers.snapshot().node_id else found)
        results = []
        for node_id, node_name in targets:
            if not node_id:
                status, doc = await asyncio.to_thread(svc.try_remove, name)
            else:
                status, doc = await peers.remove_on(node_id, name)
            results.append({"node": node_id or peers.snapshot().node_id, "name": node_name,
                            "status": status, **({"removed": doc.get("removed")}
                                                 if status == 200 else
                                                 {"error": doc.get("error", "failed")})})
        bad = [r for r in results if r["status"] != 200]
        doc_out: dict[str, Any] = {"ok": not bad, "results": results}
        if bad:
            doc_out["error"] = {"message": "; ".join(f"{r['name']}: {r['error']}" for r in bad),
                                "type": "invalid_request_error", "param": None,
                                "code": "rm_failed"}
        return web.json_response(doc_out, status=bad[0]["status"] if bad else 200)

    async def pull(self, request: web.Request) -> web.StreamResponse:
        svc = self._svc()
        if isinstance(svc, web.Response):
            return svc
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        source, name = body.get("source"), body.get("name")
        if not isinstance(source, str):
            return _error(400, 'body must be {"source": SPEC, "name"?: NAME}', "bad_body")
        if name is not None and (not isinstance(name, str) or not valid_name(name)):
            return _error(400, f"{name!r} is not a valid model name", "bad_name")
        try:
            parse_spec(source)
        except SpecError as exc:
            return _error(400, str(exc), "bad_source")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        cancel = threading.Event()

        def progress(ev: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ev)

        def run() -> None:
            try:
                svc.pull(source, name=name, progress=progress, cancel=cancel)
            except Exception as exc:  # every failure becomes the stream's last line
                code = "no_space" if type(exc).__name__ == "NoSpaceError" else "pull_failed"
                progress({"status": "error", "error": {
                    "message": str(exc) or type(exc).__name__, "type": "pull_error", "code": code}})
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        task = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            while (ev := await queue.get()) is not None:
                await resp.write(json.dumps(ev).encode() + b"\n")
        except ConnectionResetError:  # the client went away: stop, keep what is fetched
            cancel.set()
            await task
            return resp
        finally:
            if not task.done():
                cancel.set()
                await asyncio.shield(task)
        await resp.write_eof()
        return resp


def register(app: web.Application, service: ServiceFn, prefix: str = "/v1") -> None:
    r = _Routes(service)
    app.router.add_get(f"{prefix}/store", r.listing)
    app.router.add_post(f"{prefix}/store/pull", r.pull)
    app.router.add_post(f"{prefix}/store/rm", r.remove)
