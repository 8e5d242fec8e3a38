"""swarmd.core.record against protocol/vectors/records.json, and as untrusted input."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest

from swarmd.core.record import (
    MAX_ADDRS,
    MAX_ENGINES,
    describe,
    parse_record,
    self_record,
    started_of,
)
from swarmd.core.snapshot import NodeInfo

VECTORS = json.loads((Path(__file__).resolve().parents[2]
                      / "protocol/vectors/records.json").read_text())


def test_self_record_matches_the_golden_bytes() -> None:
    want = VECTORS["self_record"]
    me = self_record(name="gpu-box", addrs=["/ip4/10.0.0.2/tcp/4100/p2p/12D3KooWB"],
                     started=1700000000.5, api="127.0.0.1:4180", caps={"cpu": {"cores": 8}})
    assert me == want["record"]
    assert msgpack.packb(me, use_bin_type=True).hex() == want["msgpack_hex"]
    assert "v" not in me  # version 1 is written as an absent ``v``
    assert parse_record(me).v == 1


@pytest.mark.parametrize("case", VECTORS["parse"], ids=lambda c: c["name"])
def test_parse_matches_the_vectors(case: dict[str, Any]) -> None:
    assert describe(parse_record(case["input"])) == case["parsed"]


def test_unknown_fields_survive_and_bounds_hold() -> None:
    by = {c["name"]: c for c in VECTORS["parse"]}
    fut = parse_record(by["future_version_and_fields"]["input"])
    assert fut.v == 2 and fut.extra == {"budget": {"share": 0.25}}
    assert fut.engines[0].extra == {"queue_model": "fifo"}
    assert fut.engines[0].load_raw["queued"] == 3
    big = parse_record(by["bounds"]["input"])
    assert len(big.addrs) == MAX_ADDRS and len(big.engines) == MAX_ENGINES


def test_capabilities_per_model() -> None:
    eng = parse_record(VECTORS["parse"][0]["input"]).engines[0]
    assert eng.can("qwen2.5:7b", "chat") and not eng.can("nomic-embed", "chat")
    assert eng.can("nomic-embed", "embeddings") and eng.can("anything", None)


def test_started_of_agrees_with_parse_record() -> None:
    for raw in ({"started": 5}, {"started": "5"}, {"started": True}, {"started": math.nan},
                {}, None, [1]):
        assert started_of(raw) == parse_record(raw).started


def _junk(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randint(-(1 << 70), 1 << 70)
    if kind == 3:
        return rng.choice([0.5, -1.0, math.inf, math.nan, 1e308])
    if kind == 4:
        return "".join(rng.choice("ab\x00é") for _ in range(rng.randrange(0, 300)))
    if kind == 5:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
    if kind == 6:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = ["name", "addrs", "started", "api", "caps", "load", "engines", "draining", "v",
            "id", "models", "kind", "healthy", "capabilities", "model_capabilities", 3, None]
    return {rng.choice(keys): _junk(rng, depth + 1) for _ in range(rng.randrange(6))}


def test_parse_never_raises_on_junk() -> None:
    rng = random.Random(9)
    for _ in range(3000):
        raw = _junk(rng)
        if rng.random() < 0.5:
            raw = {"engines": [raw, _junk(rng)], "name": _junk(rng)}
        rec = parse_record(raw)
        json.dumps(describe(rec), default=repr)
        for e in rec.engines:
            assert e.id and all(isinstance(m, str) and m for m in e.models)


def test_node_info_caches_the_parse() -> None:
    n = NodeInfo(node_id="x", name="x", state="alive", addrs=(), incarnation=0,
                 state_since=0.0, record={"draining": True}, record_version=1, is_self=False)
    assert n.info is n.info and n.info.draining


def test_control_views_survive_malformed_gossiped_records() -> None:
    from swarmd.core.snapshot import Snapshot
    from swarmd.core.views import models_view, status_view

    rng = random.Random(4)
    nodes = tuple(
        NodeInfo(node_id=f"n{i}", name=f"n{i}", state="alive", addrs=(), incarnation=0,
                 state_since=0.0, record=_junk(rng) if i else {"engines": [
                     {"id": "e", "models": ["m"], "healthy": True, "kind": 3}]},
                 record_version=1, is_self=i == 0)
        for i in range(200))
    snap = Snapshot(node_id="n0", name="n0", addrs=(), coordinator=None, nodes=nodes,
                    joined=True)
    json.dumps(status_view(snap), default=repr)
    rows = models_view(snap)["models"]
    m = next(r for r in rows if r["id"] == "m")
    assert m["engines"][0]["engine_id"] == "e" and m["engines"][0]["kind"] == ""
