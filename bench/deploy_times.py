"""Time from ``swarmctl run`` to a first token, and from a node's death to a re-placed replica serving.

Three real daemons on loopback; llama-cpp-python engines launched by swarmd on
the real Gemma 3 270M Q4_K_M GGUF (assembled from its PyPI wheels).  Node 1
pulls the file from a local path first; the others hold nothing.  Rows, one
run each per round:

  run, file held          ``swarmctl run gemma`` on node 1 (holds the file) ->
                          first streamed token through node 1's API
  run, file from a peer   ``swarmctl stop``, then ``swarmctl run gemma`` on node
                          2 (holds nothing: it pulls from node 1 over the data
                          plane, then the coordinator places it) -> first token
                          through node 2; its pull part shown alone
  death -> serving        ``run --replicas 2`` on node 1, then kill -9 of the
                          other replica's daemon: until node 1 sees it dead, until
                          the coordinator placed the replica on the third node,
                          until that replica (which must fetch the file from a
                          peer) is ready, and until it answers a chat request

Membership runs the harness's ``local`` profile (the failure detector's
timings are in the table's note); "first token" is the first SSE data line
of a streamed chat request sent once ``swarmctl run`` returned.  Run:

    PYTHONPATH=.:plugins .venv/bin/python bench/deploy_times.py [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import die_on_sigterm  # noqa: E402

MODEL = "gemma3-bench"
SECRET = "7e" * 32


def _first_token(api: str) -> float:
    """Seconds from sending a streamed chat request to its first data line."""
    body = json.dumps({"model": MODEL, "max_tokens": 8, "stream": True,
                       "messages": [{"role": "user", "content": "Say hi."}]}).encode()
    req = urllib.request.Request(api + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=120) as r:
        for line in r:
            if line.startswith(b"data:"):
                return time.monotonic() - t0
    raise RuntimeError("no token")


def _ps(d: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(d.ctl("ps", "--json").stdout or "[]")
    return [r for r in rows if r.get("model") == MODEL]


def _ready(d: Any) -> set[str]:
    return {r["node_id"] for r in _ps(d) if r.get("state") == "ready"}


def one_round(root: Path, gguf: Path) -> dict[str, Any]:
    from swarmd.testing.daemon import Daemon, wait_for

    nodes = [Daemon(root, "t1", secret=SECRET, log_level="warning").start()]
    for i in (2, 3):
        nodes.append(Daemon(root, f"t{i}", secret=SECRET, log_level="warning",
                            seeds=[nodes[0].seed]).start())
    out: dict[str, Any] = {}
    try:
        wait_for(lambda: all(sum(n["state"] == "alive" for n in d.status()["nodes"]) == 3
                             for d in nodes), 60, what="3 nodes alive")
        r = nodes[0].ctl("pull", str(gguf), "--name", MODEL, "--json", timeout=300)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: any(MODEL in m.get("id", "") and m.get("stored_on")
                             for m in json.loads(nodes[1].ctl("models", "--json").stdout)
                             .get("models", [])), 30, what="inventory gossiped")

        # 1. the node holds the file
        t0 = time.monotonic()
        r = nodes[0].ctl("run", MODEL, "--ctx", "512", timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        out["held_run"] = time.monotonic() - t0
        out["held_first"] = out["held_run"] + _first_token(nodes[0].api_url)
        assert nodes[0].ctl("stop", MODEL).returncode == 0
        wait_for(lambda: not _ps(nodes[0]), 60, what="unloaded")

        # 2. the node must fetch the file from a peer (node 2 holds nothing)
        t0 = time.monotonic()
        r = nodes[1].ctl("run", MODEL, "--ctx", "512", timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        out["peer_run"] = time.monotonic() - t0
        out["peer_first"] = out["peer_run"] + _first_token(nodes[1].api_url)
        lines = [ln for ln in nodes[1].log().splitlines() if "pulled" in ln]
        out["peer_served_on"] = ",".join(sorted(
            "node 1" if n == nodes[0].node_id else "node 2" for n in _ready(nodes[1])))
        out["pull_line"] = lines[-1][-160:] if lines else ""
        assert nodes[1].ctl("stop", MODEL).returncode == 0
        wait_for(lambda: not _ps(nodes[0]), 60, what="unloaded")

        # 3. death of a replica's node -> a re-placed replica serving
        r = nodes[0].ctl("run", MODEL, "--ctx", "512", "--replicas", "2", timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        ready = _ready(nodes[0])
        victim = next(d for d in nodes[1:] if d.node_id in ready)
        third = next(d for d in nodes[1:] if d is not victim)
        victim_id, third_id = victim.node_id, third.node_id
        t0 = time.monotonic()
        victim.kill()
        wait_for(lambda: any(n["node_id"] == victim_id and n["state"] == "dead"
                             for n in nodes[0].status()["nodes"]), 120, what="death seen")
        out["death_detect"] = time.monotonic() - t0
        wait_for(lambda: any(r["node_id"] == third_id for r in _ps(nodes[0])), 120,
                 interval=0.1, what="re-placed")
        out["death_placed"] = time.monotonic() - t0
        wait_for(lambda: third_id in _ready(nodes[0]), 300, interval=0.1, what="ready")
        out["death_ready"] = time.monotonic() - t0
        _first_token(third.api_url)
        out["death_serving"] = time.monotonic() - t0
    finally:
        for d in nodes:
            if d.alive():
                d.kill()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    die_on_sigterm()
    from swarmd.testing.hub_servers import gemma_gguf

    gguf, _ = gemma_gguf()
    rounds = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
            rounds.append(one_round(Path(tmp), gguf))
        print(f"round {i + 1}: {rounds[-1]}", file=sys.stderr)

    def med(k: str) -> str:
        return f"{statistics.median(float(r[k]) for r in rounds):.2f} s"

    size = gguf.stat().st_size / 1e6
    print(f"Gemma 3 270M Q4_K_M ({size:.0f} MB), llama-cpp-python engines launched by swarmd, "
          f"3 daemons on loopback, median of {len(rounds)} round(s)")
    print("| path | `swarmctl run` returns | first token |")
    print("|---|---|---|")
    print(f"| file held by the node | {med('held_run')} | {med('held_first')} |")
    print(f"| file fetched from a peer first | {med('peer_run')} | {med('peer_first')} |")
    print()
    print("| kill -9 of a replica's daemon -> | seen dead | re-placed | replica ready | "
          "answers |")
    print("|---|---|---|---|---|")
    print(f"| seconds | {med('death_detect')} | {med('death_placed')} | {med('death_ready')} | "
          f"{med('death_serving')} |")
    print(f"(peer case served on: {rounds[-1]['peer_served_on']})")


if __name__ == "__main__":
    main()
