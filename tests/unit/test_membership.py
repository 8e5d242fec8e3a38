"""SWIM + Lifeguard membership driven by the simulated network (virtual time)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest

from swarmd.core import wire
from swarmd.core.lifeguard import relay_timeout, suspicion_timeouts
from swarmd.core.membership import (
    PROFILES,
    MemberChanged,
    Membership,
    MemberState,
    Send,
    UserMessage,
)
from swarmd.testing.simnet import SimNet

CFG = PROFILES["local"]


def cluster(n: int, seed: int = 1) -> SimNet:
    net = SimNet(seed)
    ids = [f"n{i}" for i in range(n)]
    for i, nid in enumerate(ids):
        net.add(nid, CFG, record={"started": float(i), "name": nid})
    for nid in ids[1:]:
        net.join(nid, ids[0])
    net.wait_for(net.converged, 5.0)
    return net


def changes(net: SimNet, observer: str, target: str) -> list[MemberState]:
    return [c.new for c in net.nodes[observer].changes if c.node_id == target]


def test_join_of_five_converges_with_records() -> None:
    net = SimNet(1)
    for i in range(5):
        net.add(f"n{i}", CFG, record={"started": float(i), "gpu": i})
    for i in range(1, 5):
        net.join(f"n{i}", "n0", by_addr=(i == 4))  # n4 knows only an address
    took = net.wait_for(net.converged, 5.0)
    assert took < 1.0
    net.run_for(1.0)
    for a in net.nodes.values():
        assert len(a.m.members()) == 5
        for b in net.nodes.values():
            v = a.m.member(b.node_id)
            assert v is not None and v.record["gpu"] == int(b.node_id[1:])
            assert v.record_version == 1


def test_suspect_then_refute() -> None:
    net = cluster(5)
    net.partition(["n3"], ["n0", "n1", "n2", "n4"])
    net.wait_for(lambda: any(n.state_of("n3") is MemberState.SUSPECT
                             for n in net.nodes.values() if n.node_id != "n3"), 2.0)
    net.heal()
    net.wait_for(lambda: net.all_see("n3", MemberState.ALIVE), 3.0)
    net.run_for(2.0)
    n3 = net.nodes["n3"].m
    assert n3.stats["refutations"] >= 1 and n3.incarnation >= 1
    for obs in ("n0", "n1", "n2", "n4"):
        assert MemberState.DEAD not in changes(net, obs, "n3")
        assert net.nodes[obs].m.member("n3").incarnation == n3.incarnation  # type: ignore[union-attr]


def test_direct_suspect_message_is_refuted() -> None:
    m = Membership(node_id="a", name="a", addrs=["/a"], config=CFG, now=0.0,
                   rng=random.Random(0))
    m.receive("b", wire.encode_frame([wire.Alive("b", 0, "b", ("/b",))]), 0.1)
    m.drain()
    m.receive("b", wire.encode_frame([wire.Suspect("a", 0, "b")]), 0.2)
    assert m.incarnation == 1 and m.stats["refutations"] == 1
    # The refutation (alive, inc 1) goes out with the next gossip.
    m.tick(m.next_deadline())
    sent = [a for a in m.drain() if isinstance(a, Send)]
    msgs = [x for s in sent for x in wire.decode_frame(s.payload).messages]
    assert wire.Alive("a", 1, "a", ("/a",)) in msgs


def test_indirect_probe_saves_node_behind_lossy_link() -> None:
    net = cluster(5)
    net.set_link_loss("n0", "n1", 1.0)
    net.run_for(20.0)
    assert net.nodes["n0"].m.stats["indirect_probes"] > 0
    assert MemberState.SUSPECT not in changes(net, "n0", "n1")
    assert MemberState.SUSPECT not in changes(net, "n1", "n0")
    assert net.converged()


def test_silent_node_goes_suspect_then_dead_within_bound() -> None:
    net = cluster(5)
    net.kill("n2")
    lo, hi = suspicion_timeouts(CFG.suspicion_mult, CFG.suspicion_max_timeout_mult, 5,
                                CFG.probe_interval)
    # Probed within (N-1) probe intervals, at most the max suspicion timeout,
    # then a few gossip rounds.
    bound = 4 * CFG.probe_interval + hi + 10 * CFG.gossip_interval
    took = net.wait_for(lambda: net.all_see("n2", MemberState.DEAD), bound)
    assert took >= lo
    for obs in ("n0", "n1", "n3", "n4"):
        seen = changes(net, obs, "n2")
        assert seen[-1] is MemberState.DEAD and MemberState.LEFT not in seen
    assert any(MemberState.SUSPECT in changes(net, o, "n2") for o in ("n0", "n1", "n3", "n4"))


def test_connection_loss_hint_speeds_detection_of_a_crash() -> None:
    lo, _ = suspicion_timeouts(CFG.suspicion_mult, CFG.suspicion_max_timeout_mult, 5,
                               CFG.probe_interval)
    survivors = ("n0", "n1", "n3", "n4")

    def detect(seed: int, hint: bool) -> float:
        net = cluster(5, seed)
        net.kill("n2")
        if hint:  # a crashed process: every peer sees its connection reset
            for obs in survivors:
                net.connection_lost(obs, "n2")
        took = net.wait_for(lambda: net.all_see("n2", MemberState.DEAD), 30.0)
        if hint:
            assert all(net.nodes[o].m.stats["probe_hints"] == 1 for o in survivors)
        return took

    hinted = [detect(s, True) for s in range(8)]
    plain = [detect(s, False) for s in range(8)]
    # Every survivor probes at once, so each suspects within one interval and
    # the confirmations bring the timeout to its minimum.
    bound = lo + 2 * CFG.probe_interval + 10 * CFG.gossip_interval
    assert all(lo <= t <= bound for t in hinted), hinted
    assert sorted(hinted)[4] < sorted(plain)[4]


def test_connection_loss_hint_on_a_healthy_member_costs_one_probe() -> None:
    net = cluster(5)
    m = net.nodes["n0"].m
    probes = m.stats["probes"]
    net.connection_lost("n0", "n2")
    net.connection_lost("n0", "n2")  # within probe_interval: ignored
    net.connection_lost("n0", "gone")  # not a member: ignored
    assert m.stats["probe_hints"] == 1
    targets = []
    for _ in range(21):  # probed at once (beside a probe in flight, if any)
        for p in (m._probe, m._urgent):
            if p is not None and p.target not in targets:
                targets.append(p.target)
        net.run_for(CFG.probe_interval / 20)
    assert "n2" in targets[:2] and m.stats["probes"] <= probes + 2
    net.run_for(10 * CFG.probe_interval)
    assert all(c.new is MemberState.ALIVE for c in net.nodes["n0"].changes
               if c.node_id == "n2")
    assert net.all_see("n2", MemberState.ALIVE)


def test_graceful_leave_is_left_not_dead() -> None:
    net = cluster(5)
    n4 = net.nodes["n4"].m
    n4.leave(net.now)
    grace = n4.leave_grace
    net.wait_for(lambda: n4.leave_done(net.now), grace + 0.1)
    net.wait_for(lambda: net.all_see("n4", MemberState.LEFT,
                                     among=["n0", "n1", "n2", "n3"]), 0.1)
    net.kill("n4")
    net.run_for(10.0)
    for obs in ("n0", "n1", "n2", "n3"):
        assert changes(net, obs, "n4")[-1] is MemberState.LEFT
        assert MemberState.DEAD not in changes(net, obs, "n4")


def test_dead_member_reaped_after_reap_after() -> None:
    net = cluster(4)
    net.kill("n3")
    net.wait_for(lambda: net.all_see("n3", MemberState.DEAD), 10.0)
    died = max(net.nodes[o].m.member("n3").state_since  # type: ignore[union-attr]
               for o in ("n0", "n1", "n2"))
    net.run_until(died + CFG.reap_after - 1.0)
    assert all(net.nodes[o].m.member("n3") is not None for o in ("n0", "n1", "n2"))
    net.run_until(died + CFG.reap_after + 5.0)  # housekeeping runs every <= 3 s here
    assert all(net.nodes[o].m.member("n3") is None for o in ("n0", "n1", "n2"))
    assert net.nodes["n0"].m.counts()[MemberState.DEAD] == 0


def test_partition_and_heal_converge() -> None:
    net = cluster(6)
    a, b = ["n0", "n1", "n2"], ["n3", "n4", "n5"]
    net.partition(a, b)
    net.wait_for(lambda: all(net.all_see(x, MemberState.DEAD, among=a) for x in b)
                 and all(net.all_see(x, MemberState.DEAD, among=b) for x in a), 15.0)
    net.heal()
    took = net.wait_for(net.converged, 15.0)
    assert took < 3 * CFG.push_pull_interval + 1.0


def test_restart_with_same_id_comes_back_with_higher_incarnation() -> None:
    net = cluster(4)
    net.nodes["n3"].m.set_addrs(["/sim/n3", "/sim/n3b"], net.now)  # incarnation 1
    net.run_for(1.0)
    net.kill("n3")
    net.wait_for(lambda: net.all_see("n3", MemberState.DEAD), 10.0)
    old_inc = net.nodes["n0"].m.member("n3").incarnation  # type: ignore[union-attr]
    net.restart("n3", CFG, record={"started": 99.0, "gen": 2})
    assert net.nodes["n3"].m.incarnation == 0
    net.join("n3", "n0")
    net.wait_for(net.converged, 5.0)
    net.run_for(2.0)
    for obs in ("n0", "n1", "n2"):
        v = net.nodes[obs].m.member("n3")
        assert v is not None and v.state is MemberState.ALIVE
        assert v.incarnation > old_inc
        assert v.record.get("gen") == 2


def test_quick_restart_before_detection_gets_its_new_record_through() -> None:
    net = cluster(3)
    n2 = net.nodes["n2"].m
    for i in range(5):
        n2.set_record({"started": 2.0, "v": i}, net.now)
        net.run_for(2.0)
    assert net.nodes["n0"].m.member("n2").record_version == 6  # type: ignore[union-attr]
    net.restart("n2", CFG, record={"started": 2.0, "v": "new"})
    net.join("n2", "n0")
    net.wait_for(lambda: all(net.nodes[o].m.member("n2").record.get("v") == "new"  # type: ignore[union-attr]
                             for o in ("n0", "n1")), 5.0)


def test_record_updates_spread_as_deltas_and_lagging_nodes_pull() -> None:
    net = cluster(5)
    net.loss = 0.2
    n1 = net.nodes["n1"].m
    for i in range(6):
        n1.set_record({"started": 1.0, "name": "n1", "load": {"cpu": i}}, net.now)
        net.run_for(1.5)
    net.wait_for(lambda: all(n.m.member("n1").record["load"] == {"cpu": 5}  # type: ignore[union-attr]
                             for n in net.nodes.values()), 10.0)
    assert sum(n.m.stats["records_applied"] for n in net.nodes.values()) > 0


def test_record_rate_limit_grows_with_swarm_size() -> None:
    small = cluster(3).nodes["n0"].m.record_interval()
    m = Membership(node_id="x", name="x", addrs=[], config=CFG, now=0.0,
                   rng=random.Random(0), record={"load": {"cpu": 1.0}})
    for i in range(200):
        m.receive(f"p{i}", wire.encode_frame([wire.Alive(f"p{i}", 0, "p", ())]), 0.0)
    assert m.record_interval() > 50 * small


def test_user_broadcast_reaches_everyone_once() -> None:
    net = cluster(6)
    net.nodes["n2"].m.broadcast("k", b"one")
    net.run_for(0.05)
    net.nodes["n2"].m.broadcast("k", b"two")  # replaces the queued one at n2
    net.run_for(3.0)
    for n in net.nodes.values():
        got = [u for u in n.user if u.key == "k"]
        if n.node_id == "n2":
            assert got == []
        else:
            assert got and got[-1] == UserMessage("n2", "k", b"two")
            assert len(got) == len(set(got))


def test_lazy_broadcast_rides_on_probes_and_starts_no_gossip_round() -> None:
    net = cluster(8)
    net.run_for(30 * CFG.busy_sync_interval)  # past the join traffic
    rounds = sum(n.m.stats["gossip_frames"] for n in net.nodes.values())
    net.nodes["n3"].m.broadcast("k", b"lazy", lazy=True)
    took = net.wait_for(lambda: all(UserMessage("n3", "k", b"lazy") in n.user
                                    for n in net.nodes.values() if n.node_id != "n3"),
                        10 * CFG.probe_interval * 8)
    assert sum(n.m.stats["gossip_frames"] for n in net.nodes.values()) == rounds
    assert took > CFG.gossip_interval  # carried at the probes' pace
    # The same news sent eagerly starts gossip rounds and arrives sooner.
    net.nodes["n3"].m.broadcast("k", b"eager")
    took_eager = net.wait_for(lambda: all(UserMessage("n3", "k", b"eager") in n.user
                                          for n in net.nodes.values() if n.node_id != "n3"),
                              10 * CFG.probe_interval * 8)
    assert sum(n.m.stats["gossip_frames"] for n in net.nodes.values()) > rounds
    assert took_eager < took


def test_lazy_and_eager_broadcasts_of_one_key_replace_each_other() -> None:
    m = Membership(node_id="a", name="a", addrs=[], config=CFG, now=0.0, rng=random.Random(0))
    m.receive("b", wire.encode_frame([wire.Alive("b", 0, "b", ())]), 0.0)
    m.drain()
    m.broadcast("lease", b"one")
    m.broadcast("lease", b"two", lazy=True)
    m.tick(1.0)
    sent = [wire.decode_frame(a.payload) for a in m.drain() if isinstance(a, Send)]
    users = [x for f in sent for x in f.messages if isinstance(x, wire.User)]
    assert users and {u.payload for u in users} == {b"two"} and all(u.lazy for u in users)


def test_malformed_and_unknown_input_is_dropped_and_counted() -> None:
    m = Membership(node_id="a", name="a", addrs=[], config=CFG, now=0.0, rng=random.Random(0))
    m.receive("b", b"\xff\x00garbage", 0.0)
    m.receive("b", bytes.fromhex("9201926301"), 0.0)  # unknown message type 99
    m.receive("b", wire.encode_frame([wire.Ping(1, "not-a")]), 0.0)  # misdirected
    assert m.stats["dropped_malformed"] == 1
    assert m.stats["dropped_unknown"] == 1
    assert m.stats["dropped_misdirected"] == 1
    assert not [a for a in m.drain() if isinstance(a, Send)]


def test_next_deadline_always_moves_forward() -> None:
    net = cluster(4)
    for n in net.nodes.values():
        n.m.tick(net.now)
        assert n.m.next_deadline() > net.now


def test_member_changed_events_and_views() -> None:
    m = Membership(node_id="a", name="a", addrs=["/a"], config=CFG, now=0.0,
                   rng=random.Random(0), record={"x": 1})
    m.receive("b", wire.encode_frame([wire.Alive("b", 2, "bee", ("/b",))]), 1.0)
    ev = [a for a in m.drain() if isinstance(a, MemberChanged)]
    assert ev and ev[0].old is None and ev[0].new is MemberState.ALIVE
    assert ev[0].view.name == "bee" and ev[0].view.incarnation == 2
    me = m.member("a")
    assert me is not None and me.record == {"x": 1} and me.record_version == 1


def test_config_profiles_and_validation() -> None:
    lan = PROFILES["lan"]
    assert (lan.probe_interval, lan.probe_timeout, lan.indirect_checks, lan.suspicion_mult,
            lan.gossip_interval, lan.gossip_nodes, lan.push_pull_interval) == (
        1.0, 0.5, 3, 3, 0.2, 3, 30.0)
    assert set(PROFILES) == {"lan", "wan", "local"}
    with pytest.raises(ValueError):
        dataclasses.replace(lan, probe_timeout=2.0)
    with pytest.raises(ValueError):
        dataclasses.replace(lan, gossip_interval=0)


def test_lost_join_is_retried_until_a_reply() -> None:
    net = SimNet(5)
    net.add("n0", CFG)
    net.add("n1", CFG)
    net.set_link_loss("n0", "n1", 1.0)
    net.join("n1", "n0")
    net.run_for(CFG.probe_interval)
    net.set_link_loss("n0", "n1", 0.0)
    net.wait_for(net.converged, 3 * CFG.probe_interval)


def test_digest_sync_sends_only_what_the_peer_lacks() -> None:
    def node(nid: str) -> Membership:
        return Membership(node_id=nid, name=nid, addrs=[f"/sim/{nid}"], config=CFG, now=0.0,
                          rng=random.Random(nid))
    a, b = node("a"), node("b")
    for i in range(300):
        frame = wire.encode_frame([wire.Alive(f"p{i}", 0, "p", (f"/sim/p{i}",))])
        a.receive(f"p{i}", frame, 0.0)
        if i != 7:
            b.receive(f"p{i}", frame, 0.0)
    a.drain(), b.drain()
    a._sync_with("b")  # digest: 2 bytes per member
    (digest,) = [x for x in a.drain() if isinstance(x, Send)]
    assert len(digest.payload) < 2 * 302 + 40
    b.receive("a", digest.payload, 0.1)
    out = [x for x in b.drain() if isinstance(x, Send)]
    a_msgs = [m for x in out for m in wire.decode_frame(x.payload).messages]
    assert any(isinstance(m, wire.Sync) and m.reply for m in a_msgs)
    sent = {e.node for m in a_msgs if isinstance(m, wire.PushPull) for e in m.states}
    assert "b" in sent and len(sent) <= 4  # b itself (+ rare 16-bit false mismatches)
    for x in out:
        a.receive("b", x.payload, 0.2)
    back = [m for x in a.drain() if isinstance(x, Send)
            for m in wire.decode_frame(x.payload).messages]
    lacks = {e.node for m in back if isinstance(m, wire.PushPull) for e in m.states}
    assert "p7" in lacks and len(lacks) <= 4
    assert b.member("p7") is None
    for x in back:
        b.receive("a", wire.encode_frame([x]), 0.3)
    assert b.member("p7") is not None and b.member("a") is not None


def test_join_spreads_by_sync_without_gossip_and_v1_peers_get_full_state() -> None:
    cfg = dataclasses.replace(CFG, join_retransmits=0, push_pull_interval=1000.0)
    net = SimNet(3)
    for i in range(8):
        net.add(f"n{i}", cfg)
    for i in range(1, 8):
        net.join(f"n{i}", "n0")
    net.wait_for(net.converged, 10 * cfg.busy_sync_interval)
    assert sum(n.m.stats["syncs"] for n in net.nodes.values()) > 0
    m = net.nodes["n1"].m
    m._members["n2"].wire_version = 1  # a peer seen writing version 1
    m._sync_with("n2")
    sent = [x for x in m.drain() if isinstance(x, Send)]
    assert [type(msg) for msg in wire.decode_frame(sent[0].payload).messages] == [wire.PushPull]


def _big_record(i: int) -> dict[str, object]:
    gpus = [{"index": g, "name": "NVIDIA RTX 4090", "memory_total": 24 * 2**30,
             "utilization": 0.0} for g in range(4)]
    return {"name": f"n{i}", "started": float(i), "caps": {"gpus": gpus},
            "engines": [{"id": f"llamacpp-{i}", "models": [f"model-{k}" for k in range(20)]}]}


def joined_through_seed(record: Callable[[int], dict[str, object]], n: int = 8) -> SimNet:
    """``n`` nodes with records, all joined through n0, converged and settled."""
    net = SimNet(4)
    for i in range(n):
        net.add(f"n{i}", CFG, record=record(i))
    for i in range(1, n):
        net.join(f"n{i}", "n0")
    net.wait_for(net.converged, 10.0)
    net.run_for(2.0)
    for node in net.nodes.values():
        for i in range(n):
            assert dict(node.m.member(f"n{i}").record) == record(i)  # type: ignore[union-attr]
    return net


def _small_record(i: int) -> dict[str, object]:
    return {"name": f"n{i}", "started": float(i)}


def test_large_frames_are_compressed_between_v3_peers_and_state_still_converges() -> None:
    net = joined_through_seed(_big_record)
    stats = [n.m.stats for n in net.nodes.values()]
    assert sum(s["compressed_frames"] for s in stats) > 0
    assert sum(s["compress_saved_bytes"] for s in stats) > 0


def test_no_compression_towards_a_peer_seen_writing_v2_or_when_off() -> None:
    net = SimNet(5)
    for i in range(3):
        net.add(f"n{i}", CFG, record=_big_record(i))
    for i in range(1, 3):
        net.join(f"n{i}", "n0")
    net.wait_for(net.converged, 10.0)
    m = net.nodes["n1"].m
    m.drain()
    msgs = [wire.encode_message(wire.Record(f"n{i}", 1, _big_record(i), False))
            for i in range(3)]
    m._members["n2"].wire_version = 2  # an older peer: reads frames, not COMPRESSED
    m._send("n2", msgs)
    m._members["n0"].wire_version = 3
    m._send("n0", msgs)
    sent = {x.to: x.payload for x in m.drain() if isinstance(x, Send)}
    raw = wire.frame(msgs)
    assert len(raw) >= CFG.compress_min_bytes
    assert len(sent["n2"]) == len(raw)
    assert len(sent["n0"]) < len(raw)
    assert wire.decode_frame(sent["n0"]).messages == wire.decode_frame(sent["n2"]).messages
    off = Membership(node_id="x", name="x", addrs=[], now=0.0, rng=random.Random(0),
                     config=dataclasses.replace(CFG, compress_min_bytes=0))
    assert off.config.compress_min_bytes == 0


def test_sync_and_join_replies_carry_records_so_joins_need_few_pulls() -> None:
    net = joined_through_seed(_small_record)
    # Without records riding along, every joiner would pull every record it
    # learns (~N each); now only the seed pulls each joiner's (a joiner does not
    # know the seed's version yet, so its join carries no records).
    assert net.nodes["n0"].m.stats["record_pulls"] <= 7
    assert sum(net.nodes[f"n{i}"].m.stats["record_pulls"] for i in range(1, 8)) <= 2


def test_records_ride_with_entries_only_towards_v3_peers() -> None:
    net = cluster(3)
    m = net.nodes["n0"].m
    m.drain()
    members = [m._members[n] for n in ("n1", "n2")]
    m._members["n1"].wire_version = 2
    m._send_entries("n1", (), wire.PP_REPLY, members, with_records=True)
    m._members["n2"].wire_version = 3
    m._send_entries("n2", (), wire.PP_REPLY, members, with_records=True)
    sent = {x.to: wire.decode_frame(x.payload).messages for x in m.drain()
            if isinstance(x, Send)}
    old, new = sent["n1"], sent["n2"]
    assert [type(x) for x in old] == [wire.PushPull] and not old[0].records  # type: ignore[union-attr]
    assert [type(x) for x in new] == [wire.PushPull, wire.Record, wire.Record]
    assert new[0].records  # type: ignore[union-attr]
    assert [r.node for r in new[1:]] == ["n1", "n2"]  # type: ignore[union-attr]


@pytest.mark.parametrize("profile", ["lan", "local", "wan"])
def test_helpers_nack_before_the_prober_stops_counting(profile: str) -> None:
    # A truly dead node: its prober's helpers nack in time, so the prober's
    # own health score stays 0 (Lifeguard raises it only for missing nacks).
    cfg = PROFILES[profile]
    assert cfg.probe_timeout + relay_timeout(cfg) < cfg.probe_interval
    net = SimNet(3)
    for i in range(5):
        net.add(f"n{i}", cfg, record={"started": float(i)})
    for i in range(1, 5):
        net.join(f"n{i}", "n0")
    net.wait_for(net.converged, 60 * cfg.probe_interval)
    net.kill("n4")
    net.wait_for(lambda: net.all_see("n4", MemberState.DEAD), 60 * cfg.probe_interval)
    survivors = [net.nodes[f"n{i}"].m for i in range(4)]
    assert sum(m.stats["probe_failures"] for m in survivors) > 0
    assert sum(m.stats["nacks_sent"] for m in survivors) > 0
    assert [m.health for m in survivors] == [0, 0, 0, 0]
