"""HTTP load generator for the benchmarks: one process, aiohttp, keep-alive.

Theory of operation: ``--concurrency`` workers share one aiohttp session
(a connection pool of that size, keep-alive) and take request numbers from
a shared counter until ``--requests`` are sent or ``--duration`` seconds
have passed (then the workers finish their request in flight and stop).
``--warmup`` requests go first (same concurrency, not counted) so that
connections are open and caches warm.  Each request's latency is from
just before ``post`` to the last byte of the body.  With ``--stream`` the
body is read as SSE: the first ``data:`` line sets the time to first
token and every ``data:`` line except ``[DONE]`` counts as one token.

It prints one JSON object on stdout::

    {"sent", "ok", "errors", "first_error", "wall_s", "rps",
     "p50_ms", "p90_ms", "p99_ms", "mean_ms",
     "tokens", "tok_per_s", "ttft_p50_ms", "ttft_p99_ms"}

Run it as a separate process from the servers it measures (so client and
server do not share an event loop):

    python bench/loadgen.py --url http://127.0.0.1:8000/v1/chat/completions \\
        --model m --concurrency 64 --requests 2000 [--duration 15] [--stream]
        [--max-tokens 16] [--warmup 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile of ``xs`` (q in 0..100); nan when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


class Run:
    def __init__(self, url: str, body: bytes, stream: bool, headers: dict[str, str]) -> None:
        self.url = url
        self.body = body
        self.stream = stream
        self.headers = headers
        self.lat: list[float] = []
        self.ttft: list[float] = []
        self.tokens = 0
        self.errors = 0
        self.first_error = ""
        self.next = 0

    async def one(self, http: aiohttp.ClientSession, record: bool) -> None:
        t0 = time.perf_counter()
        first: float | None = None
        tokens = 0
        try:
            async with http.post(self.url, data=self.body, headers=self.headers) as r:
                if r.status != 200:
                    text = (await r.read())[:200].decode(errors="replace")
                    raise RuntimeError(f"HTTP {r.status}: {text}")
                if self.stream:
                    async for line in r.content:
                        if line.startswith(b"data:"):
                            if line.strip() == b"data: [DONE]":
                                continue
                            if first is None:
                                first = time.perf_counter()
                            tokens += 1
                else:
                    await r.read()
        except Exception as exc:  # any failure is counted, the run goes on
            if record:
                self.errors += 1
                self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"[:300]
            return
        if record:
            self.lat.append((time.perf_counter() - t0) * 1000.0)
            self.tokens += tokens
            if first is not None:
                self.ttft.append((first - t0) * 1000.0)

    async def workers(self, http: aiohttp.ClientSession, concurrency: int, total: int,
                      deadline: float, record: bool) -> None:
        self.next = 0

        async def worker() -> None:
            while self.next < total and time.monotonic() < deadline:
                self.next += 1
                await self.one(http, record)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"model": args.model, "max_tokens": args.max_tokens,
                            "messages": [{"role": "user", "content": args.prompt}]}
    if args.stream:
        body["stream"] = True
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    r = Run(args.url, json.dumps(body).encode(), args.stream, headers)
    conn = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency,
                                keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
        if args.warmup:
            await r.workers(http, args.concurrency, args.warmup,
                            time.monotonic() + args.duration, False)
        t0 = time.perf_counter()
        await r.workers(http, args.concurrency, args.requests,
                        time.monotonic() + args.duration, True)
        wall = time.perf_counter() - t0
    return {
        "sent": r.next, "ok": len(r.lat), "errors": r.errors, "first_error": r.first_error,
        "wall_s": round(wall, 3), "rps": round(len(r.lat) / wall, 1) if wall > 0 else 0.0,
        "p50_ms": percentile(r.lat, 50), "p90_ms": percentile(r.lat, 90),
        "p99_ms": percentile(r.lat, 99),
        "mean_ms": sum(r.lat) / len(r.lat) if r.lat else float("nan"),
        "tokens": r.tokens, "tok_per_s": round(r.tokens / wall, 1) if wall > 0 else 0.0,
        "ttft_p50_ms": percentile(r.ttft, 50), "ttft_p99_ms": percentile(r.ttft, 99),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="aiohttp keep-alive load generator")
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="bench")
    ap.add_argument("--prompt", default="hello")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--duration", type=float, default=20.0,
                    help="stop sending new requests after this many seconds")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, s")
    ap.add_argument("--api-key", default="")
    args = ap.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
