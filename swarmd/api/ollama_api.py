"""Ollama's native API on the API port, and on ``[api] ollama_listen`` when set.

Theory of operation
-------------------
Routes (Ollama's ``server/routes.go`` names): ``GET``/``HEAD /`` (``Ollama is
running``), ``GET /api/version``, ``GET /api/tags`` (the swarm's models),
``GET /api/ps`` (models on healthy engines, swarm-wide), ``POST /api/show``,
``POST /api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``;
``POST /api/pull`` and ``DELETE /api/delete`` act on this node's model
store (``deps.models``; admin scope): a pull of a name the swarm holds comes
from peers, any other name is ``ollama:NAME`` from the registry, and the
progress is Ollama's NDJSON lines (``pulling manifest``, ``pulling <digest>``
with ``total``/``completed``, ``verifying sha256 digest``, ``writing
manifest``, ``success``; one object with ``"stream": false``).
``/api/push``, ``/api/copy``, ``/api/create`` (and pull/delete on a node
without a store) answer 501 with an Ollama error saying so.

Generation and embedding requests go through ``Proxy.exchange`` with the
OpenAI body from :mod:`swarmd.api.translate.ollama`, plus a ``native``
alternative: when the router picks an Ollama engine, the client's own body
goes to that engine's ``/api/...`` path and its answer is relayed unchanged
(so ``num_ctx``, ``keep_alive`` and the rest keep their meaning); any other
engine gets the OpenAI request and its answer is mapped back with Ollama's
final counts and durations.  Errors are ``{"error": "..."}``.

:class:`OllamaServer` serves only these routes on a second listener (Ollama
clients that cannot be given a port assume 11434); it shares the API's proxy
and dependencies, and its key check (``deps.auth``) when the API has one.

``GET /``, ``/api/version``, ``/api/tags`` and ``/api/ps`` carry
``X-Swarmd: 1`` (:data:`SWARMD_MARK`): the Ollama engine plugin's probe and
health check see it and refuse a swarmd node as an "Ollama" engine, which
would send requests back into the swarm (the self-loop guard).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

from aiohttp import web

from swarmd.api import catalog
from swarmd.api.client_common import (
    ClientError,
    Exchanger,
    StreamTranslator,
    answer_json,
    clock,
    engine_error,
    open_exchange,
    passthrough,
    read_all,
    read_body,
    relay_stream,
    request_id,
    routed_headers,
)
from swarmd.api.translate import ollama as tr
from swarmd.api.translate.common import (
    TranslateError,
    answer_of,
    dumps,
    require_model,
    require_object,
)
from swarmd.config import parse_hostport

log = logging.getLogger("swarmd.api")

#: The Ollama API version whose routes and fields this module implements.
OLLAMA_VERSION = "0.9.0"
#: Engine kinds that speak Ollama's native API (they get the client's body as is).
NATIVE_KINDS = frozenset({"ollama"})
#: Engine kinds whose models are GGUF files (``details.format``).
GGUF_KINDS = frozenset({"ollama", "llamacpp"})
#: Marks an answer as swarmd's, not Ollama's (plugins/swarmd_engines/ollama.py reads it).
SWARMD_MARK = {"X-Swarmd": "1"}
NOT_MANAGED = ("swarmd does not {what} models through this API (pull and delete work on "
               "nodes with a model store; push, copy and create are not supported): "
               "manage the model on the engine's own host (e.g. `ollama create`), and "
               "every node serves it once its engine lists it")


def error_response(err: ClientError, model: str | None = None) -> web.Response:
    message = err.message
    if err.code == "model_not_found" and model:
        message = f'model "{model}" not found, try pulling it first'
    hdrs = err.headers()
    return web.Response(status=err.status, body=dumps(tr.error_body(message)),
                        content_type="application/json", headers=hdrs)


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=dumps(doc), content_type="application/json",
                        headers=headers)


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


class OllamaHandlers:
    def __init__(self, proxy: Exchanger, deps: Any) -> None:
        self.proxy = proxy
        self.deps = deps

    # -- listings ----------------------------------------------------------------------

    def _models(self) -> dict[str, list[catalog.EngineView]]:
        by_model: dict[str, list[catalog.EngineView]] = {}
        for e in catalog.engines_of(self.deps.snapshot()):
            if e.healthy:
                for m in e.models:
                    by_model.setdefault(m, []).append(e)
        for alias, target in self.deps.routing.aliases.items():
            if target in by_model and alias not in by_model:
                by_model[alias] = by_model[target]
        return dict(sorted(by_model.items()))

    @staticmethod
    def _entry(name: str, engines: list[catalog.EngineView]) -> dict[str, Any]:
        kinds = {e.kind for e in engines}
        return {
            "name": name, "model": name, "modified_at": tr.iso_time(0), "size": 0,
            "digest": _digest(name),
            "details": {"parent_model": "",
                        "format": "gguf" if kinds and kinds <= GGUF_KINDS else "",
                        "family": "", "families": None, "parameter_size": "",
                        "quantization_level": ""},
            "swarmd": {"nodes": sorted({e.node_id for e in engines}),
                       "kinds": sorted(kinds)},
        }

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running", headers=SWARMD_MARK)

    async def version(self, request: web.Request) -> web.Response:
        return _json({"version": OLLAMA_VERSION}, headers=SWARMD_MARK)

    async def tags(self, request: web.Request) -> web.Response:
        return _json({"models": [self._entry(n, es) for n, es in self._models().items()]},
                     headers=SWARMD_MARK)

    async def ps(self, request: web.Request) -> web.Response:
        out = []
        for name, engines in self._models().items():
            entry = self._entry(name, engines)
            entry.update({"size_vram": 0, "context_length": 0})
            out.append(entry)
        return _json({"models": out}, headers=SWARMD_MARK)

    async def show(self, request: web.Request) -> web.Response:
        name = None
        try:
            body = require_object(await read_body(request, self.deps.api.max_body_bytes))
            name = body.get("model") or body.get("name")
            if not isinstance(name, str) or not name:
                raise ClientError(400, "'model' is required", "model")
            engines = self._models().get(name)
            if engines is None:
                raise ClientError(404, "no such model", "model", "model_not_found")
        except TranslateError as exc:
            return error_response(ClientError.of(exc))
        except ClientError as err:
            return error_response(err, name)
        entry = self._entry(name, engines)
        target = self.deps.routing.aliases.get(name, name)
        caps: set[str] = set()
        for e in engines:
            caps.update(e.caps_of(target) or catalog.ALL_CAPABILITIES)
        ollama_caps = (["completion"] if caps & {"chat", "completions"} else []) + \
            (["embedding"] if "embeddings" in caps else [])
        return _json({"modelfile": "", "parameters": "", "template": "",
                      "details": entry["details"], "model_info": {},
                      "capabilities": ollama_caps, "modified_at": entry["modified_at"],
                      "swarmd": entry["swarmd"]})

    async def _model_of(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        """The ``model`` (or ``name``) of a pull/delete body, and the body; ClientError if none."""
        body = require_object(await read_body(request, self.deps.api.max_body_bytes))
        name = body.get("model", body.get("name"))
        if not isinstance(name, str) or not name:
            raise ClientError(400, "model is required")
        return name, body

    async def pull(self, request: web.Request) -> web.StreamResponse:
        models = getattr(self.deps, "models", None)
        if models is None:
            return await self.not_managed(request)
        try:
            name, body = await self._model_of(request)
        except ClientError as exc:
            return error_response(exc)
        stream = body.get("stream", True) is not False
        return await pull_ndjson(request, models, name, stream)

    async def delete(self, request: web.Request) -> web.Response:
        models = getattr(self.deps, "models", None)
        if models is None:
            return await self.not_managed(request)
        try:
            name, _ = await self._model_of(request)
        except ClientError as exc:
            return error_response(exc)
        status, doc = await asyncio.to_thread(models.try_remove, name)
        if status == 404:
            return _json(tr.error_body(f"model '{name}' not found"), status=404)
        if status != 200:
            return _json(tr.error_body(doc["error"]), status=status)
        return web.Response(status=200)

    async def not_managed(self, request: web.Request) -> web.Response:
        what = {"pull": "pull", "push": "push", "delete": "delete", "copy": "copy",
                "create": "create"}.get(request.path.rsplit("/", 1)[-1], "manage")
        return _json(tr.error_body(NOT_MANAGED.format(what=what)), status=501)

    # -- generation ----------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        rid = request_id(request)
        t0, _ = clock()
        asked: str | None = None
        path = "/api/chat" if chat else "/api/generate"
        try:
            body = require_object(await read_body(request, self.deps.api.max_body_bytes))
            asked = require_model(body)
            model = self.deps.routing.aliases.get(asked, asked)
            mapped = (tr.chat_request if chat else tr.generate_request)(body, model)
            if mapped.empty:
                if not catalog.known_model(self.deps.snapshot(), model):
                    raise ClientError(404, "no such model", "model", "model_not_found")
                return _json(tr.load_response(asked, clock()[1], chat=chat))
            native = tr.native_body(body, model)
            ex = await open_exchange(self.proxy, mapped.route, mapped.body, request, rid,
                                     lambda kind: (path, native) if kind in NATIVE_KINDS
                                     else None)
        except TranslateError as exc:
            return error_response(ClientError.of(exc))
        except ClientError as err:
            return error_response(err, asked)
        try:
            if ex.route == path:
                return await passthrough(request, ex, rid)
            if ex.status >= 400:
                raw, _ = await read_all(ex)
                return error_response(engine_error(ex, raw), asked)
            if mapped.stream:
                stream = tr.NdjsonStream(model=asked, chat=chat, start=t0)
                return await relay_stream(
                    request, ex, rid, "application/x-ndjson", b"",
                    StreamTranslator(feed=lambda d: stream.feed(d, *clock()),
                                     finish=lambda: stream.finish(*clock()),
                                     fail=stream.fail, ended=lambda: stream.ended))
            raw, first = await read_all(ex)
            ans = answer_of(answer_json(ex, raw))
            now, wall = clock()
            timing = tr.Timing(t0, first, now)
            doc = (tr.chat_response(ans, asked, wall, timing) if chat
                   else tr.generate_response(ans, asked, wall, timing))
            return _json(doc, headers=routed_headers(ex, rid))
        except TranslateError as exc:
            return error_response(ClientError.of(exc))
        except ClientError as err:
            return error_response(err, asked)
        finally:
            await ex.aclose()

    async def embed(self, request: web.Request) -> web.StreamResponse:
        return await self._embed(request, legacy=False)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._embed(request, legacy=True)

    async def _embed(self, request: web.Request, *, legacy: bool) -> web.StreamResponse:
        rid = request_id(request)
        t0, _ = clock()
        asked: str | None = None
        path = "/api/embeddings" if legacy else "/api/embed"
        try:
            body = require_object(await read_body(request, self.deps.api.max_body_bytes))
            asked = require_model(body)
            model = self.deps.routing.aliases.get(asked, asked)
            out, _n = tr.embed_request(body, model, legacy=legacy)
            native = tr.native_body(body, model)
            ex = await open_exchange(self.proxy, "/v1/embeddings", out, request, rid,
                                     lambda kind: (path, native) if kind in NATIVE_KINDS
                                     else None)
        except TranslateError as exc:
            return error_response(ClientError.of(exc))
        except ClientError as err:
            return error_response(err, asked)
        try:
            if ex.route == path:
                return await passthrough(request, ex, rid)
            raw, _ = await read_all(ex)
            doc = answer_json(ex, raw)
            now, _ = clock()
            return _json(tr.embed_response(doc, asked, tr.Timing(t0, now, now), legacy=legacy),
                         headers=routed_headers(ex, rid))
        except TranslateError as exc:
            return error_response(ClientError.of(exc))
        except ClientError as err:
            return error_response(err, asked)
        finally:
            await ex.aclose()


def register(app: web.Application, proxy: Exchanger, deps: Any) -> OllamaHandlers:
    """Add Ollama's routes to ``app`` (the API app, or an Ollama-only one)."""
    h = OllamaHandlers(proxy, deps)
    r = app.router
    r.add_get("/", h.root)
    r.add_get("/api/version", h.version)
    r.add_get("/api/tags", h.tags)
    r.add_get("/api/ps", h.ps)
    r.add_post("/api/show", h.show)
    r.add_post("/api/chat", h.chat)
    r.add_post("/api/generate", h.generate)
    r.add_post("/api/embed", h.embed)
    r.add_post("/api/embeddings", h.embeddings)
    r.add_post("/api/pull", h.pull)
    for name in ("push", "copy", "create"):
        r.add_post(f"/api/{name}", h.not_managed)
    r.add_delete("/api/delete", h.delete)
    return h


class OllamaServer:
    """Only the Ollama routes, on their own listener (``[api] ollama_listen``).

    The daemon starts it after the API server (swarmd/runtime/services.py),
    sharing its proxy and dependencies; the API's key check, when ``deps``
    has one (``deps.auth``), guards this port too.
    """

    def __init__(self, proxy: Exchanger, deps: Any) -> None:
        auth = getattr(deps, "auth", None)
        middlewares = [auth.middleware] if auth is not None else []
        self.app = web.Application(client_max_size=deps.api.max_body_bytes,
                                   middlewares=middlewares)
        register(self.app, proxy, deps)
        self._backlog: int = deps.api.backlog
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, listen: str) -> None:
        host, port = parse_hostport(listen)
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True,
                           backlog=self._backlog)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("Ollama API listening", extra={"listen": f"{host}:{self.port}"})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def pull_ndjson(request: web.Request, models: Any, name: str,
                      stream: bool) -> web.StreamResponse:
    """``/api/pull``: :meth:`ModelService.pull` in a thread, progress as Ollama's NDJSON."""
    from swarmd.models.puller import PullError

    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def progress(ev: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(events.put_nowait, ev)

    def run() -> Any:
        try:
            return models.pull(name, progress=progress)
        except PullError as exc:
            if not str(exc).startswith("no model"):  # a source spec, or a real failure
                raise
            # Not in the swarm: Ollama's registry, as `ollama pull NAME` would.
            return models.pull(f"ollama:{name}", name=name, progress=progress)
        finally:
            loop.call_soon_threadsafe(events.put_nowait, None)

    task = asyncio.ensure_future(asyncio.to_thread(run))
    resp: web.StreamResponse | None = None
    if stream:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
    while (ev := await events.get()) is not None:
        line = _pull_line(ev)
        if line is not None and resp is not None:
            await resp.write(json.dumps(line).encode() + b"\n")
    try:
        await task
    except Exception as exc:  # PullError, or a store failure: one error line, never a 500 mid-stream
        if not isinstance(exc, PullError):
            log.exception("pull failed")
        if resp is None:
            return _json(tr.error_body(str(exc)), status=500)
        await resp.write(json.dumps(tr.error_body(str(exc))).encode() + b"\n")
        await resp.write_eof()
        return resp
    if resp is None:
        return _json({"status": "success"})
    await resp.write(b'{"status":"verifying sha256 digest"}\n{"status":"writing manifest"}\n'
                     b'{"status":"success"}\n')
    await resp.write_eof()
    return resp


def _pull_line(ev: dict[str, Any]) -> dict[str, Any] | None:
    """A puller progress event as an Ollama pull line (None: nothing to say)."""
    status = ev.get("status")
    if status == "resolving":
        return {"status": "pulling manifest"}
    if status == "pulling":
        label = str(ev.get("file", ""))
        return {"status": f"pulling {label}", "digest": label,
                "total": int(ev.get("file_total", 0)),
                "completed": int(ev.get("file_completed", 0))}
    return None
