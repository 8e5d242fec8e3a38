"""Which engines the API may route to, read from a snapshot."""

from __future__ import annotations

from swarmd.api.catalog import candidates, known_model
from swarmd.testing.swarm_snapshot import node, snapshot


def _eng(eid: str, model: str) -> dict[str, object]:
    return {"id": eid, "kind": "simulated", "healthy": True, "models": [model], "load": {}}


def test_suspect_node_is_fallback_only() -> None:
    alive = node("12D3KooWAlive", [_eng("e1", "m")])
    suspect = node("12D3KooWSusp", [_eng("e2", "m")], state="suspect")
    snap = snapshot(others=[alive, suspect])
    assert [c.target.node_id for c in candidates(snap, "m")] == ["12D3KooWAlive"]
    snap = snapshot(others=[suspect])
    assert [c.target.node_id for c in candidates(snap, "m")] == ["12D3KooWSusp"]
    assert known_model(snap, "m")


def test_dead_and_left_nodes_never_route() -> None:
    for state in ("dead", "left"):
        snap = snapshot(others=[node("12D3KooWGone", [_eng("e", "m")], state=state)])
        assert candidates(snap, "m") == []
        assert not known_model(snap, "m")


def test_hostile_records_are_skipped() -> None:
    bad = node("12D3KooWBad", [{"id": 5}, "junk", {"id": "x", "models": "m"}])  # type: ignore[list-item]
    snap = snapshot(others=[bad, node("12D3KooWOk", [_eng("e", "m")])])
    assert [c.target.engine_id for c in candidates(snap, "m")] == ["e"]
