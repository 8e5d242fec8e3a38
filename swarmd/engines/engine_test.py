"""``swarmctl engines test ENGINE_ID``: is this engine reachable, and is its key good?

Runs the engine plugin's own health and model-list calls once, now, with
its configured key (for an ``openai`` upstream that is ``GET /v1/models``
with ``Authorization: Bearer``), and with ``chat=True`` one chat completion
of one token for a model it lists, so a key that may list models but not
use them shows too.  The answer says what failed: unreachable, refused
key (401/403), no models, or the completion's error.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from swarmd.engines.base import Engine, EngineError


async def check_engine(engine: Engine, http: aiohttp.ClientSession, *,
                      chat: bool = False, chat_seconds: float = 20.0) -> dict[str, Any]:
    spec = engine.spec
    out: dict[str, Any] = {"engine_id": spec.id, "kind": engine.kind, "url": spec.url,
                           "key": bool(getattr(spec, "api_key", "")), "ok": False}
    t0 = time.monotonic()
    try:
        healthy = await engine.health(http)
    except (aiohttp.ClientError, TimeoutError, OSError, EngineError) as exc:
        out["error"] = f"unreachable: {exc!r}"
        return out
    out["health_ms"] = round((time.monotonic() - t0) * 1000, 1)
    if not healthy:
        out["error"] = "the engine answered its health check with an error (a refused key " \
                       "answers 401/403)"
        return out
    try:
        models = [m.id for m in await engine.models(http)]
    except (aiohttp.ClientError, TimeoutError, OSError, EngineError) as exc:
        out["error"] = f"model list failed: {exc}"
        return out
    out["models"] = models[:50]
    out["model_count"] = len(models)
    if not models:
        out["error"] = "the engine lists no models"
        return out
    if chat:
        body = json.dumps({"model": models[0], "max_tokens": 1,
                           "messages": [{"role": "user", "content": "ping"}]}).encode()
        req = engine.request("/v1/chat/completions", body, {"Content-Type": "application/json"})
        t1 = time.monotonic()
        try:
            async with http.request(req.method, req.url, data=req.body, headers=req.headers,
                                    timeout=aiohttp.ClientTimeout(total=chat_seconds)) as r:
                text = await r.text()
                out["chat_status"] = r.status
                out["chat_ms"] = round((time.monotonic() - t1) * 1000, 1)
                if r.status >= 400:
                    out["error"] = f"chat completion: HTTP {r.status}: {text[:300]}"
                    return out
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            out["error"] = f"chat completion failed: {exc!r}"
            return out
    out["ok"] = True
    return out
