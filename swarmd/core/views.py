"""Control views: what ``swarmctl`` shows, as pure functions over a snapshot.

Theory of operation
-------------------
The control socket (:mod:`swarmd.control.server`) answers ``status``,
``nodes`` and ``models`` from the latest :class:`~swarmd.core.snapshot.Snapshot`
with no thread crossing; these functions build those documents.  Their
TypedDicts are the contract (protocol/control-api.md; ``swarmctl status
--json`` is documented in the README) that ``swarmctl`` (:mod:`swarmd.ctl`)
reads back.  Every record is read through :func:`swarmd.core.record.parse_record`
(:attr:`NodeInfo.info`), so a malformed gossiped record shows as missing
fields, never as an error.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from swarmd.core.record import CAPABILITIES, EngineEntry
from swarmd.core.snapshot import NodeInfo, Snapshot

__all__ = ["CoordinatorDoc", "EngineDoc", "ModelEngineDoc", "ModelRowDoc", "ModelsDoc",
           "NodeDoc", "NodesDoc", "StatusDoc", "engine_doc", "models_view", "node_doc", "status_view"]


class CoordinatorDoc(TypedDict):
    node_id: str
    epoch: int


class NodeDoc(TypedDict):
    node_id: str
    name: str
    state: str  # alive | suspect | dead | left
    addrs: list[str]
    capabilities: dict[str, Any]  # the record's ``caps`` (protocol/records-capabilities.md)
    load: dict[str, Any]  # the record's ``load``
    engines: list[dict[str, Any]]  # EngineDoc each
    api: str | None
    dp: list[str]  # the data plane's addresses (empty: none)
    draining: bool
    incarnation: int
    state_age_s: float
    is_self: bool
    is_coordinator: bool


class StatusDoc(TypedDict):
    node_id: str
    name: str
    addrs: list[str]
    coordinator: CoordinatorDoc | None
    health_score: int
    nodes: list[NodeDoc]
    stats: dict[str, int]
    #: SHA-256 of the API port's TLS certificate, when it serves TLS.
    api_tls_fingerprint: NotRequired[str]


class EngineDoc(TypedDict, total=False):
    id: str
    kind: str
    healthy: bool
    models: list[str]
    load: dict[str, Any]
    capabilities: list[str]
    model_capabilities: dict[str, list[str]]


class ModelEngineDoc(TypedDict):
    node_id: str
    node: str
    engine_id: str
    kind: str
    healthy: bool
    load: dict[str, Any]
    #: What it serves for this model; all three when the engine did not say.
    capabilities: list[str]


class ModelRowDoc(TypedDict):
    id: str
    nodes: list[str]
    engines: list[ModelEngineDoc]
    #: Requests waiting for it in queues, swarm-wide (each node's ``queued``).
    queued: int
    #: Node ids holding it complete in their model store (``models`` inventory).
    stored_on: list[str]


ALL_CAPABILITIES = CAPABILITIES
_MAX_INVENTORY = 256


class ModelsDoc(TypedDict):
    models: list[ModelRowDoc]


class NodesDoc(TypedDict):
    nodes: list[NodeDoc]


def engine_doc(e: EngineEntry) -> dict[str, Any]:
    """An engine entry as gossiped (unknown keys kept, as the record had them)."""
    out: dict[str, Any] = {**e.extra, "id": e.id, "kind": e.kind, "healthy": e.healthy,
                           "models": list(e.models), "load": dict(e.load_raw)}
    if e.capabilities is not None:
        out["capabilities"] = list(e.capabilities)
    if e.model_capabilities is not None:
        out["model_capabilities"] = {m: list(c) for m, c in e.model_capabilities.items()}
    return out


def node_doc(snap: Snapshot, n: NodeInfo) -> NodeDoc:
    rec = n.info
    return {
        "node_id": n.node_id,
        "name": n.name,
        "state": n.state,
        "addrs": list(n.addrs),
        "capabilities": dict(rec.caps),
        "load": dict(rec.load),
        "engines": [engine_doc(e) for e in rec.engines],
        "api": rec.api,
        "dp": list(rec.dp),
        "draining": rec.draining,
        "incarnation": n.incarnation,
        "state_age_s": round(n.state_since, 3),
        "is_self": n.is_self,
        "is_coordinator": bool(snap.coordinator and snap.coordinator[0] == n.node_id),
    }


def status_view(snap: Snapshot) -> StatusDoc:
    """The ``swarmctl status --json`` document (a contract: see README)."""
    coord: CoordinatorDoc | None = (
        {"node_id": snap.coordinator[0], "epoch": snap.coordinator[1]}
        if snap.coordinator else None
    )
    return {
        "node_id": snap.node_id,
        "name": snap.name,
        "addrs": list(snap.addrs),
        "coordinator": coord,
        "health_score": snap.health_score,
        "nodes": [node_doc(snap, n) for n in snap.nodes],
        "stats": dict(snap.stats),
    }


def names_stored(raw: Any) -> set[str]:
    """Model names in a node's ``models`` inventory ([[digest, name, alias...]])."""
    out: set[str] = set()
    if isinstance(raw, list):
        for item in raw[:_MAX_INVENTORY]:
            if isinstance(item, list):
                out.update(x for x in item[1:34] if isinstance(x, str) and len(x) <= 256)
    return out


def _queued(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        return {}
    return {m: n for m, n in list(raw.items())[:1024]
            if isinstance(m, str) and isinstance(n, int) and not isinstance(n, bool) and n > 0}


def models_view(snap: Snapshot) -> ModelsDoc:
    """Which alive node and engine serves which model, what each can do, how
    many requests wait, and where the files are (``swarmctl models``)."""
    table: dict[str, ModelRowDoc] = {}

    def row(model: str) -> ModelRowDoc:
        return table.setdefault(model, {"id": model, "nodes": [], "engines": [], "queued": 0,
                                        "stored_on": []})

    for n in snap.nodes:
        if n.state != "alive":
            continue
        info = n.info
        for eng in info.engines:
            for model in eng.models:
                r = row(model)
                if n.name not in r["nodes"]:
                    r["nodes"].append(n.name)
                caps = (eng.model_capabilities or {}).get(model, eng.capabilities)
                r["engines"].append({
                    "node_id": n.node_id,
                    "node": n.name,
                    "engine_id": eng.id,
                    "kind": eng.kind,
                    "healthy": eng.healthy,
                    "load": dict(eng.load_raw),
                    "capabilities": list(caps if caps is not None else ALL_CAPABILITIES),
                })
        for model, depth in _queued(info.extra.get("queued")).items():
            row(model)["queued"] += depth
        for model in names_stored(info.extra.get("models")):
            row(model)["stored_on"].append(n.node_id)
    for r in table.values():
        r["stored_on"].sort()
    return {"models": [table[k] for k in sorted(table)]}
