"""Membership at scale in virtual time: convergence, failure detection, bytes.

Drives the daemon's sans-IO node machine (swarmd.core.node.NodeMachine, in
swarmd/testing/simnet.py) with the LAN profile
(memberlist defaults), 1% loss on every link, 2-5 ms one-way delay, realistic
52-character peer ids and a ~200-byte record per node.

Phases per swarm size N:
  join      every node introduces itself to the seed (node 0) at a uniformly
            random time in [0, join_window); converge = every node sees all N
            alive, measured from the last join.
  steady    30 s measured after 30 s of settling (probes, push-pull, no changes).
  failure   one random node goes silent; time until every other node sees it
            dead.
Bytes are everything a node sends (probes, acks, gossip, push-pull, syncs)
divided by the phase's virtual duration; record bytes (gossiped records and
pull replies: each node must receive every record once whatever the
protocol) are shown apart, and so is the busiest node (the seed answers
every join with the full state).

Run: PYTHONPATH=. .venv/bin/python bench/sim_membership.py [--quick | --sizes 100,1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time

from swarmd.core.membership import PROFILES, MemberChanged, MemberState
from swarmd.testing.simnet import SimNet, SimNode

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def peer_id(rng: random.Random) -> str:
    return "12D3KooW" + "".join(rng.choice(_B58) for _ in range(44))


def bytes_out(net: SimNet) -> int:
    """Bytes sent by up nodes as they went on the wire (records included,
    after compression)."""
    return sum(n.m.stats["bytes_out"] for n in net.nodes.values() if n.up)


def record_bytes(net: SimNet) -> int:
    """Record payload bytes (gossiped records and pull replies) before compression."""
    return sum(n.m.stats["record_bytes_out"] for n in net.nodes.values() if n.up)


def saved_bytes(net: SimNet) -> int:
    return sum(n.m.stats["compress_saved_bytes"] for n in net.nodes.values() if n.up)


def run(n: int, seed: int, join_window: float, compress: bool = True) -> dict[str, float]:
    cfg = PROFILES["lan"]
    if not compress:
        cfg = dataclasses.replace(cfg, compress_min_bytes=0)
    rng = random.Random(seed)
    net = SimNet(seed, delay=0.002, jitter=0.003, loss=0.01, keep_changes=False)
    ids = [peer_id(rng) for _ in range(n)]
    for i, nid in enumerate(ids):
        rec = {"name": f"node-{i:04d}", "started": 1.7e9 + i, "api": f"10.0.{i // 250}.{i % 250}:4180",
               "load": {"cpu_percent": 12.5, "load_avg": [0.5, 0.4, 0.3], "memory_used": 123456789},
               "draining": False}
        net.add(nid, cfg, record=rec, name=f"node-{i:04d}",
                addr=f"/ip4/10.{i // 65536}.{i // 256 % 256}.{i % 256}/tcp/4001")
    wall0 = time.perf_counter()
    joins = sorted((rng.uniform(0, join_window), nid) for nid in ids[1:])
    for t, nid in joins:
        net.run_until(t)
        net.join(nid, ids[0])
    last_join = net.now

    def converged() -> bool:
        return all(node.m.counts()[MemberState.ALIVE] == n for node in net.nodes.values())

    # Like the daemon's seed loop: a node that is still alone re-introduces
    # itself every 5 s (its join push-pull may have been lost).
    def check() -> bool:
        if converged():
            return True
        if net.now - check.last >= 5.0:  # type: ignore[attr-defined]
            check.last = net.now  # type: ignore[attr-defined]
            for node in net.nodes.values():
                if node.m.counts()[MemberState.ALIVE] == 1 and node.node_id != ids[0]:
                    net.join(node.node_id, ids[0])
        return False

    check.last = net.now  # type: ignore[attr-defined]
    conv = net.wait_for(check, 300.0, every=0.25)
    b1 = bytes_out(net)
    join_rate = (b1 - 0) / n / net.now  # from t=0 (joins included) to convergence
    rec_rate = record_bytes(net) / n / net.now
    saved = saved_bytes(net) / max(1, b1 + saved_bytes(net))
    max_rate = max(x.m.stats["bytes_out"] for x in net.nodes.values()) / net.now
    wall_join = time.perf_counter() - wall0

    net.run_for(30.0)  # let the join's record gossip die out
    b1 = bytes_out(net)
    t0 = net.now
    net.run_for(30.0)
    steady = (bytes_out(net) - b1) / n / (net.now - t0)

    victim = ids[rng.randrange(1, n)]
    seen_dead: set[str] = set()

    def on_change(node: SimNode, ch: MemberChanged) -> None:
        if ch.node_id == victim and ch.new is MemberState.DEAD:
            seen_dead.add(node.node_id)

    net.on_change = on_change
    net.kill(victim)
    b2 = bytes_out(net)
    t1 = net.now
    detect = net.wait_for(lambda: len(seen_dead) >= n - 1, 300.0, every=0.25)
    fail_rate = (bytes_out(net) - b2) / (n - 1) / (net.now - t1)
    wall = time.perf_counter() - wall0
    del last_join
    return {
        "n": n, "converge_s": conv, "join_Bps": join_rate, "steady_Bps": steady,
        "rec_Bps": rec_rate, "max_Bps": max_rate, "saved": saved, "compress": compress,
        "detect_s": detect, "failure_Bps": fail_rate, "wall_join_s": wall_join,
        "wall_s": wall, "events": net.events,
        "refutations": sum(x.m.stats["refutations"] for x in net.nodes.values()),
        "false_dead": sum(x.m.stats["deaths"] for x in net.nodes.values()) - (n - 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--quick", action="store_true", help="100 and 300 nodes (< 1 min)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--join-window", type=float, default=10.0)
    ap.add_argument("--compression", choices=("on", "off", "both"), default="on",
                    help="membership frame compression (both: each size twice, side by side)")
    args = ap.parse_args()
    sizes = "100,300" if args.quick else args.sizes
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.compression]
    hdr = (f"{'nodes':>6} {'zlib':>4} {'converge s':>10} {'join KB/s':>9} {'saved':>5} "
           f"{'rec KB/s':>8} {'max KB/s':>8} {'steady KB/s':>11} {'detect s':>8} "
           f"{'fail KB/s':>9} {'refut':>5} {'false dead':>10} {'events':>9} {'wall s':>7}")
    print("converge: virtual s after the last join; KB/s: sent per node, mean, as on the wire")
    print("(records included, compressed); join: from t=0 to convergence; saved: share")
    print("compression saved; rec: record payload before compression; max: busiest node")
    print(hdr, flush=True)
    for s, comp in [(s, c) for s in sizes.split(",") for c in modes]:
        r = run(int(s), args.seed, args.join_window, comp)
        print(f"{r['n']:>6} {'on' if comp else 'off':>4} {r['converge_s']:>10.2f} "
              f"{r['join_Bps'] / 1e3:>9.2f} {100 * r['saved']:>4.0f}% "
              f"{r['rec_Bps'] / 1e3:>8.2f} {r['max_Bps'] / 1e3:>8.1f} "
              f"{r['steady_Bps'] / 1e3:>11.2f} {r['detect_s']:>8.2f} "
              f"{r['failure_Bps'] / 1e3:>9.2f} {r['refutations']:>5} {r['false_dead']:>10} "
              f"{r['events']:>9} {r['wall_s']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
