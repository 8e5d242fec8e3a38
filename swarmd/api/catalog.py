"""The swarm's models and engines as the API sees them, read from a snapshot.

Gossiped records are untrusted input: an engine entry that is not a dict, has
no string ``id`` or a non-list ``models`` is skipped, never fatal.  Alive
nodes count, and suspect ones too: SWIM's "suspect" means "maybe dead", and
dropping a busy node's models the moment one probe is late turned requests
into 404s under load (bench/proxy_compare.py).  A suspect node's engines are
routed to only when no alive node has the model; a draining node's engines
are listed but not routed to.

Capabilities: an engine entry may say what it can do (``capabilities``, and
``model_capabilities`` per model where models differ); a request goes only
to engines that can serve its route.  An entry that says nothing (an older
peer, an engine that cannot tell) is taken to serve every route.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from swarmd.core.record import CAPABILITIES
from swarmd.core.routing import Candidate, EngineLoad, Target
from swarmd.core.snapshot import Snapshot


@dataclass(frozen=True)
class EngineView:
    node_id: str
    engine_id: str
    kind: str
    healthy: bool
    models: tuple[str, ...]
    load: EngineLoad
    is_local: bool
    draining: bool
    suspect: bool = False
    capabilities: tuple[str, ...] | None = None  # None: unknown, all assumed
    model_capabilities: Mapping[str, tuple[str, ...]] | None = None

    def can(self, model: str, capability: str | None) -> bool:
        if capability is None:
            return True
        caps = (self.model_capabilities or {}).get(model, self.capabilities)
        return caps is None or capability in caps

    def caps_of(self, model: str) -> tuple[str, ...] | None:
        return (self.model_capabilities or {}).get(model, self.capabilities)


def engines_of(snap: Snapshot) -> Iterator[EngineView]:
    for node in snap.nodes:
        if node.state not in ("alive", "suspect") and not node.is_self:
            continue
        rec = node.info  # swarmd.core.record.NodeRecord: parsed (and bounded) once per snapshot
        for e in rec.engines:
            yield EngineView(
                node_id=node.node_id, engine_id=e.id, kind=e.kind, healthy=e.healthy,
                models=e.models, load=e.load, is_local=node.is_self, draining=rec.draining,
                suspect=node.state == "suspect", capabilities=e.capabilities,
                model_capabilities=e.model_capabilities)


def candidates(snap: Snapshot, model: str, *, remote_ok: bool = True,
               capability: str | None = None) -> list[Candidate]:
    """Every engine in the swarm that lists ``model`` and can serve
    ``capability`` (suspect nodes: fallback)."""
    views = [e for e in engines_of(snap)
             if model in e.models and (remote_ok or e.is_local) and e.can(model, capability)]
    preferred = [e for e in views if not e.suspect] or views
    return [
        Candidate(
            target=Target(e.node_id, e.engine_id),
            kind=e.kind,
            is_local=e.is_local,
            healthy=e.healthy,
            draining=e.draining,
            load=e.load,
        )
        for e in preferred
    ]


ALL_CAPABILITIES = CAPABILITIES


def _model_obj(model_id: str, engines: list[EngineView],
               queued: int = 0) -> dict[str, Any]:
    nodes = sorted({e.node_id for e in engines})
    caps: set[str] = set()
    for e in engines:
        caps.update(e.caps_of(model_id) or ALL_CAPABILITIES)
    return {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "swarmd",
        "swarmd": {
            "nodes": nodes,
            "capabilities": [c for c in ALL_CAPABILITIES if c in caps],
            "queued": queued,
            "engines": [
                {"node_id": e.node_id, "engine_id": e.engine_id, "kind": e.kind,
                 "capabilities": list(e.caps_of(model_id) or ALL_CAPABILITIES)}
                for e in sorted(engines, key=lambda e: (e.node_id, e.engine_id))
            ],
        },
    }


def queued_of(snap: Snapshot) -> dict[str, int]:
    """Requests waiting in queues swarm-wide per model (each node's ``queued``)."""
    out: dict[str, int] = {}
    for node in snap.nodes:
        if node.state not in ("alive", "suspect") and not node.is_self:
            continue
        q = node.info.extra.get("queued")
        if not isinstance(q, Mapping):
            continue
        for m, n in list(q.items())[:1024]:
            if isinstance(m, str) and isinstance(n, int) and not isinstance(n, bool) and n > 0:
                out[m] = out.get(m, 0) + n
    return out


def model_objects(snap: Snapshot, aliases: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """id -> OpenAI model object, over healthy engines on alive nodes, plus aliases."""
    by_model: dict[str, list[EngineView]] = {}
    for e in engines_of(snap):
        if not e.healthy:
            continue
        for m in e.models:
            by_model.setdefault(m, []).append(e)
    queued = queued_of(snap)
    out = {m: _model_obj(m, es, queued.get(m, 0)) for m, es in by_model.items()}
    for alias, target in aliases.items():
        if target in by_model and alias not in out:
            obj = _model_obj(alias, by_model[target], queued.get(target, 0))
            obj["swarmd"]["alias_of"] = target
            out[alias] = obj
    return dict(sorted(out.items()))


def known_model(snap: Snapshot, model: str) -> bool:
    """Does any engine in the swarm (healthy or not) list ``model``?"""
    return any(model in e.models for e in engines_of(snap))
