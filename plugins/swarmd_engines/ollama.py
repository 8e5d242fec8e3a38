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

Launched by swarmd (GGUF files; ``ollama`` on PATH, or an Ollama already
answering): the Ollama daemon at ``OLLAMA_HOST`` (Ollama's own variable;
default ``127.0.0.1:11434``) is used when it answers ``Ollama is running``
(and is not a swarmd node), else ``ollama serve`` runs under the supervisor
with ``OLLAMA_HOST=127.0.0.1:P`` and ``OLLAMA_NUM_PARALLEL=SLOTS``.  Then the
store's GGUF goes into Ollama (:meth:`OllamaEngine.after_launch`): ``HEAD
/api/blobs/sha256:D`` (200: Ollama has it), else ``POST`` the file there (201;
Ollama checks the digest), ``POST /api/create`` ``{"model": NAME, "files":
{"<file>.gguf": "sha256:D"}, "parameters": {"num_ctx": CTX}}`` (Ollama gives
each of its parallel slots ``num_ctx``), and ``POST /api/generate``
``{"model": NAME, "keep_alive": -1}`` (no prompt: load only, kept loaded).
Ollama lists it as ``NAME:latest``; the manager renames that to NAME.  A
borrowed daemon is asked to unload it (``keep_alive`` 0) when the deployment
stops; a launched one is stopped.  The blob is a copy in Ollama's own store
(``OLLAMA_MODELS``).  Not run against a real Ollama in swarmd's tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
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
#: Seconds allowed for pushing a model file into Ollama and for loading it.
UPLOAD_TIMEOUT_S = 3600.0
LOAD_TIMEOUT_S = 900.0


def configured_url(env: Mapping[str, str] | None = None) -> str:
    """The Ollama URL ``OLLAMA_HOST`` names, as Ollama's own client reads it:
    ``host``, ``host:port`` or a URL; default ``http://127.0.0.1:11434``; a
    listen-everywhere host (``0.0.0.0``, ``::``) is reached on loopback."""
    raw = (os.environ if env is None else env).get("OLLAMA_HOST", "").strip()
    scheme, _, rest = raw.rpartition("://") if "://" in raw else ("http", "", raw)
    rest = rest.split("/", 1)[0]
    host, port = rest, "11434"
    if rest.startswith("["):
        h, _, p = rest[1:].partition("]")
        host, port = h, p.lstrip(":") or port
    elif rest.count(":") == 1:
        host, port = rest.split(":")
        port = port or "11434"
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme or 'http'}://{host}:{port}"


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def _check(resp: aiohttp.ClientResponse, what: str, ok: tuple[int, ...] = (200,)) -> None:
    body = await resp.read()
    if resp.status not in ok:
        raise EngineError(f"Ollama {what}: HTTP {resp.status}: "
                          f"{body[:300].decode('utf-8', 'replace')}")


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
    launch_exe: ClassVar[str] = "ollama"
    launch_formats: ClassVar[tuple[str, ...]] = ("gguf",)

    # -- launched by swarmd (see the module docstring) ----------------------------

    @classmethod
    def launch_command(cls, model_path: str, *, model_id: str, ctx: int, slots: int,
                       threads: int = 0, chat_format: str = "",
                       memory_fraction: float = 0.0) -> list[str] | None:
        exe = shutil.which(cls.launch_exe)
        return [exe, "serve"] if exe else None

    @classmethod
    def launch_env(cls, *, ctx: int, slots: int) -> dict[str, str]:
        return {"OLLAMA_HOST": "127.0.0.1:{port}", "OLLAMA_NUM_PARALLEL": str(max(1, slots))}

    @classmethod
    def launched_name(cls, model_path: str, model_id: str) -> str:
        return model_id if ":" in model_id.rsplit("/", 1)[-1] else model_id + ":latest"

    @classmethod
    async def running_server(cls, http: aiohttp.ClientSession) -> str | None:
        url = configured_url()
        return url if await cls.probe(http, url) else None

    @classmethod
    async def after_launch(cls, http: aiohttp.ClientSession, url: str, model_path: str, *,
                           model_id: str, ctx: int, slots: int, sha256: str = "") -> None:
        digest = "sha256:" + (sha256 or await asyncio.to_thread(_sha256_file, model_path))
        blob = f"{url}/api/blobs/{digest}"
        async with http.head(blob, timeout=aiohttp.ClientTimeout(total=30)) as r:
            have = r.status == 200
        if not have:
            with open(model_path, "rb") as f:  # noqa: ASYNC230 -- aiohttp reads it in chunks
                async with http.post(blob, data=f,
                                     timeout=aiohttp.ClientTimeout(total=UPLOAD_TIMEOUT_S)) as r:
                    await _check(r, f"blob upload of {model_path}", (200, 201))
        name = cls.launched_name(model_path, model_id)
        doc = {"model": name, "files": {Path(model_path).name: digest},
               "parameters": {"num_ctx": ctx}, "stream": False}
        async with http.post(url + "/api/create", json=doc,
                             timeout=aiohttp.ClientTimeout(total=LOAD_TIMEOUT_S)) as r:
            await _check(r, f"create {name}")
        async with http.post(url + "/api/generate",
                             json={"model": name, "keep_alive": -1, "stream": False},
                             timeout=aiohttp.ClientTimeout(total=LOAD_TIMEOUT_S)) as r:
            await _check(r, f"load {name}")

    @classmethod
    async def release(cls, http: aiohttp.ClientSession, url: str, name: str) -> None:
        async with http.post(url + "/api/generate", json={"model": name, "keep_alive": 0,
                                                          "stream": False},
                             timeout=aiohttp.ClientTimeout(total=60)) as r:
            await _check(r, f"unload {name}")

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
