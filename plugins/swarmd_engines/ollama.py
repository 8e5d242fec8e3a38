"""Ollama.

Theory of operation (endpoints from ollama/ollama ``server/routes.go`` and
``api/types.go``): ``GET /`` answers 200 ``Ollama is running``; ``GET
/api/tags`` lists the models on disk (``{"models": [{"name", "model", "size",
"digest", "details": {...}}]}``), ``GET /api/ps`` those loaded in memory (same
entries plus ``expires_at``, ``size_vram``, ``context_length``).  The OpenAI
routes live under ``/v1`` and take the Ollama model name (``llama3.2:latest``).
Every model on disk is served (Ollama loads it on first use); ``loaded`` tells
which ones answer without a load.  Ollama exports no queue figures, so load
is left to the manager's in-flight count.  Default port: 11434.

Capabilities come from ``POST /api/show`` (``capabilities``: "completion" ->
chat and completions, "embedding" -> embeddings); a completion model of an
Ollama at :data:`RESPONSES_SINCE` or later (``GET /api/version``) also
serves OpenAI's Responses API (``/v1/responses``, stateless) -> "responses",
so swarmd passes unstored Responses requests to it as they are
(swarmd/api/responses_api.py).  Its OpenAI routes read ``max_tokens``
(``max_completion_tokens`` is rewritten).

Self-loop guard: a swarmd node serves Ollama's API too (on its API port, and
on ``[api] ollama_listen``, e.g. 11434, which detection probes), and its
``GET /`` answers ``Ollama is running`` like Ollama -- with an ``X-Swarmd``
header (swarmd/api/ollama_api.py).  Such a server is not an engine: routing
to it would send requests back into the swarm.  The probe does not detect it
and :meth:`OllamaEngine.health` fails with that reason, so a configured
engine that points at a swarmd node never becomes healthy.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import aiohttp

from swarmd.engines.base import (
    EngineError,
    ModelInfo,
    get_json,
    get_text,
    post_json,
    quiet,
)
from swarmd.engines.openai_compat import OpenAICompatEngine

#: The first Ollama version serving ``/v1/responses`` (stateless only).
RESPONSES_SINCE = (0, 13, 3)

#: The header swarmd's own Ollama routes answer with (swarmd/api/ollama_api.py).
SWARMD_HEADER = "x-swarmd"


def is_swarmd(headers: Mapping[str, str]) -> bool:
    """Whether an answer came from a swarmd node rather than from Ollama."""
    return any(k.lower() == SWARMD_HEADER for k in headers)


def version_of(doc: Any) -> tuple[int, ...]:
    """``{"version": "0.13.3-rc1"}`` -> (0, 13, 3); () when it says nothing usable."""
    raw = doc.get("version") if isinstance(doc, Mapping) else None
    out: list[int] = []
    for part in (raw if isinstance(raw, str) else "").split(".")[:3]:
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


class OllamaEngine(OpenAICompatEngine):
    kind: ClassVar[str] = "ollama"
    default_ports: ClassVar[tuple[int, ...]] = (11434,)
    max_tokens_field: ClassVar[str] = "max_tokens"

    async def capabilities(self, http: aiohttp.ClientSession,
                           models: list[ModelInfo]) -> dict[str, tuple[str, ...]] | None:
        out: dict[str, tuple[str, ...]] = {}
        version = await quiet(get_json(http, self.url_for("/api/version"),
                                       headers=self.auth_headers()))
        responses = version_of(version) >= RESPONSES_SINCE
        for m in models:
            doc = await quiet(post_json(http, self.url_for("/api/show"), {"model": m.id},
                                        headers=self.auth_headers()))
            raw = doc.get("capabilities") if isinstance(doc, Mapping) else None
            if not isinstance(raw, list):
                continue  # older Ollama: says nothing, all assumed
            caps: list[str] = []
            if "completion" in raw:
                caps += ["chat", "completions"] + (["responses"] if responses else [])
            if "embedding" in raw:
                caps.append("embeddings")
            out[m.id] = tuple(caps)
        return out or None

    async def health(self, http: aiohttp.ClientSession) -> bool:
        status, _, headers = await get_text(http, self.url_for("/"), headers=self.auth_headers())
        if is_swarmd(headers):
            raise EngineError(f"{self.root} is a swarmd node's Ollama API, not Ollama: "
                              "refused as an engine (requests would loop back into the swarm)")
        return 200 <= status < 300

    async def models(self, http: aiohttp.ClientSession) -> list[ModelInfo]:
        tags = await get_json(http, self.url_for("/api/tags"), headers=self.auth_headers())
        ps = await quiet(get_json(http, self.url_for("/api/ps"), headers=self.auth_headers()))
        loaded: dict[str, Mapping[str, Any]] = {}
        for m in _entries(ps) if ps is not None else []:
            loaded[m["name"]] = m
        out = []
        for m in _entries(tags):
            name = m["name"]
            meta: dict[str, Any] = {}
            for k in ("size", "digest", "details"):
                if k in m:
                    meta[k] = m[k]
            running = loaded.get(name)
            if running is not None:
                for k in ("size_vram", "context_length", "expires_at"):
                    if k in running:
                        meta[k] = running[k]
            out.append(ModelInfo(name, loaded=(running is not None) if ps is not None else None,
                                 meta=MappingProxyType(meta)))
        return out

    @classmethod
    async def probe(cls, http: aiohttp.ClientSession, url: str) -> bool:
        status, text, headers = await quiet(get_text(http, url + "/", wait_s=1.0), (0, "", {}))
        return status == 200 and text.strip() == "Ollama is running" and not is_swarmd(headers)


def _entries(doc: Any) -> list[Mapping[str, Any]]:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("models"), list):
        raise EngineError("ollama model list has no models array")
    return [m for m in doc["models"]
            if isinstance(m, Mapping) and isinstance(m.get("name"), str) and m["name"]]
