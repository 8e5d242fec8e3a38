"""How fast a revoked API key stops working on every node.

Real daemons (separate processes on loopback, ``lan`` membership profile,
``[api] auth = "required"``): a key is made on node 1 and waited for on
every node; then it is revoked on node 1 (``swarmctl keys revoke``) and every
node's control socket is polled (every 10 ms, in parallel) until none lists
it; then every API port is checked to refuse it.  The time from the revoke
command returning to the last node dropping the key is one sample;
``--rounds`` samples per size.

Simulated swarms (the daemon's node machine on swarmd/testing/simnet.py, lan
delays, 1% loss): one node writes the tombstone; the virtual time until
every node holds it.

Run: PYTHONPATH=. .venv/bin/python bench/revocation.py [--sizes 3,10] [--sim 100,1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import die_on_sigterm  # noqa: E402


def _status(url: str, key: str) -> int:
    req = urllib.request.Request(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _listed(sock: Path, key_id: str) -> bool:
    from swarmd.control.client import ControlClient

    keys = ControlClient(sock, timeout=2).get("/v1/keys").get("keys", [])
    return any(k.get("id") == key_id for k in keys)


def _until_all(items: list[str], pred: Callable[[str], bool], timeout: float = 30.0,
               every: float = 0.02) -> float:
    """Seconds until ``pred(item)`` held for every item (polled in parallel threads)."""
    t0 = time.monotonic()
    done: dict[str, float] = {}

    def poll(item: str) -> None:
        while time.monotonic() - t0 < timeout:
            if pred(item):
                done[item] = time.monotonic() - t0
                return
            time.sleep(every)

    threads = [threading.Thread(target=poll, args=(i,)) for i in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(done) < len(items):
        raise RuntimeError(f"{len(items) - len(done)} nodes never got there")
    return max(done.values())


def _all_sockets(socks: list[Path], key_id: str, want: bool) -> float:
    """Seconds until every node's control socket lists (or no longer lists) the key.

    The control socket, not the API port: polling the API with a key every
    node does not know yet would trip the guessing throttle (swarmd/api/auth.py)
    and measure that instead.  The API refuses a key as soon as its node's
    table drops it (the key ring is rebuilt per table change).
    """
    return _until_all([str(p) for p in socks], lambda p: _listed(Path(p), key_id) is want,
                      every=0.01)


def _all(urls: list[str], key: str, want: int) -> float:
    """Seconds until every url answers ``want`` for ``key``."""
    return _until_all(urls, lambda u: _status(u, key) == want)


def real(size: int, rounds: int) -> list[float]:
    from swarmd.testing.daemon import Daemon, wait_for

    out = []
    with tempfile.TemporaryDirectory(prefix="bench-revoke-") as tmp:
        root = Path(tmp)
        nodes = [Daemon(root, "r1", secret="ef" * 32, profile="lan", log_level="warning",
                        api_toml='auth = "required"').start()]
        try:
            for i in range(2, size + 1):
                nodes.append(Daemon(root, f"r{i}", secret="ef" * 32, profile="lan",
                                    log_level="warning", api_toml='auth = "required"',
                                    seeds=[nodes[0].seed]).start())
            wait_for(lambda: all(sum(n["state"] == "alive" for n in d.status()["nodes"])
                                 == size for d in nodes), 60, what="converged")
            urls = [d.api_url for d in nodes]
            socks = [d.socket for d in nodes]
            for _ in range(rounds):
                k = json.loads(nodes[0].ctl("keys", "create", "--name", "b", "--json").stdout)
                _all_sockets(socks, k["id"], True)
                _all(urls, k["key"], 200)  # and the API takes it everywhere
                r = nodes[0].ctl("keys", "revoke", k["id"])
                assert r.returncode == 0, r.stderr
                out.append(_all_sockets(socks, k["id"], False))
                assert _all(urls, k["key"], 401) < 1.0  # refused on every API port too
        finally:
            for d in nodes:
                if d.alive():
                    d.kill()
    return out


def sim(size: int, rounds: int) -> list[float]:
    from swarmd.core.membership_config import PROFILES
    from swarmd.core.tables import swarm_tables
    from swarmd.testing.simnet import SimNet

    out = []
    for seed in range(rounds):
        net = SimNet(seed, delay=0.0005, jitter=0.001, loss=0.01)
        specs = swarm_tables()
        for i in range(size):
            net.add(f"n{i}", PROFILES["lan"], tables=specs)
        for i in range(1, size):
            net.join(f"n{i}", f"n{i // 2}" if i > 1 else "n0")
        net.wait_for(net.converged, 120.0, every=0.5)
        w = net.nodes["n0"]
        w.machine.write_table("keys", "0123456789ab", {"x": 1}, net.now)
        net._after(w)
        net.run_for(5.0)
        w.machine.write_table("keys", "0123456789ab", None, net.now)
        net._after(w)

        def revoked(net: SimNet = net) -> bool:
            for n in net.up_nodes():
                e = n.machine.table("keys").get("0123456789ab")
                if e is None or not e.dead:
                    return False
            return True

        out.append(net.wait_for(revoked, 60.0, every=0.05))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="3,10", help="real swarm sizes")
    ap.add_argument("--sim", default="100,1000", help="simulated swarm sizes")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sim-rounds", type=int, default=3)
    args = ap.parse_args()
    die_on_sigterm()
    rows = []
    for s in [int(x) for x in args.sizes.split(",") if x]:
        xs = real(s, args.rounds)
        rows.append((f"{s} real daemons", xs))
        print(f"real {s}: {xs}", file=sys.stderr)
    for s in [int(x) for x in args.sim.split(",") if x]:
        xs = sim(s, args.sim_rounds)
        rows.append((f"{s} simulated nodes (1% loss)", xs))
        print(f"sim {s}: {xs}", file=sys.stderr)
    print("| swarm | samples | median s | max s |")
    print("|---|---|---|---|")
    for name, xs in rows:
        print(f"| {name} | {len(xs)} | {statistics.median(xs):.2f} | {max(xs):.2f} |")


if __name__ == "__main__":
    main()
