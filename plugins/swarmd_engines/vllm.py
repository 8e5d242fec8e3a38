"""vLLM's OpenAI-compatible server (``vllm serve``).

Theory of operation (vllm-project/vllm ``vllm/entrypoints/openai/api_server.py``
and ``vllm/v1/metrics/loggers.py``): ``GET /health`` is 200 with an empty body
when the engine is alive; ``GET /version`` gives ``{"version": ...}``; ``GET
/v1/models`` entries are ``owned_by: "vllm"`` and carry ``max_model_len``.
``GET /metrics`` exports gauges labelled ``model_name`` and ``engine`` (one
series per data-parallel engine): ``vllm:num_requests_running``,
``vllm:num_requests_waiting`` and the KV-cache fill ``vllm:kv_cache_usage_perc``
(0..1; called ``vllm:gpu_cache_usage_perc`` before v0.10, still read).
Running and waiting are summed over the series, the KV fill is the highest.
Default port: 8000.

Launched by swarmd (safetensors directories; ``vllm`` on PATH):
``vllm serve DIR --host 127.0.0.1 --port P --served-model-name NAME
--max-model-len CTX --max-num-seqs SLOTS`` plus ``--gpu-memory-utilization F``
when the fit gives a GPU fraction (vLLM takes F of the GPU's *total* memory
whatever else runs there, so F is need + margin over total; flags from
``vllm/engine/arg_utils.py``).  Not run against a real vLLM in swarmd's tests.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import ClassVar

import aiohttp

from swarmd.engines.base import EngineLoad, get_json, get_status, get_text, quiet
from swarmd.engines.metrics import as_count, as_fraction, highest, parse_samples, total
from swarmd.engines.openai_compat import OpenAICompatEngine


class VllmEngine(OpenAICompatEngine):
    kind: ClassVar[str] = "vllm"
    default_ports: ClassVar[tuple[int, ...]] = (8000,)
    launch_exe: ClassVar[str] = "vllm"
    launch_formats: ClassVar[tuple[str, ...]] = ("safetensors",)

    @classmethod
    def launch_command(cls, model_path: str, *, model_id: str, ctx: int, slots: int,
                       threads: int = 0, chat_format: str = "",
                       memory_fraction: float = 0.0) -> list[str] | None:
        exe = shutil.which(cls.launch_exe)
        if exe is None:
            return None
        argv = [exe, "serve", model_path, "--host", "127.0.0.1", "--port", "{port}",
                "--served-model-name", model_id, "--max-model-len", str(ctx),
                "--max-num-seqs", str(max(1, slots))]
        if memory_fraction > 0:
            argv += ["--gpu-memory-utilization", f"{memory_fraction:.2f}"]
        return argv

    async def health(self, http: aiohttp.ClientSession) -> bool:
        return await self._health_endpoint(http, "/health")

    async def load(self, http: aiohttp.ClientSession) -> EngineLoad:
        status, text, _ = await get_text(http, self.url_for("/metrics"),
                                         headers=self.auth_headers())
        if status != 200:
            return EngineLoad()
        s = parse_samples(text)
        return EngineLoad(
            running=as_count(total(s, "vllm:num_requests_running")),
            waiting=as_count(total(s, "vllm:num_requests_waiting")),
            kv_cache=as_fraction(highest(s, "vllm:kv_cache_usage_perc",
                                         "vllm:gpu_cache_usage_perc")),
        )

    @classmethod
    async def probe(cls, http: aiohttp.ClientSession, url: str) -> bool:
        models = await quiet(get_json(http, url + "/v1/models", wait_s=1.0))
        if isinstance(models, Mapping) and isinstance(models.get("data"), list):
            if any(isinstance(m, Mapping) and m.get("owned_by") == "vllm"
                   for m in models["data"]):
                return True
        version = await quiet(get_json(http, url + "/version", wait_s=1.0))
        if not (isinstance(version, Mapping) and isinstance(version.get("version"), str)):
            return False
        status = await quiet(get_status(http, url + "/health", wait_s=1.0), 0)
        return bool(status == 200)
