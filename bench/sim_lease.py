"""The coordinator lease over gossip, in virtual time: renewal spread and cost.

Drives the daemon's own node machine (swarmd.core.node.NodeMachine:
membership, lease and their wiring) in swarmd/testing/simnet.py with the lan profile, the
client-go lease timing (15/10/2 s), 1% loss and 2-5 ms delay on every link.
After the swarm has settled and elected its coordinator, for ``--seconds``
of virtual time it measures:

  spread     for each renewal the holder sends, time until every other node
             has received it (median over the renewals that reached everyone:
             a relay drops a renewal it has not passed on yet when the next
             one arrives, so some never reach every node, and need not);
  gap        the longest any node went without receiving a renewal: what
             must stay well inside the lease duration (15 s) for followers
             never to see the lease lapse;
  agree      share of 1-s samples at which every node names the same holder;
  acquired   new tenures during the window (0 = the lease was held throughout);
  frames     frames each node sends per second, everything included.

Each size runs twice, side by side: renewals ``lazy`` (what swarmd does: they
ride on probes and acks) and ``eager`` (each renewal gossiped like other news,
as before).  Run: PYTHONPATH=. .venv/bin/python bench/sim_lease.py [--sizes 10,100,300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from swarmd.core.lease import Claim, LeaseConfig, decode_claim
from swarmd.core.membership import PROFILES, Membership
from swarmd.testing.simnet import SimNet


def _eager(broadcast: Callable[..., None]) -> Callable[..., None]:
    def wrapped(self: Membership, key: str, payload: bytes, lazy: bool = False) -> None:
        broadcast(self, key, payload, lazy=False)
    return wrapped


def run(n: int, seconds: float, lazy: bool, seed: int) -> dict[str, Any]:
    lc = LeaseConfig()
    net = SimNet(seed, loss=0.01, keep_changes=False)
    for i in range(n):
        net.add(f"n{i}", PROFILES["lan"], record={"started": 100.0 + i}, lease=lc)
    for i in range(1, n):
        net.join(f"n{i}", "n0")
    net.run_for(lc.duration + 25.0)  # converge, then one lease duration to elect

    sent: dict[tuple[int, int], float] = {}  # (epoch, seq) -> when the holder sent it
    heard: dict[tuple[int, int], dict[str, float]] = {}
    for node in net.nodes.values():
        lease = node.lease
        assert lease is not None
        receive, tick_claims = lease.receive, lease.tick_claims

        def on_receive(payload: bytes, sender: str, now: float, nid: str = node.node_id,
                       receive: Callable[..., None] = receive) -> None:
            c = decode_claim(payload)
            heard.setdefault((c.epoch, c.seq), {}).setdefault(nid, now)
            receive(payload, sender, now)

        def on_tick(now: float, *a: Any, tick_claims: Callable[..., list[Claim]] = tick_claims,
                    **k: Any) -> list[Claim]:
            out = tick_claims(now, *a, **k)
            for c in out:
                sent[(c.epoch, c.seq)] = now
            return out

        lease.receive = on_receive  # type: ignore[method-assign]
        lease.tick_claims = on_tick  # type: ignore[method-assign]

    frames0 = net.delivered + net.dropped
    acquired0 = sum(x.lease.stats["acquired"] for x in net.nodes.values())  # type: ignore[union-attr]
    agree = samples = 0
    for _ in range(int(seconds)):
        net.run_for(1.0)
        views = {x.lease.current() for x in net.nodes.values()}  # type: ignore[union-attr]
        samples += 1
        agree += len(views) == 1 and None not in views
    spreads = [max(got.values()) - sent[key] for key, got in heard.items()
               if key in sent and len(got) >= n - 1]
    start, gap = min(sent.values()), 0.0
    for nid in net.nodes:
        times = sorted(t for got in heard.values() if (t := got.get(nid)) is not None)
        if times:
            gap = max(gap, times[0] - start,
                      *(b - a for a, b in zip(times, times[1:], strict=False)), net.now - times[-1])
    return {
        "n": n, "mode": "lazy" if lazy else "eager",
        "spread_p50": statistics.median(spreads) if spreads else float("nan"), "gap": gap,
        "agree": agree / samples,
        "acquired": sum(x.lease.stats["acquired"] for x in net.nodes.values()) - acquired0,  # type: ignore[union-attr]
        "frames": (net.delivered + net.dropped - frames0) / n / seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,100,300")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rows = []
    broadcast = Membership.broadcast
    for n in (int(s) for s in args.sizes.split(",")):
        for lazy in (True, False):
            Membership.broadcast = broadcast if lazy else _eager(broadcast)  # type: ignore[method-assign]
            t0 = time.monotonic()
            try:
                rows.append(run(n, args.seconds, lazy, args.seed))
            finally:
                Membership.broadcast = broadcast  # type: ignore[method-assign]
            print(f"  {n} nodes {rows[-1]['mode']}: {time.monotonic() - t0:.0f} s wall", flush=True)
    print(f"\nCoordinator lease over gossip, lan profile, 1% loss, {args.seconds:.0f} s measured")
    print(f"{'nodes':>5} {'renewals':>8} | {'spread p50 s':>12} | {'gap max s':>9} | "
          f"{'agree':>6} | {'acquired':>8} | {'frames/s/node':>13}")
    for r in rows:
        print(f"{r['n']:>5} {r['mode']:>8} | {r['spread_p50']:>12.2f} | {r['gap']:>9.2f} | "
              f"{r['agree']:>6.0%} | {r['acquired']:>8} | {r['frames']:>13.2f}")


if __name__ == "__main__":
    main()
