"""Measured overspend of a token budget against its bound (0 for engines honouring max_tokens).

Three real daemons on loopback, one zero-delay SIMULATED engine behind node
1 (40 tokens at most per answer), a key with a daily token budget; clients
spread evenly over the three nodes (threads, keep-alive off, stdlib HTTP)
send chat requests with ``max_tokens`` until the budget refuses them.  The
table gives, per run, the tokens the answers reported, the budget, spend as
a share of the budget (overspend shows as > 100%), answered and refused
requests, and what every node's ``swarmctl usage`` says (they must agree).

Run: PYTHONPATH=. .venv/bin/python bench/budget.py [--budget 10000] [--clients 51] [--runs 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import die_on_sigterm  # noqa: E402

MODEL = "sim-budget"


def one_run(root: Path, budget: int, clients: int, requests: int) -> dict[str, object]:
    from swarmd.testing.budget_load import run
    from swarmd.testing.daemon import VENV_BIN, Daemon, free_port, wait_for

    port = free_port()
    eng = subprocess.Popen([str(VENV_BIN / "swarmd-simengine"), "--port", str(port), "--model",
                            MODEL, "--max-tokens", "40"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    toml = f'\n[[engines]]\nkind = "simulated"\nurl = "http://127.0.0.1:{port}"\n'
    nodes = []
    try:
        nodes.append(Daemon(root, "b1", secret="12" * 32, log_level="warning",
                            api_toml='auth = "required"', extra_toml=toml).start())
        for i in (2, 3):
            nodes.append(Daemon(root, f"b{i}", secret="12" * 32, log_level="warning",
                                api_toml='auth = "required"', seeds=[nodes[0].seed]).start())
        key = json.loads(nodes[0].ctl("keys", "create", "--name", "b", "--budget-tokens-day",
                                      str(budget), "--json").stdout)

        def ready(d: Daemon) -> bool:
            out = json.loads(d.ctl("models", "--json").stdout)
            return any(m.get("id") == MODEL for m in out.get("models", []))

        def ready_with_key(d: Daemon) -> bool:
            return ready(d) and key["id"] in d.ctl("keys", "list", "--json").stdout

        for d in nodes:
            wait_for(functools.partial(ready_with_key, d), 30, what="ready")
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda d: run(d.api_url, key["key"], clients // 3, requests,
                                                  40, MODEL), nodes))

        def spent(d: Daemon) -> int:
            rows = {r["key"]: r for r in json.loads(d.ctl("usage", "--by", "key", "--json")
                                                     .stdout)}
            r = rows.get(key["id"], {})
            return int(r.get("prompt_tokens", 0)) + int(r.get("completion_tokens", 0))

        tokens = sum(int(r["tokens"]) for r in results)
        wait_for(lambda: len({spent(d) for d in nodes}) == 1, 20, what="agreement")
        return {"tokens": tokens, "ok": sum(int(r["ok"]) for r in results),
                "refused": sum(int(r["refused"]) for r in results),
                "errors": sum(int(r["errors"]) for r in results), "agreed": spent(nodes[0]),
                "reasons": sorted({x for r in results for x in r["reasons"]})}
    finally:
        for d in nodes:
            if d.alive():
                d.kill()
        eng.kill()
        eng.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=51)
    ap.add_argument("--requests", type=int, default=12, help="per client")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    die_on_sigterm()
    rows = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
            rows.append(one_run(Path(tmp), args.budget, args.clients, args.requests))
        print(f"run {i + 1}: {rows[-1]}", file=sys.stderr)
    print(f"{args.clients} clients over 3 nodes, {args.requests} requests each, max_tokens 40, "
          f"budget {args.budget} tokens/day; bound on overspend: 0 tokens")
    print("| run | tokens answered | of budget | answered | refused | errors | "
          "every node's usage |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | {r['tokens']} | {int(r['tokens']) / args.budget:.1%} | {r['ok']} | "  # type: ignore[call-overload]
              f"{r['refused']} | {r['errors']} | {r['agreed']} |")


if __name__ == "__main__":
    main()
