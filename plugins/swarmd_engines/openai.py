"""A generic OpenAI-compatible upstream: a cloud API or any local server.

Theory of operation: the key (``api_key``) goes as ``Authorization: Bearer``
on every call.  ``spec.url`` may be the API root or its ``/v1`` base
(``https://api.openai.com/v1``).  Health and models come from ``GET
/v1/models``; a server without that route (404/405) that answers at all is
healthy and serves the configured static model list.  Remote (non-loopback)
upstreams are polled at most every :data:`REMOTE_POLL_S` seconds so that a
cloud API is not asked for its model list every 2 s.  Never detected.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import ClassVar
from urllib.parse import urlsplit

import aiohttp

from swarmd.engines.base import EngineError, ModelInfo, get_status, get_text, openai_model_list
from swarmd.engines.openai_compat import OpenAICompatEngine

REMOTE_POLL_S = 30.0
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


class OpenAIEngine(OpenAICompatEngine):
    kind: ClassVar[str] = "openai"

    def poll_every(self, default: float) -> float:
        host = urlsplit(self.spec.url).hostname or ""
        if host in _LOOPBACK or host.startswith("127."):
            return super().poll_every(default)
        opt = self.spec.options.get("poll_interval")
        if isinstance(opt, int | float) and not isinstance(opt, bool) and opt > 0:
            return float(opt)
        return max(default, REMOTE_POLL_S)

    def auth_headers(self) -> dict[str, str]:
        """The Bearer key plus ``options.headers`` (fixed extra headers, e.g.
        ``HTTP-Referer`` for OpenRouter)."""
        out: dict[str, str] = {}
        extra = self.spec.options.get("headers")
        if isinstance(extra, Mapping):
            out.update({str(k): str(v) for k, v in extra.items()})
        out.update(super().auth_headers())
        return out

    def _static(self) -> list[ModelInfo]:
        return [ModelInfo(m) for m in self.spec.models if not any(c in m for c in "*?[")]

    async def health(self, http: aiohttp.ClientSession) -> bool:
        status = await get_status(http, self.url_for("/v1/models"), headers=self.auth_headers())
        if status in (404, 405) and self._static():
            return True
        return 200 <= status < 300

    async def models(self, http: aiohttp.ClientSession) -> list[ModelInfo]:
        status, text, _ = await get_text(http, self.url_for("/v1/models"),
                                         headers=self.auth_headers())
        if status in (404, 405) and self._static():
            return self._static()
        if not 200 <= status < 300:
            raise EngineError(f"GET /v1/models: HTTP {status}")
        try:
            doc = json.loads(text)
        except ValueError:
            raise EngineError("GET /v1/models: not JSON") from None
        return openai_model_list(doc)
