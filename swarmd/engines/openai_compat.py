"""A ready base for engines that speak the OpenAI HTTP API.

Theory of operation: most engines serve ``GET /v1/models`` and the three
OpenAI POST routes unchanged.  :class:`OpenAICompatEngine` implements the
interface on that alone -- healthy when ``/v1/models`` answers 2xx, models from
it, load unknown -- and built-in or third-party kinds override only what
their engine does differently (a real health endpoint, Prometheus metrics,
a native model list).
"""

from __future__ import annotations

import aiohttp

from swarmd.engines.base import (
    Engine,
    EngineError,
    ModelInfo,
    get_json,
    get_status,
    openai_model_list,
)


class OpenAICompatEngine(Engine):
    """Any OpenAI-compatible server; subclass and set ``kind``."""

    async def health(self, http: aiohttp.ClientSession) -> bool:
        status = await get_status(http, self.url_for("/v1/models"), headers=self.auth_headers())
        return 200 <= status < 300

    async def models(self, http: aiohttp.ClientSession) -> list[ModelInfo]:
        doc = await get_json(http, self.url_for("/v1/models"), headers=self.auth_headers())
        return openai_model_list(doc)

    async def _health_endpoint(self, http: aiohttp.ClientSession, path: str) -> bool:
        """True on 2xx from ``path`` (e.g. ``/health``); False on 503 or other errors."""
        status = await get_status(http, self.url_for(path), headers=self.auth_headers())
        return 200 <= status < 300


__all__ = ["OpenAICompatEngine", "EngineError"]
