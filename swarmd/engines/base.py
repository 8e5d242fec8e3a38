"""The engine interface: what swarmd needs from one inference engine.

Theory of operation
-------------------
An *engine* is an HTTP server that runs models (llama.cpp, Ollama, vLLM, TGI,
mlx-lm, a cloud OpenAI-compatible API, the SIMULATED engine, or a plugin's
kind).  swarmd talks to it in two ways:

- the engine manager (:mod:`swarmd.engines.manager`) polls :meth:`Engine.health`,
  :meth:`Engine.models` and :meth:`Engine.load` to build the node's gossiped
  ``engines`` record;
- the API layer forwards client requests: :meth:`Engine.request` turns an
  OpenAI route (``/v1/chat/completions``, ``/v1/completions``,
  ``/v1/embeddings``) plus the client's body and (filtered) headers into the
  :class:`UpstreamRequest` to send -- full URL, the engine's own
  authorization, possibly a rewritten model name -- and the API layer streams
  it with aiohttp (:func:`open_upstream` is the plain version of that).

All calls take the caller's :class:`aiohttp.ClientSession`; an engine object
holds no connection or task of its own, so creating one is free and has no
side effects.  ``request`` is on the hot path and is synchronous: it parses
the body only when a model rename is configured.

URLs: ``spec.url`` may be the server root (``http://127.0.0.1:8080``) or an
OpenAI base URL ending in ``/v1`` (``https://api.openai.com/v1``); both work.
:attr:`Engine.root` is the URL without the trailing ``/v1`` and
:meth:`Engine.url_for` joins a path such as ``/v1/models`` or ``/api/tags``
onto it.

Options common to every kind (``spec.options``):

- ``rename``: ``{upstream_model_id: public_id}``.  Models are listed under the
  public id and requests for the public id reach the engine under its own id
  (e.g. hide llama-server's default id, the GGUF path).
"""

from __future__ import annotations

import abc
import asyncio
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp

from swarmd.core.record import CAPABILITIES as CAPABILITIES  # re-exported for plugins
from swarmd.core.record import ROUTE_CAPABILITY as ROUTE_CAPABILITY
from swarmd.core.routing import EngineLoad as EngineLoad  # re-exported: plugins build it

#: OpenAI routes that engines serve and the API forwards.
OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


#: Default timeout for one poll call (health, models, load, probe), seconds.
POLL_TIMEOUT_S = 2.0

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class EngineError(Exception):
    """An engine answered something swarmd cannot use (bad status, bad JSON)."""


@dataclass(frozen=True)
class EngineSpec:
    """One engine as configured (``[[engines]]``) or as found by detection."""

    kind: str
    url: str
    id: str = ""  # empty: f"{kind}-{port}" (see engine_id)
    #: Models this engine serves.  Literal ids are served as given (no
    #: discovery needed); ids with glob characters (``*?[``) filter the ids the
    #: engine reports.  Empty: whatever the engine reports.
    models: tuple[str, ...] = ()
    #: Resolved by config from api_key_file / api_key_env; never gossiped or logged.
    api_key: str = field(default="", repr=False)
    #: Max concurrent requests, if the user knows (wins over what the engine says).
    capacity: int | None = None
    #: Total time allowed for one forwarded request, seconds.
    timeout_s: float = 600.0
    options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    #: True when found by local detection rather than configured.
    detected: bool = False
    #: What it can do (subset of CAPABILITIES), configured; empty: learn it
    #: from the engine where it tells, else assume all.
    capabilities: tuple[str, ...] = ()

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        if parts.port is not None:
            return parts.port
        return 443 if parts.scheme == "https" else 80

    @property
    def engine_id(self) -> str:
        return self.id or f"{self.kind}-{self.port}"

    @classmethod
    def from_entry(cls, entry: Any) -> EngineSpec:
        """From a config ``EngineEntry`` (or anything with the same attributes).

        Empty strings and zero mean "not set" there; missing attributes get
        the defaults here.
        """
        if isinstance(entry, EngineSpec):
            return entry
        options = getattr(entry, "options", None) or {}
        timeout = getattr(entry, "timeout_s", None) or 600.0
        return cls(
            kind=str(entry.kind),
            url=str(entry.url),
            id=getattr(entry, "id", None) or "",
            models=tuple(getattr(entry, "models", ()) or ()),
            api_key=getattr(entry, "api_key", None) or "",
            capacity=getattr(entry, "capacity", None) or None,
            timeout_s=float(timeout),
            options=MappingProxyType(dict(options)),
            capabilities=tuple(getattr(entry, "capabilities", ()) or ()),
        )


@dataclass(frozen=True)
class ModelInfo:
    id: str
    loaded: bool | None = None  # None: the engine does not say
    meta: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class UpstreamRequest:
    """The HTTP request to send to an engine for one client request."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


def root_of(url: str) -> str:
    """``url`` without trailing slashes and without a trailing ``/v1``."""
    base = url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base


class Engine(abc.ABC):
    """One engine of some kind.  Subclasses set :attr:`kind` and implement the
    abstract methods; see :class:`swarmd.engines.openai_compat.OpenAICompatEngine`
    for a ready base for OpenAI-style servers."""

    kind: ClassVar[str]
    #: Ports probed by local detection (127.0.0.1), in order.
    default_ports: ClassVar[tuple[int, ...]] = ()
    #: Lower bound on the manager's poll interval for this kind (a cloud API
    #: should not be asked for /v1/models every 2 s).
    min_poll_interval: ClassVar[float] = 0.0
    #: The field this kind reads for the completion length limit.  Engines
    #: that ignore OpenAI's newer ``max_completion_tokens`` (llama.cpp, TGI,
    #: mlx-lm, older Ollama) set "max_tokens": the request is rewritten.
    max_tokens_field: ClassVar[str] = "max_completion_tokens"

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.root = root_of(spec.url)
        rename = spec.options.get("rename") or {}
        if not isinstance(rename, Mapping):
            raise ValueError(f"engine {spec.engine_id}: options.rename must be a table")
        #: upstream id -> public id, and back.
        self.public_name: dict[str, str] = {str(k): str(v) for k, v in rename.items()}
        self.upstream_name: dict[str, str] = {v: k for k, v in self.public_name.items()}

    @property
    def id(self) -> str:
        return self.spec.engine_id

    def poll_every(self, default: float) -> float:
        """Seconds between the manager's polls of this engine: ``options.poll_interval``
        if set, else ``default`` raised to :attr:`min_poll_interval`."""
        opt = self.spec.options.get("poll_interval")
        if isinstance(opt, int | float) and not isinstance(opt, bool) and opt > 0:
            return float(opt)
        return max(default, self.min_poll_interval)

    def url_for(self, path: str) -> str:
        return self.root + path

    # -- launched by swarmd (swarmd/engines/launching.py) -------------------------
    #: Model formats (swarmd/models/manifest.py FORMATS) this kind can launch:
    #: "gguf" (a file), "safetensors" or "mlx" (a directory).  Empty: swarmd
    #: never launches this kind (start it by hand and configure it).
    launch_formats: ClassVar[tuple[str, ...]] = ()
    #: The executable a launch runs, looked up on PATH (empty: none).
    launch_exe: ClassVar[str] = ""

    @classmethod
    def launch_available(cls) -> bool:
        """Whether this machine can launch this kind now (its binary is on
        PATH, its Python module importable).  Cheap: no process is started.
        By default: :attr:`launch_exe` is on PATH."""
        return bool(cls.launch_exe) and shutil.which(cls.launch_exe) is not None

    @classmethod
    def launch_command(cls, model_path: str, *, model_id: str, ctx: int, slots: int,
                       threads: int = 0, chat_format: str = "",
                       memory_fraction: float = 0.0) -> list[str] | None:
        """The argv that starts an engine of this kind serving ``model_path``
        on 127.0.0.1, with ``{port}`` where the port goes (the supervisor
        fills it in), or None when this kind cannot be launched by swarmd
        (the engine must then be started by hand and configured).

        ``memory_fraction`` is the share of the chosen GPU's total memory the
        fit formula gives the model (need + margin, swarmd/core/fit.py
        :func:`~swarmd.core.fit.vllm_memory_utilization`); 0 when unknown or
        not on a GPU.  Kinds that preallocate (vLLM, TGI) pass it on."""
        return None

    @classmethod
    def launch_env(cls, *, ctx: int, slots: int) -> dict[str, str]:
        """Environment for the launched process (``{port}`` is filled in as in argv)."""
        return {}

    @classmethod
    def launched_name(cls, model_path: str, model_id: str) -> str:
        """The id the launched engine lists the model under (the manager
        renames it to ``model_id``); default: ``model_id`` itself."""
        return model_id

    @classmethod
    def launched_capacity(cls, argv: list[str], slots: int) -> int:
        """Concurrent requests the launched engine takes (its ``capacity``)."""
        return max(1, slots)

    @classmethod
    async def running_server(cls, http: aiohttp.ClientSession) -> str | None:
        """The URL of a server of this kind that already runs and can take the
        model (Ollama's daemon), or None: swarmd launches one."""
        return None

    @classmethod
    async def after_launch(cls, http: aiohttp.ClientSession, url: str, model_path: str, *,
                           model_id: str, ctx: int, slots: int,
                           sha256: str = "") -> None:
        """Called once the server at ``url`` answers, before routing sees it:
        import and load the model where the server does not load it from its
        command line (Ollama).  ``sha256`` is the model file's digest from the
        store's manifest (hex) when known.  Raises to fail the launch."""
        return None

    @classmethod
    async def release(cls, http: aiohttp.ClientSession, url: str, name: str) -> None:
        """Stop serving model ``name`` (the launched name) on a server that
        :meth:`running_server` lent and that keeps running (Ollama: unload)."""
        return None

    def polls_disturb(self) -> bool:
        """True when a poll sent while the engine serves a request would
        harm that request (llama-cpp-python interrupts a running stream
        for any request that takes its model lock, ``GET /v1/models``
        included).  The manager then does not poll while requests run."""
        return False

    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate swarmd to the engine (default: Bearer key)."""
        if self.spec.api_key:
            return {"Authorization": f"Bearer {self.spec.api_key}"}
        return {}

    # -- polled by the manager -------------------------------------------------

    @abc.abstractmethod
    async def health(self, http: aiohttp.ClientSession) -> bool:
        """True when the engine can serve requests now.  May raise on
        connection errors (the manager counts those as unhealthy)."""

    @abc.abstractmethod
    async def models(self, http: aiohttp.ClientSession) -> list[ModelInfo]:
        """Model ids under the engine's own names (the manager applies
        ``rename`` and the configured model list)."""

    async def load(self, http: aiohttp.ClientSession) -> EngineLoad:
        """Live load; ``EngineLoad()`` when the engine cannot tell."""
        return EngineLoad()

    # -- hot path --------------------------------------------------------------

    def request(self, route: str, body: bytes, headers: Mapping[str, str]) -> UpstreamRequest:
        """The request to send for a client's ``route`` (an OpenAI path).

        ``headers`` are the client's forwarded headers; any Authorization in
        them is dropped and replaced by the engine's own.
        """
        # The body has been parsed as JSON already, whatever the client's
        # Content-Type said: the engine is told what it is.
        out = {k: v for k, v in headers.items()
               if k.lower() not in ("authorization", "content-type")}
        out["Content-Type"] = "application/json"
        out.update(self.auth_headers())
        body = self.adapt_body(route, body)
        return UpstreamRequest("POST", self.url_for(self.route_path(route)), out, body)

    def adapt_body(self, route: str, body: bytes) -> bytes:
        """Translate an OpenAI body into what this kind understands
        (protocol/engines.md, "Parameter translation"): the model rename and
        ``max_completion_tokens`` -> ``max_tokens`` where the engine ignores
        the former.  Parses the body only when something may change."""
        rename = bool(self.upstream_name)
        limit = (self.max_tokens_field == "max_tokens"
                 and b"max_completion_tokens" in body)
        if not rename and not limit:
            return body
        try:
            doc = json.loads(body)
        except ValueError:
            return body
        if not isinstance(doc, dict):
            return body
        changed = False
        model = doc.get("model")
        if rename and isinstance(model, str) and model in self.upstream_name:
            doc["model"] = self.upstream_name[model]
            changed = True
        if limit and "max_completion_tokens" in doc:
            mct = doc.pop("max_completion_tokens")
            if doc.get("max_tokens") is None and mct is not None:
                doc["max_tokens"] = mct
            changed = True
        if not changed:
            return body
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    async def count_tokens(self, http: aiohttp.ClientSession, model: str,
                           text: str) -> int | None:
        """Tokens in ``text`` by the engine's own tokenizer, None when the
        engine cannot tell (swarmd then estimates).  Used only to fill in
        usage an engine did not report."""
        return None

    async def capabilities(self, http: aiohttp.ClientSession,
                           models: list[ModelInfo]) -> dict[str, tuple[str, ...]] | None:
        """What each model can do, learned from the engine, or None when this
        kind cannot tell (then all of CAPABILITIES is assumed).  Called when
        the model list changes; the configured ``capabilities`` win."""
        return None

    def route_path(self, route: str) -> str:
        """Path on the engine for an OpenAI route (default: the same)."""
        return route

    # -- detection -------------------------------------------------------------

    @classmethod
    async def probe(cls, http: aiohttp.ClientSession, url: str) -> bool:
        """Does an engine of this kind answer at ``url``?  Must be cheap, use
        short timeouts, and tell this kind apart from the others on the same
        port.  Default: never (not detectable)."""
        return False


def rewrite_model(body: bytes, mapping: Mapping[str, str]) -> bytes:
    """Replace the top-level ``model`` of a JSON body by ``mapping[model]``.

    The body is returned unchanged when it is not a JSON object or the model
    is not in the mapping (the engine then answers as it would).
    """
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if not isinstance(doc, dict):
        return body
    model = doc.get("model")
    if not isinstance(model, str) or model not in mapping:
        return body
    doc["model"] = mapping[model]
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


# -- small HTTP helpers shared by plugins ------------------------------------------


async def get_json(http: aiohttp.ClientSession, url: str, *,
                   headers: Mapping[str, str] | None = None,
                   wait_s: float = POLL_TIMEOUT_S) -> Any:
    """GET ``url`` and decode JSON; EngineError on a non-2xx status or bad JSON.
    Connection errors and timeouts propagate (aiohttp.ClientError, TimeoutError)."""
    async with asyncio.timeout(wait_s):
        async with http.get(url, headers=headers, allow_redirects=False) as resp:
            raw = await resp.read()
            if not 200 <= resp.status < 300:
                raise EngineError(f"GET {url}: HTTP {resp.status}")
    try:
        return json.loads(raw)
    except ValueError:
        raise EngineError(f"GET {url}: not JSON") from None


async def post_json(http: aiohttp.ClientSession, url: str, doc: Any, *,
                    headers: Mapping[str, str] | None = None,
                    wait_s: float = POLL_TIMEOUT_S) -> Any:
    """POST ``doc`` as JSON to ``url`` and decode the JSON answer; EngineError
    on a non-2xx status or bad JSON (connection errors and timeouts propagate)."""
    async with asyncio.timeout(wait_s):
        async with http.post(url, json=doc, headers=headers, allow_redirects=False) as resp:
            raw = await resp.read()
            if not 200 <= resp.status < 300:
                raise EngineError(f"POST {url}: HTTP {resp.status}")
    try:
        return json.loads(raw)
    except ValueError:
        raise EngineError(f"POST {url}: not JSON") from None


async def get_text(http: aiohttp.ClientSession, url: str, *,
                   headers: Mapping[str, str] | None = None,
                   wait_s: float = POLL_TIMEOUT_S) -> tuple[int, str, Mapping[str, str]]:
    """GET ``url``: (status, body text, response headers); never raises on status."""
    async with asyncio.timeout(wait_s):
        async with http.get(url, headers=headers, allow_redirects=False) as resp:
            raw = await resp.read()
            return resp.status, raw.decode("utf-8", "replace"), dict(resp.headers)


async def get_status(http: aiohttp.ClientSession, url: str, *,
                     headers: Mapping[str, str] | None = None,
                     wait_s: float = POLL_TIMEOUT_S) -> int:
    async with asyncio.timeout(wait_s):
        async with http.get(url, headers=headers, allow_redirects=False) as resp:
            await resp.read()
            return resp.status


async def quiet(coro: Any, default: Any = None) -> Any:
    """Await ``coro``; on a connection error, timeout or EngineError give ``default``.
    For probes, where every failure just means "not this kind"."""
    try:
        return await coro
    except (aiohttp.ClientError, OSError, TimeoutError, EngineError, ValueError):
        return default


def openai_model_list(doc: Any) -> list[ModelInfo]:
    """Parse an OpenAI ``GET /v1/models`` answer (``{"object":"list","data":[...]}``).

    Entries without a string ``id`` are skipped; the other fields go to meta.
    """
    if not isinstance(doc, Mapping):
        raise EngineError("model list is not a JSON object")
    data = doc.get("data")
    if not isinstance(data, list):
        raise EngineError("model list has no data array")
    out: list[ModelInfo] = []
    for item in data:
        if isinstance(item, Mapping) and isinstance(item.get("id"), str) and item["id"]:
            meta = {k: v for k, v in item.items() if k != "id"}
            out.append(ModelInfo(item["id"], meta=MappingProxyType(meta)))
    return out


async def open_upstream(http: aiohttp.ClientSession, engine: Engine, route: str, body: bytes,
                        headers: Mapping[str, str],
                        timeout: float | None = None,  # noqa: ASYNC109 (aiohttp's own)
                        ) -> aiohttp.ClientResponse:
    """Send one client request to ``engine`` and return the response once its
    head arrived (the caller reads the body and releases/closes it).

    ``timeout`` is the total for the whole exchange (default
    ``engine.spec.timeout_s``).  Bytes are relayed as the engine sent them
    (no decompression is asked for).
    """
    up = engine.request(route, body, headers)
    send = dict(up.headers)
    send.setdefault("Accept-Encoding", "identity")
    total = engine.spec.timeout_s if timeout is None else timeout
    return await http.request(
        up.method, up.url, data=up.body, headers=send, allow_redirects=False,
        timeout=aiohttp.ClientTimeout(total=total),
    )
