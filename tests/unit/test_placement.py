"""swarmd.core.placement: placing deployments on a simulated swarm (pure)."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from swarmd.core.deployments import (
    PlacementEntry,
    needs_write,
    parse_placement,
    placements_of,
    placements_spec,
)
from swarmd.core.fit import Device, GiB, ModelFacts, Need, fmt_bytes, need_bytes
from swarmd.core.hlc import Stamp
from swarmd.core.placement import Deployment, NodeView, Placement, place
from swarmd.core.replica import Entry, Table
from swarmd.testing.placement_swarm import swarm

# ----------------------------------------------------------------------- a simulated swarm


def committed(p: Placement, needs: Mapping[str, Need], nodes: list[NodeView]
              ) -> dict[tuple[str, str], int]:
    kinds = {(n.node_id, d.id): d.kind for n in nodes for d in n.devices}
    used: dict[tuple[str, str], int] = {}
    for model, ns in p.assignments.items():
        assert len(p.devices[model]) == len(ns)
        for node_id, dev in zip(ns, p.devices[model], strict=True):
            key = (node_id, dev)
            used[key] = used.get(key, 0) + needs[model].reserve(kinds[key])
    return used


def check(p: Placement, deps: list[Deployment], needs: Mapping[str, Need],
          nodes: list[NodeView], *, fresh: bool) -> None:
    """Fits respected (by capacity always, by free memory for a placement made
    from nothing), replicas on distinct alive nodes, counts honoured."""
    devs = {(n.node_id, d.id): d for n in nodes for d in n.devices}
    view = {n.node_id: n for n in nodes}
    for key, used in committed(p, needs, nodes).items():
        assert used <= devs[key].total_bytes, key
        if fresh:
            assert used <= devs[key].free_bytes, key
    by = {d.model: d for d in deps}
    for model, ns in p.assignments.items():
        assert len(set(ns)) == len(ns), model
        assert all(view[n].usable for n in ns)
        dep = by[model]
        if not dep.everywhere:
            assert len(ns) <= dep.replicas
        for node_id, dev in zip(ns, p.devices[model], strict=True):
            d = devs[(node_id, dev)]
            assert d.kind in needs[model].kinds
            assert dep.gpu is None or d.gpu == dep.gpu
    for dep in deps:
        got = len(p.assignments.get(dep.model, ()))
        if not dep.everywhere and got < dep.replicas:
            assert dep.model in p.unplaced


def test_simulated_swarm_fits_spread_and_reasons() -> None:
    deps, needs, nodes = swarm()
    p = place(deps, nodes, {}, needs, epoch=3)
    assert p.epoch == 3
    check(p, deps, needs, nodes, fresh=True)
    placed = sum(len(v) for v in p.assignments.values())
    assert placed > 100 and len(p.assignments) >= 25
    # an everywhere deployment runs on every node that can take it, or says why not
    for dep in deps:
        if dep.everywhere:
            ns = set(p.assignments.get(dep.model, ()))
            assert ns.isdisjoint(p.excluded[dep.model])
            if p.excluded[dep.model]:
                assert p.unplaced[dep.model].startswith(f"runs on {len(ns)} of ")


def test_same_input_same_output_whatever_the_order() -> None:
    deps, needs, nodes = swarm(seed=5)
    a = place(deps, nodes, {}, needs, epoch=1)
    rng = random.Random(9)
    for _ in range(5):
        n2, d2 = nodes[:], deps[:]
        rng.shuffle(n2)
        rng.shuffle(d2)
        assert place(d2, n2, {}, needs, epoch=1) == a


def _vary_load(nodes: list[NodeView], rng: random.Random) -> list[NodeView]:
    out = []
    for n in nodes:
        devs = tuple(replace(d, free_bytes=rng.randrange(d.total_bytes + 1)) for d in n.devices)
        out.append(replace(n, devices=devs))
    return out


def test_no_churn_across_1000_load_changes() -> None:
    deps, needs, nodes = swarm(seed=2)
    p = place(deps, nodes, {}, needs, epoch=1)
    rng = random.Random(3)
    grew = 0
    for _ in range(1000):
        # memory used moves anywhere between empty and full on every device
        view = _vary_load(nodes, rng) if rng.random() < 0.8 else nodes
        q = place(deps, view, p.assignments, needs, epoch=1, current_devices=p.devices)
        for model, ns in p.assignments.items():
            assert q.assignments[model][:len(ns)] == ns, model
            assert q.devices[model][:len(ns)] == p.devices[model]
        # the only change: a model short of replicas getting more
        for model, ns in q.assignments.items():
            if len(ns) != len(p.assignments.get(model, ())):
                assert model in p.unplaced, model
                grew += 1
        check(q, deps, needs, view, fresh=False)
        p = q
    assert grew < 100


def test_killing_nodes_replaces_only_their_replicas() -> None:
    deps, needs, nodes = swarm(seed=4)
    p = place(deps, nodes, {}, needs, epoch=1)
    by = {d.model: d for d in deps}
    hit = sorted({n for m, ns in p.assignments.items() if not by[m].everywhere for n in ns})
    dead = set(random.Random(1).sample(hit, 10))
    view = [replace(n, alive=False) if n.node_id in dead else n for n in nodes]
    q = place(deps, view, p.assignments, needs, epoch=2, current_devices=p.devices)
    check(q, deps, needs, view, fresh=False)
    moved = 0
    for model, ns in p.assignments.items():
        survivors = tuple(n for n in ns if n not in dead)
        new = q.assignments.get(model, ())
        assert new[:len(survivors)] == survivors, model
        assert not dead & set(new)
        if survivors == ns:
            if not by[model].everywhere:
                assert new == ns, model  # untouched models do not move
        else:
            moved += 1
            if not by[model].everywhere and len(new) < by[model].replicas:
                assert model in q.unplaced
    assert moved >= 5
    # a draining node is emptied the same way, and so is an engine that failed
    victim = next(iter(q.assignments[next(m for m in q.assignments if not by[m].everywhere)]))
    view2 = [replace(n, draining=True) if n.node_id == victim else n for n in view]
    r = place(deps, view2, q.assignments, needs, epoch=3, current_devices=q.devices)
    assert all(victim not in ns for ns in r.assignments.values())
    model = next(m for m, ns in r.assignments.items() if not by[m].everywhere)
    host = r.assignments[model][0]
    view3 = [replace(n, failed=frozenset({model})) if n.node_id == host else n for n in view2]
    s = place(deps, view3, r.assignments, needs, epoch=4, current_devices=r.devices)
    assert host not in s.assignments.get(model, ())
    assert all(s.assignments[m] == ns for m, ns in r.assignments.items() if m != model
               and host not in ns)


# ----------------------------------------------------------------------- rules on small swarms


def _n(total: int, kind: str = "llamacpp", kinds: frozenset[str] | None = None) -> Need:
    return Need(engine_kind=kind, weights=total, kv_cache=0, overhead=0, gpu_extra=0,
                kinds=kinds or frozenset({"cpu", "cuda", "rocm", "metal"}), ctx=1, slots=1)


def _node(name: str, *gpus: int, ram: int = 16, holds: tuple[str, ...] = (),
          started: float = 0.0) -> NodeView:
    devs = [Device("cpu", "cpu", ram * GiB, ram * GiB)]
    devs += [Device(f"gpu{i}", "cuda", g * GiB, g * GiB, i) for i, g in enumerate(gpus)]
    return NodeView(name, tuple(devs), holds=frozenset(holds), started=started)


def test_prefers_holders_then_best_fit_and_worst_fit_on_request() -> None:
    nodes = [_node("a", 80), _node("b", 24), _node("c", 24, holds=("m",))]
    needs = {"m": _n(10 * GiB)}
    assert place([Deployment("m")], nodes, {}, needs, 1).assignments == {"m": ("c",)}
    needs2 = {"x": _n(10 * GiB)}
    p = place([Deployment("x", 2)], nodes, {}, needs2, 1)
    assert p.assignments == {"x": ("b", "c")}  # best fit: the 24 GiB GPUs, by node id
    w = place([Deployment("x", 2)], nodes, {}, needs2, 1, policy="worst")
    assert w.assignments["x"][0] == "a"
    # ties broken by the older node
    old = [_node("a", 24, started=50.0), _node("b", 24, started=10.0)]
    assert place([Deployment("x")], old, {}, needs2, 1).assignments == {"x": ("b",)}
    # GPU before RAM unless told; RAM only with gpu=False
    assert place([Deployment("x", 1, gpu=False)], nodes, {}, needs2, 1).devices == {"x": ("cpu",)}
    assert place([Deployment("x")], nodes, {}, needs2, 1).devices == {"x": ("gpu0",)}


def test_memory_committed_by_other_assignments_is_subtracted() -> None:
    nodes = [_node("a", 24, ram=4)]
    needs = {"m1": _n(10 * GiB), "m2": _n(10 * GiB), "m3": _n(10 * GiB)}
    deps = [Deployment(m, gpu=True) for m in needs]
    p = place(deps, nodes, {}, needs, 1)
    # 10 GiB + 1 GiB margin each: two fit a 24 GiB GPU, the third does not
    assert len(p.assignments) == 2 and list(p.unplaced) == ["m3"]
    assert re.fullmatch(r"needs 11\.0 GiB \(.*\); largest free: gpu0 on a 2\.0 GiB",
                        p.unplaced["m3"])


def test_engines_not_up_yet_count_against_free_memory() -> None:
    needs = {"m1": _n(10 * GiB), "m2": _n(10 * GiB)}
    deps = [Deployment("m1", gpu=True), Deployment("m2", gpu=True)]
    # m1 is assigned to a's GPU and its 11 GiB are already out of the reading
    a = NodeView("a", (Device("gpu0", "cuda", 24 * GiB, 13 * GiB, 0),))
    up = place(deps, [replace(a, running=frozenset({"m1"}))], {"m1": ("a",)}, needs, 1)
    assert up.assignments == {"m1": ("a",), "m2": ("a",)}
    # not reported up: its reserve is taken from the free reading too (conservative)
    down = place(deps, [a], {"m1": ("a",)}, needs, 1)
    assert down.assignments == {"m1": ("a",)} and "m2" in down.unplaced
    # a stale reading that does not show m1 yet: the total still bounds the sum
    stale = replace(a, devices=(Device("gpu0", "cuda", 24 * GiB, 24 * GiB, 0),),
                    running=frozenset({"m1"}))
    three = {**needs, "m3": _n(10 * GiB)}
    p = place([*deps, Deployment("m3", gpu=True)], [stale], {"m1": ("a",)}, three, 1)
    assert len(p.assignments) == 2


def test_a_model_that_fits_nowhere_names_need_and_largest_free() -> None:
    deps, needs, nodes = swarm(seed=6)
    huge = need_bytes(ModelFacts(weights_bytes=400 * GiB, n_layers=120, n_embd=16384,
                                 n_head=128, n_head_kv=16, n_vocab=128000, n_ff=53248),
                      engine_kind="llamacpp", ctx=32768)
    needs = {"huge": huge}
    p = place([Deployment("huge", 2)], nodes, {}, needs, 1)
    assert "huge" not in p.assignments
    gpu_free = max(d.free_bytes for n in nodes for d in n.devices if d.gpu)
    cpu_free = max(d.free_bytes for n in nodes for d in n.devices if not d.gpu)
    reason = p.unplaced["huge"]
    assert reason.startswith(f"needs {fmt_bytes(huge.reserve('cuda'))} (")
    assert re.search(rf"largest free: gpu\d on node-\d+ {fmt_bytes(gpu_free)}, ", reason)
    assert reason.endswith(f" {fmt_bytes(cpu_free)}")
    # the engine cannot run on any device asked for
    vllm = replace(huge, kinds=frozenset({"cuda"}), engine_kind="vllm")
    p = place([Deployment("v", 1, gpu=False)], nodes, {}, {"v": vllm}, 1)
    assert "vllm runs on cuda devices only" in p.unplaced["v"]
    # more replicas than machines
    p = place([Deployment("s", 3)], [_node("a", 8), _node("b")], {}, {"s": _n(GiB)}, 1)
    assert p.assignments == {"s": ("a", "b")}
    assert p.unplaced["s"] == "placed 2 of 3 replicas: only 2 nodes can run it " \
        "(each replica on its own node)"


def test_keep_rules() -> None:
    nodes = [_node("a", 24), _node("b", 24), _node("c", 24)]
    needs = {"m": _n(5 * GiB)}
    cur = {"m": ("c", "a", "b")}
    # fewer replicas asked: the oldest are kept
    assert place([Deployment("m", 2)], nodes, cur, needs, 1).assignments == {"m": ("c", "a")}
    # a need that grew past the device's capacity moves it (here: to RAM of a bigger node)
    big = {"m": _n(30 * GiB)}
    nodes2 = [*nodes, _node("d", ram=64)]
    assert place([Deployment("m")], nodes2, {"m": ("a",)}, big, 1).assignments == {"m": ("d",)}
    # a GPU-only deployment does not stay in RAM
    p = place([Deployment("m", gpu=True)], nodes, {"m": ("a",)}, needs, 1,
              current_devices={"m": ("cpu",)})
    assert p.devices == {"m": ("gpu0",)}
    # the recorded device is kept when it still fits
    p = place([Deployment("m")], nodes, {"m": ("a",)}, needs, 1, current_devices={"m": ("cpu",)})
    assert p.devices == {"m": ("cpu",)}
    # unknown size: kept where it runs, never placed anew; removed deployment: dropped
    p = place([Deployment("m"), Deployment("u", 2)], nodes,
              {"u": ("b", "zz"), "gone": ("a",)}, needs, 1)
    assert p.assignments["u"] == ("b",) and "gone" not in p.assignments
    assert "unknown" in p.unplaced["u"]


def test_everywhere() -> None:
    nodes = [_node("a", 24), _node("b", 8), _node("c", ram=2), _node("d", ram=64)]
    needs = {"e": _n(6 * GiB)}
    dep = Deployment("e", replicas=0, gpu=True)
    p = place([dep], nodes, {}, needs, 7)
    assert p.assignments == {"e": ("a", "b")}  # d and c have no GPU: not eligible
    assert p.excluded == {"e": ()} and "e" not in p.unplaced
    small = [_node("a", 24), _node("b", 4)]
    q = place([dep], small, {}, needs, 7)
    assert q.assignments == {"e": ("a",)} and q.excluded == {"e": ("b",)}
    assert q.unplaced["e"].startswith("runs on 1 of 2 nodes")
    # a node that joins gets it on the next round, the others keep theirs
    joined = [*small, _node("c", 24)]
    r = place([dep], joined, q.assignments, needs, 8)
    assert r.assignments == {"e": ("a", "c")} and r.excluded == {"e": ("b",)}


# ----------------------------------------------------------------------- table and epochs
# The placements table's one entry format is swarmd.core.deployments' (the
# daemon's): a placement becomes entries as swarmd.engines.placing.compute does.


def entries(p: Placement, models: list[str]) -> dict[str, PlacementEntry]:
    return {m: PlacementEntry(m, tuple(p.assignments.get(m, ())), p.epoch,
                              p.unplaced.get(m, "")) for m in models}


def writes(table: Mapping[str, PlacementEntry], p: Placement, models: list[str]
           ) -> dict[str, PlacementEntry]:
    return {m: e for m, e in entries(p, models).items() if needs_write(table.get(m), e)}


def test_epochs() -> None:
    p = place([Deployment("m")], [_node("a", 24)], {}, {"m": _n(GiB)}, 4)
    mine = entries(p, ["m"])["m"]
    assert needs_write(None, mine)
    assert not needs_write(PlacementEntry("m", ("b",), 5), mine)  # never over a newer one
    assert needs_write(PlacementEntry("m", ("a",), 3), mine)  # old epoch: rewritten
    assert not needs_write(mine, mine)
    assert needs_write(PlacementEntry("m", ("b",), 4), mine)


def test_reason_text_alone_is_not_a_write() -> None:
    nodes = [_node("a", 8)]
    needs = {"m": _n(20 * GiB)}
    p = place([Deployment("m")], nodes, {}, needs, 1)
    table = entries(p, ["m"])
    nodes2 = [replace(nodes[0], devices=tuple(replace(d, free_bytes=d.free_bytes // 2)
                                               for d in nodes[0].devices))]
    q = place([Deployment("m")], nodes2, {}, needs, 1)
    assert q.unplaced["m"] != p.unplaced["m"]
    assert writes(table, q, ["m"]) == {}
    assert writes({"m": PlacementEntry("m", (), 1)}, q, ["m"])  # a reason appears: written


def _apply(t: Table, ws: Mapping[str, PlacementEntry], wall: int, node: str,
           order: random.Random) -> None:
    items = list(ws.items())
    order.shuffle(items)
    for i, (model, e) in enumerate(items):
        t.merge(Entry(model, Stamp(wall + i, 0, node), e.value()))


def _read(t: Table) -> dict[str, PlacementEntry]:
    return placements_of({e.key: e for e in t.entries()})


def test_coordinator_change_mid_placement_converges() -> None:
    deps, needs, nodes = swarm(seed=8)
    models = sorted(d.model for d in deps)
    rng = random.Random(11)
    # A (epoch 5) does not see 10 nodes and has older load figures; B (epoch 6) sees all.
    view_a = _vary_load([n for n in nodes if rng.random() > 0.1], rng)
    view_b = nodes
    t = Table(placements_spec())
    pa = place(deps, view_a, {}, needs, 5)
    wa = writes({}, pa, models)
    half = dict(rng.sample(sorted(wa.items()), len(wa) // 2))
    _apply(t, half, 100, "A", rng)
    # B starts from a table where only half of A's writes have arrived
    cur = {m: e.nodes for m, e in _read(t).items()}
    pb = place(deps, view_b, cur, needs, 6)
    first = writes(_read(t), pb, models)
    assert len(first) == len(models)  # A's entries are of an older epoch: all rewritten
    _apply(t, first, 200, "B", rng)
    # A's remaining writes arrive later, stamped later by the clock: they lose
    _apply(t, {m: e for m, e in wa.items() if m not in half}, 900, "A", rng)
    assert {e.epoch for e in _read(t).values()} == {6}
    counts = []
    for wall in (300, 400, 500):
        table = _read(t)
        pb = place(deps, view_b, {m: e.nodes for m, e in table.items()}, needs, 6)
        ws = writes(table, pb, models)
        counts.append(len(ws))
        _apply(t, ws, wall, "B", rng)
    assert counts == [0, 0, 0]  # a fixed point from B's first round
    table = _read(t)
    assert {e.epoch for e in table.values()} == {6}
    assert place(deps, view_b, {m: e.nodes for m, e in table.items()}, needs, 6) == pb
    check(pb, deps, needs, view_b, fresh=False)


def test_placement_entries_are_read_defensively() -> None:
    assert parse_placement("m", {"epoch": 3, "nodes": ["a", "b"], "reason": "r"}) == \
        PlacementEntry("m", ("a", "b"), 3, "r")
    bads: list[Any] = [{"epoch": -1, "nodes": []}, {"epoch": True, "nodes": []},
        {"epoch": 1}, {"epoch": 1, "nodes": [1]}, {"epoch": 1, "nodes": ["x" * 300]},
        {"epoch": 1, "nodes": ["a"] * 5000}, {"epoch": 1, "nodes": [], "reason": 3}]
    for bad in bads:
        assert parse_placement("m", bad) is None, bad
    spec = placements_spec()
    assert spec.validate is not None and spec.validate("m", {"epoch": 0, "nodes": []})
    assert not spec.validate("m", {"nodes": []})
    rng = random.Random(2)
    junk: list[Any] = [None, 1, "a", [], {}, ["a"], [1], True, 2.5, {"a": 1}]
    for _ in range(2000):
        raw = {k: rng.choice(junk) for k in rng.sample(["epoch", "nodes", "reason", "x"], 3)}
        parse_placement("m", raw)
