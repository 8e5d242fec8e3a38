"""Placement time: swarmd.core.placement.place on simulated swarms (pure, one core).

A swarm of N nodes (a quarter without GPU, then 8 GiB, 24 GiB -- half of
those with two -- and 80 GiB GPUs; 16-128 GiB RAM) and M deployed models
(0.3B-70B parameters at 4/8/16 bits, llama.cpp or vLLM, ctx 2k-8k, 1-4
slots, 1-5 replicas, one in 15 everywhere, GPU on/off/either) is placed
three ways, each timed over ``--runs`` runs (median and max):

  cold      from an empty table (the first placement, or after a restart);
  steady    with the previous placement as the current one (what the
            coordinator does on every change; nothing moves);
  failover  the same after 5% of the nodes that host replicas die.

The issue's target is cold <= 100 ms at 1,000 nodes and 200 models.
Run: PYTHONPATH=. .venv/bin/python bench/placement.py [--runs 7] [--sizes 100x30,1000x200]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from swarmd.core.fit import Need
from swarmd.core.placement import Deployment, NodeView, Placement, place
from swarmd.testing import placement_swarm


def swarm(n_nodes: int, n_models: int, seed: int = 1
          ) -> tuple[list[Deployment], dict[str, Need], list[NodeView]]:
    """The testing kit's simulated swarm, with peer-id-sized node ids."""
    return placement_swarm.swarm(n_nodes, n_models, seed, id_width=44, prefix="12D3KooW")


def timed(fn: Callable[[], Placement], runs: int) -> tuple[float, float, Placement]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    assert out is not None
    return statistics.median(times), max(times), out


def run(n_nodes: int, n_models: int, runs: int) -> None:
    deps, needs, nodes = swarm(n_nodes, n_models)
    cold_med, cold_max, p = timed(lambda: place(deps, nodes, {}, needs, 1), runs)
    steady_med, steady_max, q = timed(
        lambda: place(deps, nodes, p.assignments, needs, 1, current_devices=p.devices), runs)
    assert q.assignments == p.assignments  # nothing moves
    hosts = sorted({n for ns in p.assignments.values() for n in ns})
    dead = set(random.Random(2).sample(hosts, max(1, len(hosts) // 20)))
    view = [replace(n, alive=False) if n.node_id in dead else n for n in nodes]
    fail_med, fail_max, _ = timed(
        lambda: place(deps, view, p.assignments, needs, 2, current_devices=p.devices), runs)
    reps = sum(len(v) for v in p.assignments.values())
    for case, med, mx in (("cold", cold_med, cold_max), ("steady", steady_med, steady_max),
                          ("failover", fail_med, fail_max)):
        print(f"{n_nodes:>6} {n_models:>6} {reps:>8} {len(p.unplaced):>8} {case:>9} "
              f"{med:>10.1f} {mx:>8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sizes", default="100x30,1000x200")
    args = ap.parse_args()
    print(f"{'nodes':>6} {'models':>6} {'replicas':>8} {'unplaced':>8} {'case':>9} "
          f"{'median ms':>10} {'max ms':>8}")
    for size in args.sizes.split(","):
        n_nodes, n_models = (int(x) for x in size.split("x"))
        run(n_nodes, n_models, args.runs)


if __name__ == "__main__":
    main()
