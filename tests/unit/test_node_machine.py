"""swarmd.core.node.NodeMachine: the one node machine the daemon and the simulator drive.

The wiring tests read the source of the daemon's trio shell and of the
simulator: each must build a NodeMachine and neither may reach past it into
membership or the lease (tick them, hand them frames, deliver lease claims).
If one of them grows its own copy of the wiring, these fail.
"""

from __future__ import annotations

import ast
import math
import random
from pathlib import Path

from swarmd.core.lease import LeaseConfig
from swarmd.core.membership import MemberState, Send
from swarmd.core.membership_config import PROFILES
from swarmd.core.node import CoordinatorChanged, NodeMachine
from swarmd.core.record import parse_record
from swarmd.testing.simnet import SimNet

ROOT = Path(__file__).resolve().parents[2]
SHELLS = {"daemon": ROOT / "swarmd/runtime/node.py", "simulator": ROOT / "swarmd/testing/simnet.py"}
#: Calls that only the machine may make on membership / the lease.
MACHINE_ONLY = {"tick_lease", "deliver_claim", "tick_claims", "set_record"}
FORBIDDEN_CTORS = {"Membership", "CoordinatorLease"}
LEASE = LeaseConfig(duration=3.0, renew_deadline=2.0, retry_period=0.5)


def _calls(path: Path) -> tuple[set[str], list[str]]:
    """(names called, dotted '<obj>.<attr>.<method>' chains called) in ``path``."""
    names: set[str] = set()
    chains: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name):
            names.add(f.id)
        elif isinstance(f, ast.Attribute):
            names.add(f.attr)
            parts = [f.attr]
            v = f.value
            while isinstance(v, ast.Attribute):
                parts.append(v.attr)
                v = v.value
            chains.append(".".join(reversed(parts)))
    return names, chains


def test_daemon_and_simulator_drive_the_same_machine() -> None:
    for who, path in SHELLS.items():
        names, chains = _calls(path)
        assert "NodeMachine" in names, f"{who} does not build a NodeMachine"
        assert not names & FORBIDDEN_CTORS, f"{who} builds its own membership/lease"
        assert not names & MACHINE_ONLY, f"{who} wires membership and lease itself"
        reach = [c for c in chains
                 if c.split(".")[-2:-1] and c.split(".")[-2] in ("m", "membership", "lease")
                 and c.split(".")[-1] in ("tick", "receive", "drain", "introduce",
                                           "hint_unreachable", "leave", "broadcast")]
        assert not reach, f"{who} drives membership/lease past the machine: {reach}"


def test_simulated_nodes_are_node_machines() -> None:
    net = SimNet(1)
    a = net.add("a", PROFILES["local"], lease=LEASE, record={"started": 1.0})
    assert type(a.machine) is NodeMachine
    assert a.m is a.machine.membership and a.lease is a.machine.lease


def _machine(node_id: str = "a", **kw: object) -> NodeMachine:
    args: dict[str, object] = dict(node_id=node_id, name=node_id, addrs=[f"/sim/{node_id}"],
                                   membership=PROFILES["local"], lease=LEASE, now=0.0,
                                   rng=random.Random(1), record={"started": 1.0})
    args.update(kw)
    return NodeMachine(**args)  # type: ignore[arg-type]


def test_alone_the_machine_elects_itself_and_says_so() -> None:
    m = _machine()
    now, seen = 0.0, []
    while now < 10 and not seen:
        now = max(now + 0.01, m.next_deadline())
        m.tick(now)
        seen = [a for a in m.drain() if isinstance(a, CoordinatorChanged)]
    assert seen and seen[0].after == ("a", 1) and seen[0].is_holder
    assert seen[0].before is None
    assert m.coordinator() == ("a", 1)
    snap = m.snapshot(now, addrs=["/sim/a"], alone_ok=True, stats={"p2p_x": 3})
    assert snap.coordinator == ("a", 1) and snap.joined and snap.nodes[0].is_self
    assert snap.stats["p2p_x"] == 3 and "membership_bytes_out" in snap.stats


def test_two_machines_exchange_frames_and_records() -> None:
    a, b = _machine("a"), _machine("b", record={"started": 2.0})
    b.introduce(None, ["/sim/a"], 0.0)
    now = 0.0
    for _ in range(400):
        now += 0.01
        for src, dst in ((a, b), (b, a)):
            src.tick(now)
            for act in src.drain():
                if isinstance(act, Send):
                    dst.receive(src.node_id, act.payload, now)
        if a.alive_ids() == {"a", "b"} == b.alive_ids():
            break
    assert a.alive_ids() == {"a", "b"}
    a.update_record({"draining": True}, now)
    for _ in range(200):
        now += 0.01
        a.tick(now)
        for act in a.drain():
            if isinstance(act, Send):
                b.receive("a", act.payload, now)
        b.tick(now)
        b.drain()
        view = b.membership.member("a")
        if view is not None and parse_record(view.record).draining:
            break
    view = b.membership.member("a")
    assert view is not None and parse_record(view.record).draining


def test_load_is_gossiped_when_it_moves_or_the_heartbeat_is_due() -> None:
    m = _machine(load_heartbeat=30.0)
    low = {"cpu_percent": 10.0, "memory_used": 100, "memory_available": 1 << 30}
    assert m.offer_load(low, 1.0)  # the first reading always goes out
    assert m.record["load"] == low
    assert not m.offer_load(dict(low), 2.0)  # unchanged, heartbeat not due
    assert m.offer_load(dict(low), 31.5)  # heartbeat due
    assert m.offer_load({**low, "cpu_percent": 95.0}, 32.0)  # a significant move


def test_discovery_and_reconnect_rules() -> None:
    m = _machine()
    assert not m.discovered("a", ["/sim/a"], 0.0)  # ourselves
    assert m.discovered("b", ["/sim/b"], 0.0)  # unknown: introduce
    m.drain()
    assert m.reconnect_one(random.Random(0), 0.1) is None  # nobody dead
    seeds = [(("/sim/c",), None), (("/sim/a",), "a")]
    assert m.join_seeds(seeds, lambda addrs: None, 0.2) == 1  # only we are alive
    sent = [a for a in m.drain() if isinstance(a, Send)]
    assert any(s.addrs == ("/sim/c",) for s in sent)
    assert m.membership.member("a") is not None
    assert m.membership.member("a").state is MemberState.ALIVE  # type: ignore[union-attr]


def test_a_record_with_a_bad_started_does_not_stop_the_lease() -> None:
    net = SimNet(2)
    net.add("a", PROFILES["local"], lease=LEASE, record={"started": "yesterday"})
    net.add("b", PROFILES["local"], lease=LEASE, record={"started": 5.0})
    net.join("b", "a")
    net.run_for(12.0)
    holders = {n.lease.current() for n in net.nodes.values() if n.lease is not None}
    # b has a real start time, a's reads as +inf (least preferred): b holds
    assert holders == {("b", 1)}
    assert math.isinf(parse_record({"started": "yesterday"}).started)
