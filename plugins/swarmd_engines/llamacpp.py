"""llama.cpp: the native ``llama-server`` and llama-cpp-python's server.

Theory of operation
-------------------
Two servers answer the OpenAI routes for llama.cpp models, and this kind
handles both, telling them apart on every health poll:

- ``llama-server`` (ggml-org/llama.cpp ``tools/server``): ``GET /health`` is
  200 ``{"status":"ok"}`` when ready and 503 while the model loads;
  ``GET /props`` has ``total_slots`` (``--parallel``, our capacity) and, in
  recent builds, ``endpoint_slots`` / ``endpoint_metrics``;
  ``GET /slots`` lists slots with ``is_processing`` (on by default, 501 when
  started with ``--no-slots``); ``GET /metrics`` (only with ``--metrics``,
  else 501) has the gauges ``llamacpp:requests_processing`` and
  ``llamacpp:requests_deferred``.  Load prefers ``/metrics`` (running and
  waiting), else ``/slots`` (running only).
- llama-cpp-python (``python -m llama_cpp.server``, FastAPI): no ``/health``
  (404), ``GET /v1/models`` entries are ``owned_by: "me"``; it runs one request
  at a time, so capacity is 1 unless configured.

Default ports for detection: 8080 (llama-server) and 8000 (llama-cpp-python).

Requests: llama.cpp reads ``max_tokens`` only (``max_completion_tokens`` is
rewritten).  Neither server streams usage the way OpenAI does (llama-server
sends ``timings``; llama-cpp-python nothing), so swarmd counts; for the
prompt it asks the engine's tokenizer (``POST /tokenize`` on llama-server,
``POST /extras/tokenize/count`` on llama-cpp-python).

Capabilities: a llama.cpp server either generates or embeds.  llama-server
``--embeddings`` is "only for embedding models", and llama-cpp-python's
``--embedding true`` model gives empty chats; without it ``/v1/embeddings``
fails with a 500.  So one probe decides: a ``POST /v1/embeddings`` that
returns a vector means an embeddings engine, else chat and completions.

llama-cpp-python runs one request at a time and, by default
(``--interrupt_requests true``), *ends a running stream* when another
completion request arrives.  swarmd never sends it more than its capacity
(1) at once, but run it with ``--interrupt_requests false`` when anything
else may call it directly.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import aiohttp

from swarmd.engines.base import (
    EngineError,
    EngineLoad,
    EngineSpec,
    ModelInfo,
    get_json,
    get_status,
    get_text,
    openai_model_list,
    post_json,
    quiet,
)
from swarmd.engines.metrics import as_count, as_fraction, parse_samples, total
from swarmd.engines.openai_compat import OpenAICompatEngine

NATIVE = "llama-server"
PYTHON = "llama-cpp-python"

#: Refresh /props (capacity, endpoint flags) every this many load polls.
PROPS_EVERY = 15


class LlamaCppEngine(OpenAICompatEngine):
    kind: ClassVar[str] = "llamacpp"
    default_ports: ClassVar[tuple[int, ...]] = (8080, 8000)
    max_tokens_field: ClassVar[str] = "max_tokens"

    def __init__(self, spec: EngineSpec) -> None:
        super().__init__(spec)
        #: Which server answers: NATIVE, PYTHON, or None (not known yet).
        self.flavor: str | None = None
        self._props: Mapping[str, Any] | None = None
        self._props_age = 0
        self._slots_ok = True
        self._metrics_ok: bool | None = None  # None: not tried / unknown

    async def health(self, http: aiohttp.ClientSession) -> bool:
        status = await get_status(http, self.url_for("/health"), headers=self.auth_headers())
        if status == 404:
            # llama-cpp-python has no /health: it is up when /v1/models answers.
            self.flavor = PYTHON
            return await super().health(http)
        self.flavor = NATIVE
        return 200 <= status < 300

    async def models(self, http: aiohttp.ClientSession) -> list[ModelInfo]:
        doc = await get_json(http, self.url_for("/v1/models"), headers=self.auth_headers())
        out = []
        for m in openai_model_list(doc):
            if m.meta.get("owned_by") == "me":
                self.flavor = PYTHON
            loaded: bool | None = True
            status = m.meta.get("status")  # llama-server router mode
            if isinstance(status, Mapping) and isinstance(status.get("value"), str):
                loaded = status["value"] == "loaded"
            out.append(ModelInfo(m.id, loaded=loaded, meta=m.meta))
        return out

    launch_formats: ClassVar[tuple[str, ...]] = ("gguf",)

    @classmethod
    def launch_available(cls) -> bool:
        return bool(shutil.which("llama-server")) or importlib.util.find_spec("llama_cpp") is not None

    @classmethod
    def launched_capacity(cls, argv: list[str], slots: int) -> int:
        # llama-server runs -np slots in parallel; llama-cpp-python one request.
        return max(1, slots) if argv and argv[0].endswith("llama-server") else 1

    @classmethod
    def launch_command(cls, model_path: str, *, model_id: str, ctx: int, slots: int,
                       threads: int = 0, chat_format: str = "",
                       memory_fraction: float = 0.0) -> list[str] | None:
        """``llama-server`` when it is on PATH, else llama-cpp-python's server
        from swarmd's own Python (the embedded default).  llama.cpp allocates
        what it needs: ``memory_fraction`` is not used."""
        native = shutil.which("llama-server")
        if native:
            argv = [native, "-m", model_path, "--host", "127.0.0.1", "--port", "{port}",
                    "--alias", model_id, "-c", str(ctx * max(1, slots)),
                    "-np", str(max(1, slots)), "--metrics"]
            if threads:
                argv += ["-t", str(threads)]
            return argv
        if importlib.util.find_spec("llama_cpp") is None:
            return None
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", model_path,
                "--model_alias", model_id, "--host", "127.0.0.1", "--port", "{port}",
                "--n_ctx", str(ctx), "--interrupt_requests", "false", "--use_mlock", "false"]
        if threads:
            argv += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
        if chat_format:
            argv += ["--chat_format", chat_format]
        return argv

    def polls_disturb(self) -> bool:
        # llama-cpp-python's /v1/models takes the model lock: with its
        # default --interrupt_requests it ends the running stream.
        return self.flavor == PYTHON

    async def count_tokens(self, http: aiohttp.ClientSession, model: str,
                           text: str) -> int | None:
        try:
            if self.flavor == PYTHON:
                doc = await post_json(http, self.url_for("/extras/tokenize/count"),
                                      {"input": text, "model": model},
                                      headers=self.auth_headers())
                n = doc.get("count") if isinstance(doc, Mapping) else None
            else:
                doc = await post_json(http, self.url_for("/tokenize"), {"content": text},
                                      headers=self.auth_headers())
                toks = doc.get("tokens") if isinstance(doc, Mapping) else None
                n = len(toks) if isinstance(toks, list) else None
        except (aiohttp.ClientError, OSError, TimeoutError, EngineError):
            return None
        return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None

    async def capabilities(self, http: aiohttp.ClientSession,
                           models: list[ModelInfo]) -> dict[str, tuple[str, ...]] | None:
        if not models:
            return None
        caps: dict[str, tuple[str, ...]] = {}
        for m in models:
            try:
                doc = await post_json(http, self.url_for("/v1/embeddings"),
                                      {"input": "capability probe", "model": m.id},
                                      headers=self.auth_headers(), wait_s=5.0)
            except EngineError:
                caps[m.id] = ("chat", "completions")
                continue
            data = doc.get("data") if isinstance(doc, Mapping) else None
            embeds = (isinstance(data, list) and bool(data) and isinstance(data[0], Mapping)
                      and isinstance(data[0].get("embedding"), list))
            caps[m.id] = ("embeddings",) if embeds else ("chat", "completions")
        return caps

    async def load(self, http: aiohttp.ClientSession) -> EngineLoad:
        if self.flavor == PYTHON:
            return EngineLoad(capacity=1)
        if self.flavor != NATIVE:
            return EngineLoad()
        props = await self._get_props(http)
        capacity = _int(props.get("total_slots")) if props else None
        if props is not None and props.get("endpoint_metrics") is False:
            self._metrics_ok = False
        if self._metrics_ok is not False:
            status, text, _ = await get_text(http, self.url_for("/metrics"),
                                             headers=self.auth_headers())
            if status == 200:
                self._metrics_ok = True
                s = parse_samples(text)
                running = as_count(total(s, "llamacpp:requests_processing"))
                waiting = as_count(total(s, "llamacpp:requests_deferred"))
                kv = as_fraction(total(s, "llamacpp:kv_cache_usage_ratio"))
                if running is not None:
                    return EngineLoad(running, waiting, kv, capacity)
            elif status in (404, 501):
                self._metrics_ok = False
        if props is not None and props.get("endpoint_slots") is False:
            self._slots_ok = False
        if self._slots_ok:
            status, text, _ = await get_text(http, self.url_for("/slots"),
                                             headers=self.auth_headers())
            if status == 200:
                running = _busy_slots(text)
                if running is not None:
                    return EngineLoad(running=running, capacity=capacity)
            elif status in (404, 501):
                self._slots_ok = False
        return EngineLoad(capacity=capacity)

    async def _get_props(self, http: aiohttp.ClientSession) -> Mapping[str, Any] | None:
        self._props_age -= 1
        if self._props is None or self._props_age <= 0:
            doc = await quiet(get_json(http, self.url_for("/props"), headers=self.auth_headers()))
            if isinstance(doc, Mapping):
                self._props = MappingProxyType(
                    {k: doc.get(k) for k in ("total_slots", "endpoint_slots",
                                             "endpoint_metrics", "build_info")})
            self._props_age = PROPS_EVERY
        return self._props

    @classmethod
    async def probe(cls, http: aiohttp.ClientSession, url: str) -> bool:
        props = await quiet(get_json(http, url + "/props", wait_s=1.0))
        if isinstance(props, Mapping) and (
            "total_slots" in props or "default_generation_settings" in props
        ):
            return True
        status, text, _ = await quiet(get_text(http, url + "/health", wait_s=1.0),
                                      (0, "", {}))
        if status == 503 and "Loading model" in text:
            return True  # llama-server still loading (its /props may wait)
        models = await quiet(get_json(http, url + "/v1/models", wait_s=1.0))
        if status == 404 and isinstance(models, Mapping):
            data = models.get("data")
            return isinstance(data, list) and any(
                isinstance(m, Mapping) and m.get("owned_by") == "me" for m in data
            )
        return False


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _busy_slots(text: str) -> int | None:
    try:
        slots = json.loads(text)
    except ValueError:
        return None
    if not isinstance(slots, list):
        return None
    return sum(1 for s in slots if isinstance(s, Mapping) and s.get("is_processing") is True)
