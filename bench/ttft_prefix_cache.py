"""Time to first token with real llama.cpp prompt caching: affine vs random placement.

Theory of operation: a llama.cpp engine skips the prefill of any prompt
prefix it still holds in its KV cache. llama-cpp-python keeps the last
prompt's tokens (so a request that shares a prefix with the previous one on
the same engine is cheap), and with ``--cache true`` also a RAM cache of
earlier prompt states. A router that sends requests of one conversation
(same long prefix) to the same engine therefore lowers time to first token
(TTFT); a random placement mostly does not.

This benchmark starts ``--engines`` real llama-cpp-python servers on the
tiny random model from swarmd/testing/tiny_gguf.py (context 2048, one thread
each) and replays a seeded workload: ``--sessions`` conversations, each a
long shared prefix (about ``--prefix-tokens`` tokens), and ``--requests``
requests that each pick a session and append a fresh short question. Each
request is a streaming completion; TTFT is the time to the first SSE chunk.
Requests run one at a time (each engine serves one request at a time anyway),
so the figures isolate prefill cost from queuing. Policies:

  fresh     every request gets a new prefix (no reuse possible): the ceiling
  affinity  session s always goes to engine s % N (prefix-aware routing)
  random    a uniformly random engine per request
  target    every request to ``--target URL`` (e.g. a swarmd API port whose
            engines are the ones started here; see --engines-only)

Run: PYTHONPATH=.:plugins .venv/bin/python bench/ttft_prefix_cache.py \\
         [--engines 2] [--sessions 2] [--requests 40] [--prefix-tokens 1500]
         [--cache [--cache-bytes N]]
     add --json for machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from openai import OpenAI

from swarmd.testing.llama_server import LlamaServer, start
from swarmd.testing.tiny_gguf import WORDS, write_tiny_gguf

N_CTX = 2048
PLAIN_WORDS = [w.lstrip("▁") for w in WORDS if w.startswith("▁")]


@dataclass(frozen=True)
class Request:
    session: int  # -1 for a fresh, never repeated prefix
    prompt: str


def words(rng: random.Random, n: int) -> str:
    """About ``n`` tokens: every vocabulary word is one token."""
    return " ".join(rng.choice(PLAIN_WORDS) for _ in range(n))


def workload(
    rng: random.Random, sessions: int, requests: int, prefix_tokens: int, fresh: bool
) -> list[Request]:
    prefixes = [words(rng, prefix_tokens) for _ in range(sessions)]
    out = []
    for i in range(requests):
        question = f" {words(rng, 6)} {i}"
        if fresh:
            out.append(Request(-1, words(rng, prefix_tokens) + question))
        else:
            s = rng.randrange(sessions)
            out.append(Request(s, prefixes[s] + question))
    return out


def ttft_ms(client: OpenAI, prompt: str) -> float:
    t0 = time.perf_counter()
    first: float | None = None
    stream = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=2, temperature=0, stream=True
    )
    for _chunk in stream:
        if first is None:
            first = time.perf_counter() - t0
    if first is None:
        raise RuntimeError("stream ended without a chunk")
    return first * 1000


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


def run_policy(
    reqs: list[Request], clients: list[OpenAI], pick: Callable[[int, Request], int]
) -> list[float]:
    return [ttft_ms(clients[pick(i, r)], r.prompt) for i, r in enumerate(reqs)]


@contextmanager
def engines(
    n: int, cache: bool, cache_bytes: int | None, workdir: Path
) -> Iterator[list[LlamaServer]]:
    model = write_tiny_gguf(workdir / "tiny-2k.gguf", n_ctx=N_CTX)
    extra = ["--cache_size", str(cache_bytes)] if cache and cache_bytes else []
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                start(
                    model, n_ctx=N_CTX, cache=cache, alias="tiny", log_dir=workdir,
                    extra_args=extra,
                )
            )
            for _ in range(n)
        ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--prefix-tokens", type=int, default=1500)
    ap.add_argument("--cache", action="store_true", help="engines keep a RAM prompt cache")
    ap.add_argument(
        "--cache-bytes",
        type=int,
        help="RAM prompt cache capacity per engine (llama-cpp-python default: 2 GiB); "
        "one ~1500-token state of the tiny model counts about 0.8 MB",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", help="also measure all requests sent to this base URL (…/v1)")
    ap.add_argument(
        "--engines-only",
        action="store_true",
        help="start the engines, print their URLs, wait for Ctrl-C (to put a swarm in front)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.prefix_tokens + 40 > N_CTX:
        ap.error(f"--prefix-tokens must leave room in the {N_CTX}-token context")

    with (
        tempfile.TemporaryDirectory(prefix="ttft-bench-") as tmp,
        engines(args.engines, args.cache, args.cache_bytes, Path(tmp)) as servers,
    ):
        if args.engines_only:
            for s in servers:
                print(s.openai_base_url, flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return 0
        clients = [
            OpenAI(base_url=s.openai_base_url, api_key="unused", max_retries=0, timeout=60)
            for s in servers
        ]
        # One warm-up per engine (first-request allocations).
        for c in clients:
            ttft_ms(c, "hello")
        n = len(clients)
        results: dict[str, dict[str, float]] = {}
        fresh = workload(random.Random(args.seed), 1, args.requests, args.prefix_tokens, True)
        results["fresh"] = summary(run_policy(fresh, clients, lambda i, r: i % n))
        reqs = workload(
            random.Random(args.seed), args.sessions, args.requests, args.prefix_tokens, False
        )
        results["affinity"] = summary(run_policy(reqs, clients, lambda i, r: r.session % n))
        placement = random.Random(args.seed + 1)
        results["random"] = summary(run_policy(reqs, clients, lambda i, r: placement.randrange(n)))
        if args.target:
            target = OpenAI(base_url=args.target, api_key="unused", max_retries=0, timeout=60)
            results["target"] = summary(run_policy(reqs, [target], lambda i, r: 0))

    report = {
        "engines": args.engines,
        "sessions": args.sessions,
        "requests": args.requests,
        "prefix_tokens": args.prefix_tokens,
        "engine_ram_cache": args.cache,
        "engine_ram_cache_bytes": args.cache_bytes,
        "ttft": results,
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print(
            f"{args.engines} engines, {args.sessions} sessions, {args.requests} requests, "
            f"prefix ~{args.prefix_tokens} tokens, engine RAM cache {'on' if args.cache else 'off'}"
        )
        print(f"{'policy':<10}{'median ms':>11}{'p90 ms':>9}{'mean ms':>9}")
        for name, row in results.items():
            print(f"{name:<10}{row['median_ms']:>11.1f}{row['p90_ms']:>9.1f}{row['mean_ms']:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
