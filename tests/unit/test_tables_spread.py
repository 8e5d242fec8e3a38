"""Replicated tables through the node machine on a simulated swarm (virtual clock).

Each simulated node is the daemon's :class:`NodeMachine`; these check that a
write spreads to every node by delta gossip, that anti-entropy catches up a
node that was away (or lost the deltas), that a revocation tombstone wins,
and that hostile table messages are counted, not fatal.
"""

from __future__ import annotations

import msgpack

from swarmd.core.membership import MemberState
from swarmd.core.membership_config import PROFILES
from swarmd.core.node import TableChanged
from swarmd.core.replica import TableSpec
from swarmd.testing.simnet import SimNet

SPECS = (TableSpec("keys", final_tombstones=True), TableSpec("usage", kind="max"))
CFG = PROFILES["lan"]


def _swarm(n: int, seed: int = 1, loss: float = 0.0) -> SimNet:
    net = SimNet(seed, loss=loss)
    for i in range(n):
        net.add(f"n{i}", CFG, tables=SPECS)
    for i in range(1, n):
        net.join(f"n{i}", "n0")
    net.wait_for(net.converged, 30.0)
    return net


def _has(net: SimNet, key: str, *, dead: bool = False, among: list[str] | None = None) -> bool:
    ids = among if among is not None else [n.node_id for n in net.up_nodes()]
    for i in ids:
        e = net.nodes[i].machine.table("keys").get(key)
        if e is None or e.dead is not dead:
            return False
    return True


def test_a_write_reaches_every_node_and_the_snapshot() -> None:
    net = _swarm(10)
    n3 = net.nodes["n3"]
    n3.machine.write_table("keys", "k1", {"name": "team"}, net.now)
    net._after(n3)
    took = net.wait_for(lambda: _has(net, "k1"), 5.0)
    assert took < 2.0
    snap = net.nodes["n7"].machine.snapshot(net.now, addrs=[], alone_ok=False)
    assert snap.tables["keys"]["k1"].value == {"name": "team"}
    # the write came out of the writer's machine as a local change, elsewhere as learnt
    assert net.nodes["n7"].machine.table("keys")["k1"].stamp.node == "n3"


def test_revocation_wins_and_spreads_with_loss() -> None:
    net = _swarm(20, seed=4, loss=0.05)
    net.nodes["n0"].machine.write_table("keys", "k", {"name": "x"}, net.now)
    net._after(net.nodes["n0"])
    net.wait_for(lambda: _has(net, "k"), 10.0)
    net.nodes["n5"].machine.write_table("keys", "k", None, net.now)
    net._after(net.nodes["n5"])
    took = net.wait_for(lambda: _has(net, "k", dead=True), 10.0)
    assert took < 5.0
    # a later write elsewhere cannot bring it back
    net.nodes["n9"].machine.write_table("keys", "k", {"name": "again"}, net.now + 100)
    net._after(net.nodes["n9"])
    net.run_for(5.0)
    assert _has(net, "k", dead=True)


def test_a_node_away_during_a_write_catches_up_by_anti_entropy() -> None:
    net = _swarm(5, seed=2)
    net.kill("n4")
    for i in range(50):
        net.nodes["n1"].machine.write_table("keys", f"k{i}", {"i": i}, net.now)
    net._after(net.nodes["n1"])
    net.wait_for(lambda: _has(net, "k49", among=["n0", "n2", "n3"]), 5.0)
    net.wait_for(lambda: net.all_see("n4", MemberState.DEAD, ["n0", "n1", "n2", "n3"]), 60.0)
    net.run_for(30.0)  # the deltas are long gone from every queue
    fresh = net.restart("n4", CFG, tables=SPECS)
    net.join("n4", "n0")
    took = net.wait_for(lambda: all(_has(net, f"k{i}", among=["n4"]) for i in range(50)), 30.0)
    assert took < 15.0
    got = fresh.machine.table("keys")
    assert len(got) == 50
    digests = {n.machine.replicas.digests()["keys"] for n in net.up_nodes()}
    assert len(digests) == 1


def test_counters_sum_over_slots_written_by_their_owners() -> None:
    net = _swarm(4, seed=5)
    for i, node in enumerate(net.up_nodes()):
        node.machine.write_table("usage", f"{node.node_id}|d", (i + 1, 10), net.now)
        node.machine.write_table("usage", f"{node.node_id}|d", (i + 2, 20), net.now)
        net._after(node)

    def total(node_id: str) -> tuple[int, int]:
        t = net.nodes[node_id].machine.table("usage")
        return (sum(e.value[0] for e in t.values()), sum(e.value[1] for e in t.values()))

    net.wait_for(lambda: all(total(n.node_id) == (2 + 3 + 4 + 5, 80) for n in net.up_nodes()),
                 5.0)


def test_hostile_table_messages_are_counted_and_the_node_lives() -> None:
    net = _swarm(3, seed=6)
    n0 = net.nodes["n0"]
    n0.machine.membership.broadcast("tbl:keys:x", b"\xc1garbage")
    n0.machine.membership.broadcast(
        "tbl:keys:y", msgpack.packb({"o": "d", "t": "keys", "e": [["y", [1, 0, "n0"], 5]]}))
    net._after(n0)
    net.run_for(3.0)
    for i in ("n1", "n2"):
        st = net.nodes[i].machine.replicas.stats
        assert st["bad_messages"] >= 1 and st["bad_entries"] >= 1
        assert net.nodes[i].up and "y" not in net.nodes[i].machine.table("keys")
    assert net.converged()


def test_table_changes_come_out_of_the_machine() -> None:
    net = _swarm(2, seed=7)
    a = net.nodes["n0"].machine
    a.write_table("keys", "k", {"v": 1}, net.now)
    acts = [x for x in a.drain() if isinstance(x, TableChanged)]
    assert acts and acts[0].local and acts[0].entries[0].key == "k"
    assert "tables" in a.record and a.record["tables"]["keys"] == a.replicas.digests()["keys"]
