"""Fake inference engines that imitate each real engine's HTTP surface.

Each ``fake_*`` builder returns a :class:`FakeUpstream` (an aiohttp server,
started with ``await fake.start()`` or ``async with``) answering the endpoints
and shapes the engine plugins read, copied from the engines' sources and
docs (see protocol/engines.md for the references):

- :func:`fake_llama_server`: llama.cpp ``llama-server`` -- ``/health`` (200 or
  503 while loading), ``/props`` (``total_slots``, ``endpoint_slots``,
  ``endpoint_metrics``), ``/slots`` (``is_processing``; 501 with
  ``--no-slots``), ``/metrics`` (``llamacpp:requests_processing`` /
  ``requests_deferred``; 501 without ``--metrics``), ``/v1/models``
  (``owned_by: "llamacpp"``).
- :func:`fake_llama_cpp_python`: llama-cpp-python's FastAPI server -- no
  ``/health`` (404 ``{"detail": "Not Found"}``), ``/v1/models`` ``owned_by: "me"``.
- :func:`fake_ollama`: ``GET /`` "Ollama is running", ``/api/version``,
  ``/api/tags``, ``/api/ps``, ``/v1/models``.
- :func:`fake_vllm`: ``/health`` (empty 200), ``/version``, ``/v1/models``
  (``owned_by: "vllm"``), ``/metrics`` with ``engine``/``model_name`` labels.
- :func:`fake_tgi`: ``/health``, ``/info``, ``/v1/models``, ``/metrics``
  (``tgi_queue_size``, ``tgi_batch_current_size``).
- :func:`fake_mlx`: mlx_lm.server -- ``Server: BaseHTTP/0.6 Python/3.11``,
  ``/health``, ``/v1/models`` without ``owned_by``, "Not Found" elsewhere.
- :func:`fake_openai`: a cloud API -- Bearer key required, ``/v1/models``.

Every fake records the requests it got (:attr:`FakeUpstream.seen`) and
answers the OpenAI POST routes with a small JSON echo of what it received.
``fake.state`` holds the mutable knobs (busy slots, queue sizes, ...);
``fake.healthy = False`` makes the health endpoint fail the engine's way.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeUpstream:
    name: str
    state: dict[str, Any] = field(default_factory=dict)
    healthy: bool = True
    #: Seconds every GET (the manager's polls) waits before answering.
    stall: float = 0.0
    server_header: str | None = None
    seen: list[SeenRequest] = field(default_factory=list)
    url: str = ""
    port: int = 0
    app: web.Application = field(init=False)
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self.app = web.Application(middlewares=[self._record])
        self.app.on_response_prepare.append(self._server_header)
        for route in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            self.app.router.add_post(route, self._echo)

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(SeenRequest(request.method, request.path_qs,
                                     {k.lower(): v for k, v in request.headers.items()}, body))
        if request.method == "GET" and self.stall:
            await asyncio.sleep(self.stall)  # busy: polls answer late
        resp: web.StreamResponse = await handler(request)
        return resp

    async def _server_header(self, request: web.Request, resp: web.StreamResponse) -> None:
        if self.server_header is not None:
            resp.headers["Server"] = self.server_header

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        return web.json_response({"fake": self.name, "path": request.path,
                                  "model": doc.get("model") if isinstance(doc, dict) else None})

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    async def start(self, port: int = 0) -> FakeUpstream:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeUpstream:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _model_list(ids: list[str], **extra: Any) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": i, "object": "model", "created": 1735142223,
                                        **extra} for i in ids]}


# -- llama.cpp ---------------------------------------------------------------------


def fake_llama_server(model: str = "../models/tiny-Q4_K_M.gguf", *, slots: int = 2,
                      busy: int = 0, deferred: int = 0, metrics: bool = False,
                      slots_endpoint: bool = True, api_key: str | None = None) -> FakeUpstream:
    """llama-server (tools/server).  ``state``: busy, deferred, loading."""
    f = FakeUpstream("llama-server", state={"busy": busy, "deferred": deferred,
                                            "loading": False})

    def authorized(request: web.Request) -> bool:
        return api_key is None or request.headers.get("Authorization") == f"Bearer {api_key}"

    def denied() -> web.Response:
        return web.json_response({"error": {"code": 401, "message": "Invalid API Key",
                                            "type": "authentication_error"}}, status=401)

    def not_supported(what: str) -> web.Response:
        return web.json_response(
            {"error": {"code": 501, "message": f"This server does not support {what} endpoint.",
                       "type": "not_supported_error"}}, status=501)

    async def health(request: web.Request) -> web.Response:  # public, no key check
        if f.state["loading"] or not f.healthy:
            return web.json_response({"error": {"code": 503, "message": "Loading model",
                                                "type": "unavailable_error"}}, status=503)
        return web.json_response({"status": "ok"})

    async def props(request: web.Request) -> web.Response:
        if not authorized(request):
            return denied()
        return web.json_response({
            "default_generation_settings": {"id": 0, "n_ctx": 4096, "is_processing": False},
            "total_slots": slots, "model_path": model, "chat_template": "{{ messages }}",
            "modalities": {"vision": False}, "endpoint_slots": slots_endpoint,
            "endpoint_props": False, "endpoint_metrics": metrics,
            "build_info": "b6000-abcdef0", "is_sleeping": False,
        })

    async def slots_(request: web.Request) -> web.Response:
        if not authorized(request):
            return denied()
        if not slots_endpoint:
            return not_supported("slots")
        return web.json_response([
            {"id": i, "id_task": i if i < f.state["busy"] else -1, "n_ctx": 4096,
             "speculative": False, "is_processing": i < f.state["busy"],
             "params": {"n_predict": -1}, "next_token": {"has_next_token": True}}
            for i in range(slots)
        ])

    async def metrics_(request: web.Request) -> web.Response:
        if not metrics:
            return not_supported("metrics")
        text = (
            "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
            "# TYPE llamacpp:prompt_tokens_total counter\n"
            "llamacpp:prompt_tokens_total 1234\n"
            "# HELP llamacpp:requests_processing Number of requests processing.\n"
            "# TYPE llamacpp:requests_processing gauge\n"
            f"llamacpp:requests_processing {f.state['busy']}\n"
            "# HELP llamacpp:requests_deferred Number of requests deferred.\n"
            "# TYPE llamacpp:requests_deferred gauge\n"
            f"llamacpp:requests_deferred {f.state['deferred']}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def models(request: web.Request) -> web.Response:
        if not authorized(request):
            return denied()
        doc = _model_list([model], owned_by="llamacpp")
        doc["data"][0]["meta"] = None if f.state["loading"] else {
            "vocab_type": 2, "n_vocab": 259, "n_ctx_train": 512, "n_embd": 64,
            "n_params": 400000, "size": 488000}
        return web.json_response(doc)

    r = f.app.router
    r.add_get("/health", health)
    r.add_get("/v1/health", health)
    r.add_get("/props", props)
    r.add_get("/slots", slots_)
    r.add_get("/metrics", metrics_)
    r.add_get("/v1/models", models)
    r.add_get("/models", models)
    return f


def fake_llama_cpp_python(alias: str = "tiny") -> FakeUpstream:
    """llama-cpp-python's server (FastAPI): /v1/models only, ``owned_by: "me"``."""
    f = FakeUpstream("llama-cpp-python", server_header="uvicorn")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": alias, "object": "model", "owned_by": "me", "permissions": []}]})

    async def not_found(request: web.Request) -> web.Response:
        return web.json_response({"detail": "Not Found"}, status=404)

    f.app.router.add_get("/v1/models", models)
    for path in ("/health", "/props", "/slots", "/metrics", "/info", "/version", "/"):
        f.app.router.add_get(path, not_found)
    return f


# -- Ollama ------------------------------------------------------------------------


def fake_ollama(tags: tuple[str, ...] = ("llama3.2:latest", "qwen2.5:0.5b"),
                loaded: tuple[str, ...] = ("llama3.2:latest",)) -> FakeUpstream:
    """Ollama (server/routes.go).  ``state``: tags, loaded (lists of names)."""
    f = FakeUpstream("ollama", state={"tags": list(tags), "loaded": list(loaded)})
    details = {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
               "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}

    async def root(request: web.Request) -> web.Response:
        if not f.healthy:
            return web.Response(status=500, text="internal error")
        return web.Response(text="Ollama is running")

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.3"})

    async def api_tags(request: web.Request) -> web.Response:
        return web.json_response({"models": [
            {"name": n, "model": n, "modified_at": "2025-09-01T10:00:00.000000+00:00",
             "size": 2019393189, "digest": "a80c4f17acd5" + str(i), "details": details}
            for i, n in enumerate(f.state["tags"])]})

    async def api_ps(request: web.Request) -> web.Response:
        return web.json_response({"models": [
            {"name": n, "model": n, "size": 3851959296, "digest": "a80c4f17acd5",
             "details": details, "expires_at": "2025-09-01T10:05:00.000000+00:00",
             "size_vram": 3851959296, "context_length": 4096}
            for n in f.state["loaded"]]})

    async def models(request: web.Request) -> web.Response:
        return web.json_response(_model_list(f.state["tags"], owned_by="library"))

    r = f.app.router
    r.add_get("/", root)
    r.add_get("/api/version", version)
    r.add_get("/api/tags", api_tags)
    r.add_get("/api/ps", api_ps)
    r.add_get("/v1/models", models)
    return f


# -- vLLM --------------------------------------------------------------------------


def fake_vllm(model: str = "Qwen/Qwen2.5-0.5B-Instruct", *, running: int = 3, waiting: int = 1,
              kv: float = 0.42, legacy_kv_name: bool = False, dp_engines: int = 1) -> FakeUpstream:
    """vLLM OpenAI server.  ``state``: running, waiting, kv (per engine)."""
    f = FakeUpstream("vllm", state={"running": running, "waiting": waiting, "kv": kv})

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200 if f.healthy else 503)

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.11.0"})

    async def models(request: web.Request) -> web.Response:
        return web.json_response(_model_list([model], owned_by="vllm", root=model,
                                             parent=None, max_model_len=32768,
                                             permission=[]))

    async def metrics(request: web.Request) -> web.Response:
        kv_name = "vllm:gpu_cache_usage_perc" if legacy_kv_name else "vllm:kv_cache_usage_perc"
        lines = []
        for name, key, help_ in (
            ("vllm:num_requests_running", "running", "Number of requests in model execution batches."),
            ("vllm:num_requests_waiting", "waiting", "Number of requests waiting to be processed."),
            (kv_name, "kv", "KV-cache usage. 1 means 100 percent usage."),
        ):
            lines.append(f"# HELP {name} {help_}\n# TYPE {name} gauge\n")
            for e in range(dp_engines):
                lines.append(f'{name}{{engine="{e}",model_name="{model}"}} '
                             f"{float(f.state[key])}\n")
        lines.append("# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
                     "# TYPE vllm:prompt_tokens_total counter\n"
                     f'vllm:prompt_tokens_total{{engine="0",model_name="{model}"}} 777.0\n')
        return web.Response(text="".join(lines), content_type="text/plain")

    r = f.app.router
    r.add_get("/health", health)
    r.add_get("/version", version)
    r.add_get("/v1/models", models)
    r.add_get("/metrics", metrics)
    return f


# -- TGI ---------------------------------------------------------------------------


def fake_tgi(model_id: str = "HuggingFaceH4/zephyr-7b-beta", *, max_concurrent: int = 128,
             queue: int = 2, batch: int = 5) -> FakeUpstream:
    """Text Generation Inference router.  ``state``: queue, batch."""
    f = FakeUpstream("tgi", state={"queue": queue, "batch": batch})

    async def health(request: web.Request) -> web.Response:
        if not f.healthy:
            return web.json_response({"error": "unhealthy", "error_type": "healthcheck"},
                                     status=503)
        return web.Response(status=200)

    async def info(request: web.Request) -> web.Response:
        return web.json_response({
            "model_id": model_id, "model_sha": "e985a63cdc139290c5f700ff1929f0b5942cced2",
            "model_pipeline_tag": "text-generation", "max_concurrent_requests": max_concurrent,
            "max_best_of": 2, "max_stop_sequences": 4, "max_input_tokens": 1024,
            "max_total_tokens": 2048, "validation_workers": 2, "max_client_batch_size": 4,
            "router": "text-generation-router", "version": "3.3.6", "sha": None,
            "docker_label": None})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": model_id, "object": "model", "created": 0, "owned_by": model_id}]})

    async def metrics(request: web.Request) -> web.Response:
        text = ("# TYPE tgi_request_count counter\ntgi_request_count 42\n"
                f"# TYPE tgi_queue_size gauge\ntgi_queue_size {f.state['queue']}\n"
                f"# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size {f.state['batch']}\n"
                "# TYPE tgi_batch_current_max_tokens gauge\ntgi_batch_current_max_tokens 900\n")
        return web.Response(text=text, content_type="text/plain")

    r = f.app.router
    r.add_get("/health", health)
    r.add_get("/", health)
    r.add_get("/info", info)
    r.add_get("/v1/models", models)
    r.add_get("/metrics", metrics)
    return f


# -- mlx-lm ------------------------------------------------------------------------


def fake_mlx(model: str = "/Users/me/models/Qwen2.5-0.5B-Instruct-4bit") -> FakeUpstream:
    """mlx_lm.server (http.server BaseHTTPRequestHandler)."""
    f = FakeUpstream("mlx", server_header="BaseHTTP/0.6 Python/3.11.9")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text='{"status": "ok"}', content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"object": "list", "data": [
            {"id": model, "object": "model", "created": 1735142223}]}),
            content_type="application/json")

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text="Not Found")

    r = f.app.router
    r.add_get("/health", health)
    r.add_get("/v1/models", models)
    for path in ("/", "/props", "/info", "/version", "/metrics", "/slots"):
        r.add_get(path, not_found)
    return f


# -- a cloud OpenAI-compatible API -------------------------------------------------


def fake_openai(api_key: str = "sk-test", models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o",
                                                                    "text-embedding-3-small"),
                *, prefix: str = "/v1") -> FakeUpstream:
    """A cloud API under ``prefix`` (``/v1``; e.g. ``/api/v1`` for OpenRouter-style)."""
    f = FakeUpstream("openai")

    async def list_models(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {api_key}":
            return web.json_response({"error": {
                "message": "Incorrect API key provided", "type": "invalid_request_error",
                "param": None, "code": "invalid_api_key"}}, status=401)
        return web.json_response(_model_list(list(models), owned_by="system"))

    f.app.router.add_get(prefix + "/models", list_models)
    if prefix != "/v1":
        for route in ("/chat/completions", "/completions", "/embeddings"):
            f.app.router.add_post(prefix + route, f._echo)
    return f


# -- a third-party engine plugin (for the registry's entry point tests) -------------

from swarmd.engines.openai_compat import OpenAICompatEngine  # noqa: E402


class FakePluginEngine(OpenAICompatEngine):
    """What a third-party package would register under ``swarmd.engines``."""

    kind = "fakeplugin"
    default_ports = ()


NOT_AN_ENGINE = object()
