"""Hugging Face Text Generation Inference (TGI).

Theory of operation (huggingface/text-generation-inference ``router/src/server.rs``,
``router/src/lib.rs`` struct ``Info``, ``backends/v3/src/{queue,backend}.rs``):
``GET /health`` is 200 when the shards answer, 503 otherwise; ``GET /info``
gives ``model_id`` (the one model served), ``max_concurrent_requests`` (the
router's admission limit: past it TGI answers 429, so it is our capacity),
``max_total_tokens``, ``router: "text-generation-router"`` and ``version``.
The OpenAI routes are ``/v1/chat/completions`` and ``/v1/completions`` (TGI
does not check the ``model`` field).  ``GET /metrics`` has the gauges
``tgi_queue_size`` (waiting) and ``tgi_batch_current_size`` (running).
Default ports: 3000 (the launcher's default) and 8080 (the usual
``docker run -p 8080:80``).

Launched by swarmd (safetensors directories; ``text-generation-launcher`` on
PATH): ``text-generation-launcher --model-id DIR --hostname 127.0.0.1 --port P
--max-total-tokens CTX --max-input-tokens CTX-1 --max-concurrent-requests
SLOTS`` plus ``--cuda-memory-fraction F`` from the fit on a GPU (flags from
``launcher/src/main.rs``; ``--max-input-tokens`` is given because its default,
min(max_position_embeddings - 1, 4095), may exceed a small CTX, which TGI
refuses).  ``/info`` names the model by its ``--model-id`` (the directory), so
the manager renames that to the deployment's name.  Not run against a real TGI
in swarmd's tests.
"""

from __future__ import annotations

import shutil
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
    get_text,
    quiet,
)
from swarmd.engines.metrics import as_count, parse_samples, total
from swarmd.engines.openai_compat import OpenAICompatEngine


class TgiEngine(OpenAICompatEngine):
    kind: ClassVar[str] = "tgi"
    max_tokens_field: ClassVar[str] = "max_tokens"  # ignores max_completion_tokens
    default_ports: ClassVar[tuple[int, ...]] = (3000, 8080)
    launch_exe: ClassVar[str] = "text-generation-launcher"
    launch_formats: ClassVar[tuple[str, ...]] = ("safetensors",)

    @classmethod
    def launch_command(cls, model_path: str, *, model_id: str, ctx: int, slots: int,
                       threads: int = 0, chat_format: str = "",
                       memory_fraction: float = 0.0) -> list[str] | None:
        exe = shutil.which(cls.launch_exe)
        if exe is None:
            return None
        ctx = max(2, ctx)
        argv = [exe, "--model-id", model_path, "--hostname", "127.0.0.1", "--port", "{port}",
                "--max-total-tokens", str(ctx), "--max-input-tokens", str(ctx - 1),
                "--max-concurrent-requests", str(max(1, slots))]
        if memory_fraction > 0:
            argv += ["--cuda-memory-fraction", f"{memory_fraction:.2f}"]
        return argv

    @classmethod
    def launched_name(cls, model_path: str, model_id: str) -> str:
        return model_path  # /info's model_id is --model-id as given

    def __init__(self, spec: EngineSpec) -> None:
        super().__init__(spec)
        self.max_concurrent: int | None = None

    async def health(self, http: aiohttp.ClientSession) -> bool:
        return await self._health_endpoint(http, "/health")

    async def _info(self, http: aiohttp.ClientSession) -> Mapping[str, Any]:
        info = await get_json(http, self.url_for("/info"), headers=self.auth_headers())
        if not isinstance(info, Mapping) or not isinstance(info.get("model_id"), str):
            raise EngineError("TGI /info has no model_id")
        mc = info.get("max_concurrent_requests")
        if isinstance(mc, int) and not isinstance(mc, bool) and mc > 0:
            self.max_concurrent = mc
        return info

    async def models(self, http: aiohttp.ClientSession) -> list[ModelInfo]:
        info = await self._info(http)
        meta = {k: info[k] for k in ("max_total_tokens", "max_input_tokens",
                                     "model_pipeline_tag", "version") if k in info}
        return [ModelInfo(info["model_id"], loaded=True, meta=MappingProxyType(meta))]

    async def load(self, http: aiohttp.ClientSession) -> EngineLoad:
        if self.max_concurrent is None:
            await quiet(self._info(http))
        status, text, _ = await get_text(http, self.url_for("/metrics"),
                                         headers=self.auth_headers())
        if status != 200:
            return EngineLoad(capacity=self.max_concurrent)
        s = parse_samples(text)
        return EngineLoad(
            running=as_count(total(s, "tgi_batch_current_size")),
            waiting=as_count(total(s, "tgi_queue_size")),
            capacity=self.max_concurrent,
        )

    @classmethod
    async def probe(cls, http: aiohttp.ClientSession, url: str) -> bool:
        info = await quiet(get_json(http, url + "/info", wait_s=1.0))
        return (
            isinstance(info, Mapping)
            and isinstance(info.get("model_id"), str)
            and (info.get("router") == "text-generation-router" or "max_total_tokens" in info)
        )
