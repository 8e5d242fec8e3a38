"""swarmd.core.deployments: deployment and placement entries, the epoch rank."""

from __future__ import annotations

from swarmd.core.deployments import (
    DeploymentSpec,
    deployments_spec,
    parse_deployment,
    parse_placement,
    placements_of,
    placements_spec,
)
from swarmd.core.hlc import Stamp
from swarmd.core.replica import Entry, Table


def test_deployment_round_trip_and_untrusted_values() -> None:
    d = DeploymentSpec("m", "hf:org/repo", 2, False, None, 4096, 1, chat_format="gemma")
    assert parse_deployment("m", d.value()) == d
    ok = d.value()
    for bad in ({**ok, "replicas": 0}, {**ok, "replicas": "2"}, {**ok, "ctx": 1},
                {**ok, "slots": 0}, {**ok, "gpu": "yes"}, {**ok, "source": 3},
                {**ok, "everywhere": 1}, {**ok, "kind": ""}):
        assert parse_deployment("m", bad) is None, bad
    assert parse_deployment("m", {**ok, "replicas": 0, "everywhere": True}) is not None
    assert parse_deployment("", ok) is None


def test_placements_rank_by_epoch_so_a_stale_coordinator_loses() -> None:
    t = Table(placements_spec())
    t.merge(Entry("m", Stamp(100, 0, "new"), {"nodes": ["a", "b"], "epoch": 5}))
    # a deposed coordinator (epoch 4) writes later by the clock: it loses
    t.merge(Entry("m", Stamp(999, 0, "old"), {"nodes": ["c"], "epoch": 4}))
    got = placements_of({k: e for k, e in ((e.key, e) for e in t.entries())})
    assert got["m"].nodes == ("a", "b") and got["m"].epoch == 5
    # the same epoch: the later write wins
    t.merge(Entry("m", Stamp(200, 0, "new"), {"nodes": ["a"], "epoch": 5}))
    assert t.get("m").value["nodes"] == ["a"]  # type: ignore[union-attr]
    # a newer epoch wins whatever its clock
    t.merge(Entry("m", Stamp(1, 0, "newest"), {"nodes": ["d"], "epoch": 6}))
    assert t.get("m").value["epoch"] == 6  # type: ignore[union-attr]


def test_placement_entries_are_checked() -> None:
    assert parse_placement("m", {"nodes": ["a"], "epoch": 1}) is not None
    for bad in ({"nodes": "a", "epoch": 1}, {"nodes": ["a"], "epoch": -1}, {"nodes": [1],
                "epoch": 1}, {"nodes": ["a"]}, {"nodes": ["a"], "epoch": 1, "reason": 5}):
        assert parse_placement("m", bad) is None
    t = Table(deployments_spec())
    assert t.decode_entry(["m", [1, 0, "n"], {"replicas": 1}]) is None  # validated on arrival
