"""The SIMULATED engine kind (``swarmd-simengine``, :mod:`swarmd.engines.simulated`).

Theory of operation: ``GET /health`` answers ``{"status": "ok", "engine":
"swarmd-simulated"}`` (that is also the detection signature); models come
from ``/v1/models``; load from ``/metrics``: ``simengine_requests_running``,
``simengine_requests_waiting``, capacity ``simengine_concurrency`` and the
prefix-cache fill ``simengine_prefix_cache_usage`` as ``kv_cache``.  Not probed
by local detection (it has no usual port); configure it with ``kind =
"simulated"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import aiohttp

from swarmd.engines.base import EngineLoad, get_json, get_text, quiet
from swarmd.engines.metrics import as_count, as_fraction, parse_samples, total
from swarmd.engines.openai_compat import OpenAICompatEngine
from swarmd.engines.simulated import OWNED_BY


class SimulatedEngine(OpenAICompatEngine):
    kind: ClassVar[str] = "simulated"

    async def health(self, http: aiohttp.ClientSession) -> bool:
        return await self._health_endpoint(http, "/health")

    async def load(self, http: aiohttp.ClientSession) -> EngineLoad:
        status, text, _ = await get_text(http, self.url_for("/metrics"),
                                         headers=self.auth_headers())
        if status != 200:
            return EngineLoad()
        s = parse_samples(text)
        return EngineLoad(
            running=as_count(total(s, "simengine_requests_running")),
            waiting=as_count(total(s, "simengine_requests_waiting")),
            kv_cache=as_fraction(total(s, "simengine_prefix_cache_usage")),
            capacity=as_count(total(s, "simengine_concurrency")),
        )

    @classmethod
    async def probe(cls, http: aiohttp.ClientSession, url: str) -> bool:
        doc = await quiet(get_json(http, url + "/health", wait_s=1.0))
        return isinstance(doc, Mapping) and doc.get("engine") == OWNED_BY
