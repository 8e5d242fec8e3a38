"""The node record: what each node gossips about itself, typed and versioned.

Theory of operation
-------------------
Every member gossips one msgpack map (carried by membership as an opaque
dict with a version, :mod:`swarmd.core.records`).  This module is the one
place that knows its *content* (protocol/records.md):

* :func:`self_record` builds this node's record at start; later changes are
  top-level key updates (``load``, ``engines``, ``draining``) merged by
  :meth:`swarmd.core.node.NodeMachine.update_record`.
* :func:`parse_record` reads any record -- ours or a peer's -- as untrusted
  input: every field is type-checked and bounded (string lengths, list
  lengths); a field of the wrong type reads as absent, an engine entry
  without an ``id`` or ``models`` list is dropped, and the function never
  raises.  Keys it does not know are kept in ``extra`` (forward
  compatibility: a newer node's fields survive a reader that predates them).
* Versioning: ``v`` is the record format version; absent means 1 (the
  format every swarmd so far writes).  A reader accepts any version and
  reads the fields it knows; a change that alters a known field's meaning
  needs a new key, not a new meaning for an old one.

The catalog (routing candidates), the control views (``swarmctl``), the
lease (``started``: preference order) and the test fakes all read records
through :func:`parse_record`.  :attr:`swarmd.core.snapshot.NodeInfo.info`
caches the parse per published snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from swarmd.core.routing import EngineLoad

__all__ = ["RECORD_VERSION", "EngineEntry", "NodeRecord", "describe", "parse_engine",
           "parse_record", "self_record", "started_of"]

#: What an engine can do for a model (protocol/engines.md "Capabilities").
CAPABILITIES = ("chat", "completions", "embeddings")

#: The capability each OpenAI route needs.
ROUTE_CAPABILITY = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}

#: The record format this code writes (written as an absent ``v``).
RECORD_VERSION = 1

#: Bounds on untrusted records: past these, the rest is ignored.
MAX_STR = 256
MAX_ADDRS = 32
MAX_ENGINES = 64
MAX_MODELS = 1024
MAX_CAPS = 16

#: Top-level keys :func:`parse_record` reads; everything else goes to ``extra``.
KNOWN_KEYS = frozenset({"v", "name", "addrs", "started", "api", "caps", "load", "engines",
                        "draining", "dp"})
#: Most data-plane addresses read from one record.
MAX_DP = 8
#: Engine-entry keys read by :func:`parse_engine`.
ENGINE_KEYS = frozenset({"id", "kind", "healthy", "models", "load", "capabilities",
                         "model_capabilities"})

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and 0 < len(v) <= MAX_STR else None


def _strs(v: Any, limit: int) -> tuple[str, ...]:
    if not isinstance(v, list | tuple):
        return ()
    return tuple(s for s in v[:limit] if _str(s) is not None)


def _caps(v: Any) -> tuple[str, ...] | None:
    return _strs(v, MAX_CAPS) if isinstance(v, list | tuple) else None


def _map(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else _EMPTY


def _extra(raw: Mapping[Any, Any], known: frozenset[str]) -> Mapping[str, Any]:
    out = {k: v for k, v in raw.items() if isinstance(k, str) and k not in known}
    return MappingProxyType(out) if out else _EMPTY


@dataclass(frozen=True)
class EngineEntry:
    """One ``engines[]`` entry: an engine on that node and what it serves."""

    id: str
    kind: str = ""
    healthy: bool = False
    models: tuple[str, ...] = ()
    load: EngineLoad = field(default_factory=EngineLoad)
    #: The raw load map (bounded scalars), for views that show it as gossiped.
    load_raw: Mapping[str, Any] = field(default_factory=_empty)
    #: Routes the engine serves ("chat", "completions", "embeddings"); None: unknown.
    capabilities: tuple[str, ...] | None = None
    #: Per-model capabilities where a model differs from ``capabilities``.
    model_capabilities: Mapping[str, tuple[str, ...]] | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty)

    def can(self, model: str, capability: str | None) -> bool:
        """Whether this entry may serve ``capability`` for ``model`` (None: anything)."""
        if capability is None:
            return True
        caps = (self.model_capabilities or {}).get(model, self.capabilities)
        return caps is None or capability in caps


@dataclass(frozen=True)
class NodeRecord:
    """A parsed node record; every field has a safe default."""

    v: int = RECORD_VERSION
    name: str = ""
    addrs: tuple[str, ...] = ()
    #: Wall-clock start time (seconds since the epoch); the lease's preference order.
    started: float = math.inf
    api: str | None = None
    caps: Mapping[str, Any] = field(default_factory=_empty)
    load: Mapping[str, Any] = field(default_factory=_empty)
    engines: tuple[EngineEntry, ...] = ()
    draining: bool = False
    #: The node's data-plane addresses (``host:port``, IPv6 in brackets),
    #: preferred first; empty for a node without one (protocol/dataplane.md).
    dp: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=_empty)

    def dp_address(self, index: int = 0) -> tuple[str, int] | None:
        """The ``index``-th usable data-plane address (wrapping), or None."""
        good = [a for a in (_hostport(x) for x in self.dp) if a is not None]
        return good[index % len(good)] if good else None


def _hostport(value: str) -> tuple[str, int] | None:
    """``host:port`` / ``[v6]:port`` -> (host, port); None if malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        return None
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            return None
        host = host[1:-1]
    elif ":" in host:
        return None
    return host, int(port)


def _load_raw(v: Any) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        return _EMPTY
    out = {k: x for k, x in list(v.items())[:32]
           if isinstance(k, str) and len(k) <= MAX_STR
           and (x is None or isinstance(x, int | float | str | bool))}
    return MappingProxyType(out) if out else _EMPTY


def parse_engine(raw: Any) -> EngineEntry | None:
    """One engine entry, or None if it has no usable ``id`` and ``models`` list."""
    if not isinstance(raw, Mapping):
        return None
    eid, models = _str(raw.get("id")), raw.get("models")
    if eid is None or not isinstance(models, list):
        return None
    mc_raw = raw.get("model_capabilities")
    mcaps: dict[str, tuple[str, ...]] | None = None
    if isinstance(mc_raw, Mapping):
        mcaps = {}
        for k, v in list(mc_raw.items())[:MAX_MODELS]:
            c = _caps(v)
            if _str(k) is not None and c is not None:
                mcaps[k] = c
        mcaps = mcaps or None
    return EngineEntry(
        id=eid,
        kind=_str(raw.get("kind")) or "",
        healthy=raw.get("healthy") is True,
        models=_strs(models, MAX_MODELS),
        load=EngineLoad.from_record(raw.get("load")),
        load_raw=_load_raw(raw.get("load")),
        capabilities=_caps(raw.get("capabilities")),
        model_capabilities=mcaps,
        extra=_extra(raw, ENGINE_KEYS),
    )


def parse_record(raw: Any) -> NodeRecord:
    """Read a gossiped record as untrusted input; never raises."""
    if not isinstance(raw, Mapping):
        return NodeRecord()
    v = raw.get("v", RECORD_VERSION)
    engines_raw = raw.get("engines")
    engines: list[EngineEntry] = []
    if isinstance(engines_raw, list):
        for e in engines_raw[:MAX_ENGINES]:
            entry = parse_engine(e)
            if entry is not None:
                engines.append(entry)
    return NodeRecord(
        v=v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else RECORD_VERSION,
        name=_str(raw.get("name")) or "",
        addrs=_strs(raw.get("addrs"), MAX_ADDRS),
        started=started_of(raw),
        api=_str(raw.get("api")),
        caps=_map(raw.get("caps")),
        load=_map(raw.get("load")),
        engines=tuple(engines),
        draining=raw.get("draining") is True,
        dp=_strs(raw.get("dp"), MAX_DP),
        extra=_extra(raw, KNOWN_KEYS),
    )


def started_of(raw: Any) -> float:
    """Just ``started`` (as :func:`parse_record` reads it): cheap, for the lease's every tick."""
    started = raw.get("started") if isinstance(raw, Mapping) else None
    if isinstance(started, int | float) and not isinstance(started, bool) \
            and math.isfinite(started):
        return float(started)
    return math.inf


def describe(r: NodeRecord) -> dict[str, Any]:
    """A JSON-friendly rendering of a parsed record (golden vectors, debugging)."""

    def engine(e: EngineEntry) -> dict[str, Any]:
        return {
            "id": e.id, "kind": e.kind, "healthy": e.healthy, "models": list(e.models),
            "load": {"running": e.load.running, "waiting": e.load.waiting,
                     "kv_cache": e.load.kv_cache, "capacity": e.load.capacity},
            "load_raw": dict(e.load_raw),
            "capabilities": None if e.capabilities is None else list(e.capabilities),
            "model_capabilities": None if e.model_capabilities is None else {
                m: list(c) for m, c in e.model_capabilities.items()},
            "extra": dict(e.extra),
        }

    return {
        "v": r.v, "name": r.name, "addrs": list(r.addrs),
        "started": None if math.isinf(r.started) else r.started, "api": r.api,
        "caps": dict(r.caps), "load": dict(r.load),
        "engines": [engine(e) for e in r.engines], "draining": r.draining,
        "dp": list(r.dp), "extra": dict(r.extra),
    }


def self_record(*, name: str, addrs: Sequence[str], started: float, api: str,
                caps: Mapping[str, Any]) -> dict[str, Any]:
    """This node's record at start (format :data:`RECORD_VERSION`, written without ``v``)."""
    return {
        "name": name,
        "addrs": list(addrs),
        "started": started,
        "api": api,
        "caps": dict(caps),
        "load": {},
        "engines": [],
        "draining": False,
    }
