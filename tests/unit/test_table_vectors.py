"""swarmd.core.replica against protocol/vectors/tables.json (protocol/tables.md)."""

from __future__ import annotations

import json
from pathlib import Path

from swarmd.core.hlc import Hlc, Stamp
from swarmd.core.replica import Broadcast, Direct, Entry, Replicas, Table, TableSpec

V = json.loads((Path(__file__).resolve().parents[2] / "protocol/vectors/tables.json")
               .read_text())
LWW = TableSpec("keys", final_tombstones=True)
MAX = TableSpec("usage", kind="max")


def test_delta_encoding_is_the_specified_bytes() -> None:
    r = Replicas("nodeA", (LWW, MAX), Hlc("nodeA"))
    r.write("keys", "0123456789ab", {"name": "team"}, 1_790_000_000_000)
    d = [a for a in r.drain() if isinstance(a, Broadcast)][0]
    assert d.key == V["delta"]["user_key"]
    assert d.payload.hex() == V["delta"]["payload_hex"]
    # and a peer decodes it to the same entry
    peer = Replicas("nodeB", (LWW, MAX), Hlc("nodeB"))
    peer.receive("nodeA", bytes.fromhex(V["delta"]["payload_hex"]), 1_790_000_000_000)
    e = peer.tables["keys"].get("0123456789ab")
    assert e is not None and e.value == {"name": "team"} and e.stamp.node == "nodeA"


def test_digests_are_the_specified_values() -> None:
    t = Table(LWW)
    t.merge(Entry("k1", Stamp(5, 0, "a"), {"v": 1}))
    t.merge(Entry("k2", Stamp(6, 1, "b"), None))
    assert t.digest() == V["digests"]["lww"]
    assert t.bucket_hashes() == V["digests"]["lww_buckets"]
    m = Table(MAX)
    m.merge(Entry("a|d20261203|*", Stamp(99, 0, "z"), (3, 10, 20, 0, 0)))  # stamp ignored
    assert m.digest() == V["digests"]["max"]


def test_sync_query_encoding() -> None:
    q = Replicas("nodeA", (LWW,), Hlc("nodeA"))
    q.tables["keys"].merge(Entry("k1", Stamp(5, 0, "a"), {"v": 1}))
    q.tick(10.0, {"nodeB": {"keys": "0"}}, lambda xs: xs[0])
    d = [a for a in q.drain() if isinstance(a, Direct)][0]
    assert d.to == V["query"]["to"] and d.payload.hex() == V["query"]["payload_hex"]


def test_invalid_vectors_are_refused() -> None:
    t = Table(LWW)
    for raw in V["invalid_entries"]:
        assert t.decode_entry(raw) is None, raw
    r = Replicas("n", (LWW,), Hlc("n"))
    for hx in V["invalid_messages_hex"]:
        r.receive("x", bytes.fromhex(hx), 1000)
    assert r.stats["bad_messages"] == len(V["invalid_messages_hex"])
