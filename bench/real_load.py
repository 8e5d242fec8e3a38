"""Real model, real engines, real load: swarmd vs the engines directly.

Two llama.cpp engines (llama-cpp-python's server on the real Gemma 3 270M
Q4_K_M model, one thread each) on two swarmd nodes; a closed loop of C
concurrent streaming chats goes through a third node that has no engine,
then, side by side in the same run, the same loop straight to the two
engines (client i to engine i mod 2, an even split).  For C in 1, 4, 8, 16
it prints: requests, failed requests (target 0), delivered tokens/s and its
ratio to direct (target >= 0.95), TTFT p50/p99 and, through swarmd, the
queue wait p50/p99 (``X-Swarmd-Queue-Wait``).

Between cells the bench waits until swarmd sees both engines healthy: the
direct cells' traffic is invisible to swarmd, and an engine that ignores its
health polls while serving it looks idle and failed (llama-cpp-python
answers nothing while it generates).

Run: PYTHONPATH=.:plugins .venv/bin/python bench/real_load.py [--seconds 30]
(or ``bash bench/run load``).  On this 2-core machine the two engines take
both cores, so the daemons compete with them for CPU: the ratio includes
that cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swarmd.testing.daemon import Daemon, wait_for  # noqa: E402
from swarmd.testing.hub_servers import gemma_gguf  # noqa: E402
from swarmd.testing.llama_server import start  # noqa: E402

MODEL = "gemma3"
SECRET = "be" * 32


@dataclass
class Run:
    label: str
    ok: int = 0
    failed: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    queue: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def one(http: aiohttp.ClientSession, url: str, run: Run, i: int, max_tokens: int) -> None:
    body = {"model": MODEL, "stream": True, "max_tokens": max_tokens, "temperature": 0.8,
            "messages": [{"role": "user", "content": f"Tell me a fact about the number {i}."}]}
    t0 = time.monotonic()
    first: float | None = None
    n = 0
    try:
        async with http.post(url + "/v1/chat/completions", json=body) as r:
            if r.status != 200:
                run.failed += 1
                run.errors.append(f"HTTP {r.status}: {(await r.text())[:200]}")
                return
            qw = r.headers.get("X-Swarmd-Queue-Wait")
            if qw is not None:
                run.queue.append(float(qw))
            done = False
            async for line in r.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                doc = json.loads(payload)
                if "error" in doc:
                    raise RuntimeError(str(doc["error"]))
                for c in doc.get("choices") or []:
                    if (c.get("delta") or {}).get("content"):
                        n += 1
                        if first is None:
                            first = time.monotonic()
            if not done:
                raise RuntimeError("stream ended without [DONE]")
    except Exception as exc:  # noqa: BLE001 (counted as a failure)
        run.failed += 1
        run.errors.append(f"{type(exc).__name__}: {exc}"[:200])
        return
    run.ok += 1
    run.tokens += n
    if first is not None:
        run.ttft.append(first - t0)


async def closed_loop(urls: list[str], conc: int, seconds: float, label: str,
                      max_tokens: int) -> Run:
    run = Run(label)
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=0)) as http:
        async def client(k: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                await one(http, urls[k % len(urls)], run, k * 10_000 + i, max_tokens)

        t0 = time.monotonic()
        await asyncio.gather(*(client(k) for k in range(conc)))
        run.seconds = time.monotonic() - t0
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="per concurrency and path")
    ap.add_argument("--conc", default="1,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    concs = [int(c) for c in args.conc.split(",")]
    model, _ = gemma_gguf()
    with tempfile.TemporaryDirectory(prefix="swarmd-real-load-") as tmp, \
            contextlib.ExitStack() as stack:
        root = Path(tmp)
        engines = [stack.enter_context(start(model, alias=MODEL, n_ctx=1024, log_dir=root,
                                             extra_args=["--chat_format", "gemma"]))
                   for _ in range(2)]
        # The lan profile, as a user runs it (the tests' "local" profile has
        # timeouts too short for two cores shared with two busy engines).
        front = Daemon(root, "front", secret=SECRET, log_level="warning",
                       profile="lan").start()
        stack.callback(front.stop)
        nodes = []
        for i, eng in enumerate(engines):
            d = Daemon(root, f"n{i + 2}", secret=SECRET, seeds=[front.seed], log_level="warning",
                       profile="lan",
                       extra_toml=f'[[engines]]\nid = "chat-{i}"\nkind = "llamacpp"\n'
                                  f'url = "{eng.base_url}"\n').start()
            stack.callback(d.stop)
            nodes.append(d)

        def ready() -> bool:
            import urllib.request
            with urllib.request.urlopen(front.api_url + "/v1/models", timeout=5) as r:
                doc = json.loads(r.read())
            return any(m["id"] == MODEL and len(m["swarmd"]["engines"]) == 2
                       for m in doc["data"])
        wait_for(ready, 60, what="both engines in the swarm")
        # Warm both engines (first-request model load, caches).
        asyncio.run(closed_loop([e.base_url for e in engines], 2, 3, "warm", 8))
        rows = []
        for c in concs:
            # Direct traffic is invisible to swarmd: an engine that ignored
            # its health polls while serving it looked idle and down.  Start
            # each swarmd cell with both engines healthy again.
            wait_for(ready, 60, what="both engines healthy")
            sw = asyncio.run(closed_loop([front.api_url], c, args.seconds, "swarmd",
                                         args.max_tokens))
            di = asyncio.run(closed_loop([e.base_url for e in engines], c, args.seconds,
                                         "direct", args.max_tokens))
            rows.append((c, sw, di))
            for r in (sw, di):
                for e in r.errors[:3]:
                    print(f"  c={c} {r.label} error: {e}", file=sys.stderr)
    print(f"\nReal-load bench: Gemma 3 270M Q4_K_M, 2 llama-cpp-python engines on 2 nodes, "
          f"closed loop through a third node vs straight to the engines; "
          f"{args.seconds:.0f} s per cell, max_tokens {args.max_tokens}\n")
    print("| C | path | requests | failed | tokens/s | ratio | TTFT p50 | TTFT p99 "
          "| queue p50 | queue p99 |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, sw, di in rows:
        for r in (di, sw):
            tps = r.tokens / r.seconds if r.seconds else 0.0
            base = di.tokens / di.seconds if di.seconds else 0.0
            ratio = f"{tps / base:.2f}" if base else "-"
            q50 = f"{pct(r.queue, 0.5) * 1000:.0f} ms" if r.queue else "-"
            q99 = f"{pct(r.queue, 0.99) * 1000:.0f} ms" if r.queue else "-"
            print(f"| {c} | {r.label} | {r.ok + r.failed} | {r.failed} | {tps:.1f} | {ratio} "
                  f"| {pct(r.ttft, 0.5) * 1000:.0f} ms | {pct(r.ttft, 0.99) * 1000:.0f} ms "
                  f"| {q50} | {q99} |")
    fails = sum(sw.failed for _, sw, _ in rows)
    mean_ratio = statistics.mean(
        (sw.tokens / sw.seconds) / (di.tokens / di.seconds) for _, sw, di in rows
        if di.tokens and sw.seconds)
    print(f"\nfailed through swarmd: {fails}; mean tokens/s ratio: {mean_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
