"""The swarm's models and engines as the API sees them, read from a snapshot.

Gossiped records are untrusted input: an engine entry that is not a dict, has
no string ``id`` or a non-list ``models`` is skipped, never fatal.  Alive
nodes count, and suspect ones too: SWIM's "suspect" means "maybe dead", and
dropping a busy node's models the moment one probe is late turned requests
into 404s under load (bench/proxy_compare.py).  A suspect node's engines are
routed to only when no alive node has the model; a draining node's engines
are listed but not routed to.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from swarmd.core.routing import Candidate, EngineLoad, Target
from swarmd.runtime.snapshot import Snapshot


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


def engines_of(snap: Snapshot) -> Iterator[EngineView]:
    for node in snap.nodes:
        if node.state not in ("alive", "suspect") and not node.is_self:
            continue
        rec = node.record if isinstance(node.record, Mapping) else {}
        engines = rec.get("engines")
        if not isinstance(engines, list):
            continue
        draining = rec.get("draining") is True
        for e in engines:
            if not isinstance(e, Mapping):
                continue
            eid, models = e.get("id"), e.get("models")
            if not isinstance(eid, str) or not eid or not isinstance(models, list):
                continue
            kind = e.get("kind")
            yield EngineView(
                node_id=node.node_id,
                engine_id=eid,
                kind=kind if isinstance(kind, str) else "",
                healthy=e.get("healthy") is True,
                models=tuple(m for m in models if isinstance(m, str) and m),
                load=EngineLoad.from_record(e.get("load")),
                is_local=node.is_self,
                draining=draining,
                suspect=node.state == "suspect",
            )


def candidates(snap: Snapshot, model: str, *, remote_ok: bool = True) -> list[Candidate]:
    """Every engine in the swarm that lists ``model`` (suspect nodes: fallback)."""
    views = [e for e in engines_of(snap) if model in e.models and (remote_ok or e.is_local)]
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


def _model_obj(model_id: str, engines: list[EngineView]) -> dict[str, Any]:
    nodes = sorted({e.node_id for e in engines})
    return {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "swarmd",
        "swarmd": {
            "nodes": nodes,
            "engines": [
                {"node_id": e.node_id, "engine_id": e.engine_id, "kind": e.kind}
                for e in sorted(engines, key=lambda e: (e.node_id, e.engine_id))
            ],
        },
    }


def model_objects(snap: Snapshot, aliases: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """id -> OpenAI model object, over healthy engines on alive nodes, plus aliases."""
    by_model: dict[str, list[EngineView]] = {}
    for e in engines_of(snap):
        if not e.healthy:
            continue
        for m in e.models:
            by_model.setdefault(m, []).append(e)
    out = {m: _model_obj(m, es) for m, es in by_model.items()}
    for alias, target in aliases.items():
        if target in by_model and alias not in out:
            obj = _model_obj(alias, by_model[target])
            obj["swarmd"]["alias_of"] = target
            out[alias] = obj
    return dict(sorted(out.items()))


def known_model(snap: Snapshot, model: str) -> bool:
    """Does any engine in the swarm (healthy or not) list ``model``?"""
    return any(model in e.models for e in engines_of(snap))
