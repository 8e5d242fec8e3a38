"""What keys, budgets and rate limits cost on the request path.

Two real daemons on one zero-delay simulated engine (4 tokens per answer):
``open`` with ``[api] auth = "off"``, ``keyed`` with ``auth = "required"``,
sent a key that has a token budget, a USD budget (the model is priced) and
rpm/tpm limits all set far above what the run uses, so every check runs and
none refuses.  Latency at concurrency 1: requests alternate between the two
daemons in rounds (drift on a shared machine hits both alike); throughput at
concurrency 64: bench/loadgen.py against each in turn, twice, interleaved.
Targets (issue "Keys, budgets and usage"): <= 0.1 ms added p50 at c=1, <= 5%
throughput lost at c=64.

A third table times the checks alone in this process (no HTTP): the auth
lookup and constant-time compare, the limits' admission and settlement.

Run: PYTHONPATH=. .venv/bin/python bench/auth_limits.py [--n 400] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    Procs,
    chat_ok,
    die_on_sigterm,
    run_loadgen,
    start_engine,
    wait_until,
)

MODEL = "sim-model"
BODY = json.dumps({"model": MODEL, "max_tokens": 4,
                   "messages": [{"role": "user", "content": "hello there"}]}).encode()


async def timed(http: aiohttp.ClientSession, url: str, key: str, n: int) -> list[float]:
    out = []
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    for _ in range(n):
        t0 = time.perf_counter()
        async with http.post(url + "/v1/chat/completions", data=BODY, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"{url}: HTTP {r.status}: {await r.text()}")
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def latency(targets: dict[str, tuple[str, str]], n: int, rounds: int
                  ) -> dict[str, list[float]]:
    res: dict[str, list[float]] = {k: [] for k in targets}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2)) as http:
        for url, key in targets.values():
            await timed(http, url, key, 50)
        for r in range(rounds):
            for name, (url, key) in targets.items():
                res[name].extend(await timed(http, url, key, n))
            print(f"round {r + 1}/{rounds}", file=sys.stderr)
    return res


def in_process(reps: int = 20000) -> list[tuple[str, float]]:
    """Microseconds per call of the checks themselves."""
    import os
    from types import SimpleNamespace

    from swarmd.api.auth import KeyRing
    from swarmd.api.limits import Limits
    from swarmd.api.validate import parse_request
    from swarmd.config import LimitsSection
    from swarmd.core.hlc import Stamp
    from swarmd.core.keys import key_value, make_key, parse_key
    from swarmd.core.replica import Entry
    from swarmd.usage.prices import Price, PriceBook

    kid, key = make_key(os.urandom(6), os.urandom(32))
    value = key_value(key_id=kid, key=key, name="bench", scopes=["inference"],
                      budget_tokens_day=10**12, budget_usd_day=10**6, rpm=10**9, tpm=10**12,
                      created_on="me", holders=["me"])
    snap = SimpleNamespace(tables={"keys": {kid: Entry(kid, Stamp(1, 0, "me"), value)},
                                   "escrow": {}, "budgets": {}}, nodes=[], alive=lambda: [],
                           coordinator=None)
    ring = KeyRing(lambda: snap)  # type: ignore[arg-type,return-value]
    t0 = time.perf_counter()
    for _ in range(reps):
        ring.lookup(key, 1.0)
    auth_us = (time.perf_counter() - t0) / reps * 1e6
    info = parse_key(kid, value)
    lim = Limits(node_id="me", config=LimitsSection(startup_hold=0), prices=PriceBook(
        [Price(MODEL, 1.0, 2.0)]), snapshot=lambda: snap,  # type: ignore[arg-type,return-value]
        write_many=lambda t, items: None)
    p = parse_request("/v1/chat/completions", BODY, {})

    async def admit_settle() -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            h = await lim.admit({"key": info}, p)
            assert h is not None
            h.settle(8, 4, True)
        return (time.perf_counter() - t0) / reps * 1e6

    lim_us = asyncio.run(admit_settle())
    return [("key lookup + constant-time compare", auth_us),
            ("admission + settlement (tokens, USD, rpm, tpm)", lim_us)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400, help="requests per daemon per round (c=1)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per c=64 run")
    args = ap.parse_args()
    die_on_sigterm()
    from swarmd.testing.daemon import Daemon

    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp, Procs(Path(tmp)) as procs:
        url, kind = start_engine(procs, "engine", MODEL, max_tokens=4)
        eng = f'[[engines]]\nkind = "{kind}"\nurl = "{url}"\nid = "sim"\n'
        price = f'[[prices]]\nmodel = "{MODEL}"\ninput = 0.5\noutput = 1.5\n'
        open_d = Daemon(Path(tmp) / "d", "open", secret="ab" * 32, log_level="warning",
                        api_toml='auth = "off"', extra_toml=eng + price)
        keyed = Daemon(Path(tmp) / "d", "keyed", secret="cd" * 32, log_level="warning",
                       api_toml='auth = "required"', extra_toml=eng + price)
        for d in (open_d, keyed):
            procs.on_close(lambda d=d: d.kill() if d.alive() else None)
            d.start()
        r = keyed.ctl("keys", "create", "--name", "bench", "--budget-tokens-day", str(10**12),
                      "--budget-usd-day", "1000000", "--rpm", str(10**9), "--tpm", str(10**12),
                      "--json")
        key = json.loads(r.stdout)["key"]
        wait_until(lambda: chat_ok(open_d.api_url, MODEL), 30, "open", open_d.proc)
        wait_until(lambda: chat_ok(keyed.api_url, MODEL, key), 30, "keyed", keyed.proc)
        time.sleep(6)  # past [limits] startup_hold
        lat = asyncio.run(latency({"open (auth off)": (open_d.api_url, ""),
                                   "keyed (auth + limits)": (keyed.api_url, key)},
                                  args.n, args.rounds))
        thr: dict[str, list[float]] = {"open (auth off)": [], "keyed (auth + limits)": []}
        for _ in range(2):
            for name, (u, k) in (("open (auth off)", (open_d.api_url, "")),
                                 ("keyed (auth + limits)", (keyed.api_url, key))):
                doc: dict[str, Any] = run_loadgen(u + "/v1/chat/completions", model=MODEL, concurrency=64,
                                                  requests=10**9, warmup=200,
                                                  duration=args.duration, max_tokens=4,
                                                  api_key=k)
                if not doc.get("ok"):
                    raise RuntimeError(f"{name}: no request succeeded: {doc}")
                thr[name].append(float(doc["rps"]))
    base = statistics.median(lat["open (auth off)"])
    print(f"zero-delay simulated engine, 4 tokens; c=1: {args.rounds} x {args.n} requests "
          f"per daemon, interleaved; c=64: 2 x {args.duration:g} s per daemon, interleaved")
    print("| daemon | c=1 p50 ms | c=1 p99 ms | added p50 ms | c=64 req/s | vs open |")
    print("|---|---|---|---|---|---|")
    open_rps = statistics.mean(thr["open (auth off)"])
    for name, xs in lat.items():
        xs_sorted = sorted(xs)
        med = statistics.median(xs)
        rps = statistics.mean(thr[name])
        print(f"| {name} | {med:.3f} | {xs_sorted[int(0.99 * len(xs)) - 1]:.3f} | "
              f"{'baseline' if name.startswith('open') else f'{med - base:+.3f}'} | "
              f"{rps:.0f} | {rps / open_rps:.3f} |")
    print()
    print("| check, in process | us per request |")
    print("|---|---|")
    for name, us in in_process():
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
