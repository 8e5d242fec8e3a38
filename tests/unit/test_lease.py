"""Coordinator lease: unit rules and whole-swarm behaviour over simulated gossip."""

from __future__ import annotations

import pytest

from swarmd.core.lease import (
    Claim,
    ClaimDecodeError,
    CoordinatorLease,
    LeaseConfig,
    decode_claim,
    encode_claim,
)
from swarmd.core.membership import PROFILES, MemberState
from swarmd.testing.simnet import SimNet

CFG = PROFILES["local"]
LC = LeaseConfig(duration=3.0, renew_deadline=2.0, retry_period=0.5)


def swarm(n: int, seed: int = 3) -> SimNet:
    net = SimNet(seed)
    for i in range(n):
        net.add(f"n{i}", CFG, record={"started": 100.0 + i}, lease=LC)
    for i in range(1, n):
        net.join(f"n{i}", "n0")
    net.wait_for(net.converged, 5.0)
    return net


def holders(net: SimNet, among: list[str] | None = None) -> list[str]:
    ids = among or [n.node_id for n in net.up_nodes()]
    return [i for i in ids if net.nodes[i].lease.is_holder()]  # type: ignore[union-attr]


def agreed(net: SimNet, among: list[str]) -> tuple[str, int] | None:
    views = {net.nodes[i].lease.current() for i in among}  # type: ignore[union-attr]
    return views.pop() if len(views) == 1 else None


def test_config_order_enforced() -> None:
    with pytest.raises(ValueError):
        LeaseConfig(duration=5, renew_deadline=10, retry_period=2)
    d = LeaseConfig()
    assert (d.duration, d.renew_deadline, d.retry_period) == (15.0, 10.0, 2.0)


def test_claim_codec_strict() -> None:
    c = Claim(3, "node", 7)
    assert decode_claim(encode_claim(c)) == c
    for bad in (b"", b"\xc1", encode_claim(Claim(1, "x", 1))[:-1], b"\x93\x01\x02\x03",
                b"\x94\x00\x01\xa1x\x01", b"\x94\x01\xff\xa1x\x01", b"\x94\x01\x01\xa0\x01"):
        with pytest.raises(ClaimDecodeError):
            decode_claim(bad)


def test_single_node_acquires_after_one_duration_and_renews() -> None:
    lease = CoordinatorLease("a", LC, 0.0)
    assert lease.tick(1.0, [("a", 1.0)]) == []
    out = lease.tick(3.0, [("a", 1.0)])
    assert len(out) == 1 and lease.is_holder() and lease.current() == ("a", 1)
    assert decode_claim(out[0]) == Claim(1, "a", 0)
    assert decode_claim(lease.tick(3.5, [("a", 1.0)])[0]) == Claim(1, "a", 1)


def test_follower_accepts_newer_claims_and_tiebreak() -> None:
    f = CoordinatorLease("z", LC, 0.0)
    f.receive(encode_claim(Claim(2, "b", 0)), "b", 0.1)
    assert f.current() == ("b", 2)
    f.receive(encode_claim(Claim(1, "a", 9)), "a", 0.2)  # older epoch: ignored
    assert f.current() == ("b", 2)
    f.receive(encode_claim(Claim(2, "a", 0)), "a", 0.3)  # same epoch, lower id wins
    assert f.current() == ("a", 2)
    f.receive(b"junk", "a", 0.4)
    assert f.stats["claims_bad"] == 1
    assert f.check(2) and f.check(3) and not f.check(1)
    f.tick(0.3 + LC.duration, [("z", 1.0)])  # no renewal heard: vacant, z acquires
    assert f.is_holder() and f.current() == ("z", 3)


def test_holder_steps_down_on_higher_epoch_and_without_quorum() -> None:
    h = CoordinatorLease("b", LC, 0.0)
    h.tick(3.0, [("b", 1.0)])
    assert h.is_holder()
    h.receive(encode_claim(Claim(5, "c", 0)), "c", 3.1)
    assert not h.is_holder() and h.current() == ("c", 5) and not h.check(1)
    q = CoordinatorLease("q", LC, 0.0)
    q.tick(3.0, [("q", 1.0), ("r", 2.0)], known_members=3)
    assert q.is_holder()
    t = 3.0
    while t < 3.0 + LC.renew_deadline + 0.1:  # 1 of 3 alive: renewals fail
        t += 0.25
        q.tick(t, [("q", 1.0)], known_members=3)
    assert not q.is_holder()


def test_steady_state_single_holder_is_the_oldest() -> None:
    net = swarm(5)
    net.run_for(LC.duration + 3.0)
    assert holders(net) == ["n0"]
    assert agreed(net, list(net.nodes)) == ("n0", 1)
    net.run_for(5.0)
    assert holders(net) == ["n0"] and agreed(net, list(net.nodes)) == ("n0", 1)


def test_lazy_renewals_hold_the_lease_in_a_lossy_swarm_of_30() -> None:
    # Renewals ride only on probes and acks (lazy user messages): they must
    # still reach every node well inside `duration`, at 5% loss.
    net = SimNet(5, loss=0.05, keep_changes=False)
    for i in range(30):
        net.add(f"n{i}", CFG, record={"started": 100.0 + i}, lease=LC)
    for i in range(1, 30):
        net.join(f"n{i}", "n0")
    net.run_for(LC.duration + 5.0)
    for _ in range(40):  # ten lease durations
        net.run_for(LC.duration / 4)
        assert agreed(net, list(net.nodes)) == ("n0", 1)
    assert sum(n.lease.stats["acquired"] for n in net.nodes.values()) == 1  # type: ignore[union-attr]


def test_holder_killed_new_holder_with_higher_epoch() -> None:
    net = swarm(5)
    net.run_for(LC.duration + 3.0)
    net.kill("n0")
    rest = ["n1", "n2", "n3", "n4"]
    took = net.wait_for(lambda: holders(net, rest) == ["n1"] and agreed(net, rest) == ("n1", 2),
                        LC.duration + 4 * LC.retry_period)
    assert took <= LC.duration + 4 * LC.retry_period


def test_partition_two_holders_then_heal_higher_epoch_wins() -> None:
    net = swarm(5)
    net.run_for(LC.duration + 3.0)
    a, b = ["n0", "n1"], ["n2", "n3", "n4"]
    old_epoch = net.nodes["n0"].lease.current()[1]  # type: ignore[union-attr,index]
    net.partition(a, b)
    net.wait_for(lambda: holders(net, b) == ["n2"], LC.duration + 4 * LC.retry_period + 5.0)
    new_epoch = net.nodes["n2"].lease.current()[1]  # type: ignore[union-attr,index]
    assert new_epoch > old_epoch
    # The old holder sees 2 of 5 members alive: no majority, so it stops
    # renewing and steps down within renew_deadline of its last renewal.
    net.wait_for(lambda: holders(net, a) == [], LC.renew_deadline + 1.0)
    assert net.nodes["n0"].lease.stats["stepped_down"] == 1  # type: ignore[union-attr]
    net.heal()
    net.wait_for(lambda: holders(net) == ["n2"] and agreed(net, a + b) == ("n2", new_epoch),
                 3 * CFG.push_pull_interval + 2.0)
    for n in net.nodes.values():
        assert not n.lease.check(old_epoch)  # type: ignore[union-attr]
        assert n.lease.check(new_epoch)  # type: ignore[union-attr]
    net.wait_for(lambda: all(net.all_see(x, MemberState.ALIVE) for x in net.nodes), 5.0)
