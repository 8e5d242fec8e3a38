"""swarmd.core.hlc and swarmd.core.replica: clocks, merge rules, codec, sync (pure)."""

from __future__ import annotations

import itertools
import random

import msgpack

from swarmd.core.hlc import Hlc, Stamp
from swarmd.core.replica import (
    BUCKETS,
    Broadcast,
    Changed,
    Direct,
    Entry,
    Replicas,
    Table,
    TableSpec,
)

LWW = TableSpec("keys", final_tombstones=True)
PLAIN = TableSpec("deploy")
MAX = TableSpec("usage", kind="max")


def test_hlc_is_monotonic_through_clock_steps_and_observations() -> None:
    c = Hlc("a")
    s1 = c.now(1000)
    s2 = c.now(1000)
    s3 = c.now(900)  # the wall clock stepped back
    assert s1 < s2 < s3 and s3.ms == 1000
    assert c.observe(Stamp(5000, 7, "b"), 1000)
    s4 = c.now(1001)
    assert s4 > Stamp(5000, 7, "b") and s4.node == "a"
    # a stamp from further ahead than max_drift_ms is refused, and does not move us
    assert not c.observe(Stamp(10_000_000, 0, "b"), 1000)
    assert c.now(1001).ms == 5000


def test_stamp_decode_rejects_malformed() -> None:
    assert Stamp.decode([1, 2, "n"]) == Stamp(1, 2, "n")
    for bad in (None, [1, 2], [1.0, 2, "n"], [-1, 0, "n"], [1, 2, ""], [1, 2, 3], [True, 0, "n"]):
        assert Stamp.decode(bad) is None


def _e(key: str, ms: int, value: object, node: str = "a") -> Entry:
    return Entry(key, Stamp(ms, 0, node), value)


def test_lww_merge_is_order_independent_and_idempotent() -> None:
    writes = [_e("k", 1, {"v": 1}), _e("k", 3, {"v": 3}, "b"), _e("k", 2, {"v": 2}, "c"),
              _e("j", 5, {"v": 9})]
    digests = set()
    for perm in itertools.permutations(writes):
        t = Table(PLAIN)
        for w in perm + perm:
            t.merge(w)
        got = t.get("k")
        assert got is not None and got.value == {"v": 3}
        digests.add(t.digest())
    assert len(digests) == 1


def test_final_tombstone_beats_a_later_write_but_plain_lww_does_not() -> None:
    for spec, survives in ((LWW, False), (PLAIN, True)):
        t = Table(spec)
        t.merge(_e("k", 1, {"v": 1}))
        t.merge(_e("k", 2, None))
        t.merge(_e("k", 99, {"v": "resurrected"}, "evil"))
        got = t.get("k")
        assert got is not None and (got.value is not None) is survives


def test_max_table_merges_elementwise_and_digests_ignore_stamps() -> None:
    a, b = Table(MAX), Table(MAX)
    a.merge(_e("n1|d", 1, (5, 0, 2)))
    a.merge(_e("n1|d", 2, (3, 4)))
    b.merge(_e("n1|d", 9, (3, 4, 2)))
    b.merge(_e("n1|d", 1, (5, 0, 0)))
    assert a.get("n1|d").value == b.get("n1|d").value == (5, 4, 2)  # type: ignore[union-attr]
    assert a.digest() == b.digest()


def test_decode_entry_bounds_untrusted_input() -> None:
    t = Table(TableSpec("x", max_value_bytes=64, validate=lambda k, v: "ok" in v))
    assert t.decode_entry(["k", [1, 0, "n"], {"ok": 1}]) is not None
    assert t.decode_entry(["k", [1, 0, "n"], None]) is not None  # tombstone
    for bad in ([], ["k", [1, 0, "n"]], [1, [1, 0, "n"], {}], ["", [1, 0, "n"], {"ok": 1}],
                ["k" * 300, [1, 0, "n"], {"ok": 1}], ["k", [1, 0], {"ok": 1}],
                ["k", [1, 0, "n"], [1, 2]], ["k", [1, 0, "n"], {"ok": "x" * 100}],
                ["k", [1, 0, "n"], {"no": 1}], ["k", [1, 0, "n"], {1: 2}]):
        assert t.decode_entry(bad) is None, bad
    m = Table(MAX)
    assert m.decode_entry(["k", [1, 0, "n"], [1, 2]]) is not None
    for bad in (["k", [1, 0, "n"], None], ["k", [1, 0, "n"], []], ["k", [1, 0, "n"], [-1]],
                ["k", [1, 0, "n"], [1] * 9], ["k", [1, 0, "n"], [1.5]], ["k", [1, 0, "n"], {}]):
        assert m.decode_entry(bad) is None, bad


def test_max_entries_bounds_a_flood() -> None:
    t = Table(TableSpec("x", max_entries=3))
    for i in range(10):
        t.merge(_e(f"k{i}", 1, {}))
    assert len(t) == 3
    assert t.merge(_e("k0", 2, {"v": 1})) is not None  # updates still apply


def _pair(specs: tuple[TableSpec, ...] = (LWW, MAX)) -> tuple[Replicas, Replicas]:
    return (Replicas("a", specs, Hlc("a")), Replicas("b", specs, Hlc("b")))


def _deliver(src: Replicas, dst: Replicas, wall: int, broadcasts: bool = True) -> int:
    """Carry ``src``'s outbox to ``dst``; returns messages carried."""
    n = 0
    for act in src.drain():
        if isinstance(act, Direct) or (broadcasts and isinstance(act, Broadcast)):
            dst.receive(src.node_id, act.payload, wall)
            n += 1
    return n


def test_a_write_is_broadcast_as_a_delta_and_merged() -> None:
    a, b = _pair()
    e = a.write("keys", "k1", {"name": "x"}, 1000)
    out = a.drain()
    assert any(isinstance(x, Changed) and x.local for x in out)
    bc = [x for x in out if isinstance(x, Broadcast)]
    assert len(bc) == 1 and bc[0].key == "tbl:keys:k1"
    b.receive("a", bc[0].payload, 1000)
    got = b.tables["keys"].get("k1")
    assert got == e
    assert [x for x in b.drain() if isinstance(x, Changed) and not x.local]


def test_anti_entropy_converges_two_diverged_tables_in_three_messages() -> None:
    a, b = _pair()
    rng = random.Random(3)
    for i in range(500):
        a.write("keys", f"a{i}", {"i": i}, 1000 + i)
    for i in range(300):
        b.write("keys", f"b{i}", {"i": i}, 1000 + i)
    a.write("keys", "shared", {"v": "old"}, 1000)
    b.write("keys", "shared", {"v": "new"}, 5000)
    a.drain(), b.drain()  # the deltas were lost
    assert a.digests() != b.digests()
    a.tick(10.0, {"b": b.digests()}, rng.choice)
    msgs = 0
    for _ in range(4):
        msgs += _deliver(a, b, 6000) + _deliver(b, a, 6000)
    assert a.digests() == b.digests()
    assert a.tables["keys"].get("shared").value == {"v": "new"}  # type: ignore[union-attr]
    assert len(a.tables["keys"]) == len(b.tables["keys"]) == 801
    assert msgs <= 3 + 2 * 10  # one request, then entry chunks each way
    # in sync now: the next round sends nothing
    a.tick(20.0, {"b": b.digests()}, rng.choice)
    assert not [x for x in a.drain() if isinstance(x, Direct)]


def test_sync_sends_only_the_differing_buckets() -> None:
    a, b = _pair()
    for i in range(400):
        e = a.write("keys", f"k{i}", {"i": i}, 1000)
        b.tables["keys"].merge(e)
    a.write("keys", "extra", {"i": -1}, 2000)
    a.drain(), b.drain()
    a.tick(10.0, {"b": b.digests()}, random.Random(0).choice)
    _deliver(a, b, 3000)
    replies = [x for x in b.drain() if isinstance(x, Direct)]
    assert len(replies) == 1
    msg = msgpack.unpackb(replies[0].payload)
    assert len(msg["w"]) == 1 and len(msg["e"]) < 400 / BUCKETS * 3
    a.receive("b", replies[0].payload, 3000)
    _deliver(a, b, 3000)
    assert a.digests() == b.digests()


def test_hostile_messages_are_dropped_and_counted() -> None:
    a, _ = _pair()
    before = a.digests()
    for payload in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"t": "nope", "o": "d"}),
                    msgpack.packb({"t": "keys", "o": "d", "e": "x"}),
                    msgpack.packb({"t": "keys", "o": "q", "b": b"short"}),
                    msgpack.packb({"t": "keys", "o": "zz"}),
                    msgpack.packb({"t": "keys", "o": "d", "e": [[0]] * 5000})):
        a.receive("evil", payload, 1000)
    assert a.stats["bad_messages"] == 7
    a.receive("evil", msgpack.packb({"t": "keys", "o": "d", "e": [["k", [1, 0], {}],
                                                                    ["k", [10**15, 0, "x"], {}]]}),
              1000)
    assert a.stats["bad_entries"] == 1 and a.stats["future_entries"] == 1
    assert a.digests() == before


def test_a_sync_reply_asking_for_bad_buckets_is_ignored() -> None:
    a, _ = _pair()
    a.write("keys", "k", {}, 1000)
    a.drain()
    a.receive("evil", msgpack.packb({"t": "keys", "o": "r", "e": [], "w": [99, -1]}), 1000)
    assert not [x for x in a.drain() if isinstance(x, Direct)]
