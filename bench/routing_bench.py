"""Routing quality: swarmd's router vs round robin, least connections and random.

Theory of operation
-------------------
Four SIMULATED engines (``swarmd-simengine``, separate processes) of
different capacity (concurrency slots x token rate) serve one model.  The
router core (:class:`swarmd.core.routing.Router`, exactly as the API uses it:
``affinity_key`` of the body, ``choose`` / ``start`` / ``finish`` /
``observe``) is driven in-process by an asyncio client against those real
engines; the baselines are round robin, least connections (fewest requests
in flight from this client) and uniform random.  With ``--daemon`` the same
load also goes through a real ``swarmd`` daemon whose ``[[engines]]`` are
the four engines (the product path: engine manager, API, router).

1. Throughput.  First every engine is driven alone (all four at once, closed
   loop, 2 clients per slot): the sum of their completed requests/s is the
   *measured summed capacity*.  Then each policy gets a closed loop of
   ``2 x total slots`` clients sending single-turn requests; the table shows
   requests/s, that as % of summed capacity (target >= 95 %), p50/p99
   latency and each engine's share of requests.
2. Prefix affinity.  Multi-tenant conversations: ``--tenants`` system
   prompts, ``--convs`` conversations, each ``--turns`` turns that resend the
   whole history (with the engine's actual reply).  The simulated engine's
   LRU prefix cache (``--prefix-cache`` entries) makes a turn whose history
   it still holds start ``--prefix-hit-factor`` times faster.  The table
   shows the engines' prefix-cache hit rate over turns >= 2 (from their
   /metrics), stickiness (turns >= 2 served by the previous turn's engine)
   and time to first token.
3. Real llama.cpp (``--llama``, needs llama-cpp-python): two
   llama-cpp-python servers with ``--cache true`` on the tiny random model
   (swarmd/testing/tiny_gguf.py), sessions with a long shared prefix, one
   request at a time; TTFT when the swarmd router places requests vs random
   placement (and a fresh-prefix ceiling).

    .venv/bin/python bench/routing_bench.py [--seconds 8] [--daemon] [--llama]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Procs, chat_ok, die_on_sigterm, start_engine, wait_until  # noqa: E402
from bench.loadgen import percentile  # noqa: E402
from swarmd.core.routing import (  # noqa: E402
    Candidate,
    EngineLoad,
    RequestFeatures,
    Router,
    RouterConfig,
    Target,
    affinity_key,
)

MODEL = "bench"
ROUTE = "/v1/chat/completions"


@dataclass(frozen=True)
class EngineShape:
    name: str
    concurrency: int
    tps: float


#: Heterogeneous engines: slots and token rates differ by up to 8x in capacity.
SHAPES = (EngineShape("big", 8, 400.0), EngineShape("mid", 4, 400.0),
          EngineShape("small", 4, 200.0), EngineShape("tiny", 2, 200.0))


@dataclass
class Eng:
    shape: EngineShape
    url: str


# -- policies --------------------------------------------------------------------------


class Policy:
    name = "?"

    def __init__(self, n: int, rng: random.Random) -> None:
        self.n = n
        self.rng = rng
        self.inflight = [0] * n

    def pick(self, body: dict[str, Any], now: float) -> int:
        raise NotImplementedError

    def started(self, i: int, now: float) -> None:
        self.inflight[i] += 1

    def done(self, i: int, latency: float, ok: bool, now: float) -> None:
        self.inflight[i] -= 1


class RoundRobin(Policy):
    name = "round robin"
    _next = 0

    def pick(self, body: dict[str, Any], now: float) -> int:
        i = self._next % self.n
        self._next += 1
        return i


class LeastConn(Policy):
    name = "least connections"

    def pick(self, body: dict[str, Any], now: float) -> int:
        low = min(self.inflight)
        return self.rng.choice([i for i, v in enumerate(self.inflight) if v == low])


class RandomPick(Policy):
    name = "random"

    def pick(self, body: dict[str, Any], now: float) -> int:
        return self.rng.randrange(self.n)


class SwarmdRouter(Policy):
    """swarmd.core.routing.Router as the API drives it (one node, local engines)."""

    name = "swarmd router"

    def __init__(self, engines: list[Eng], rng: random.Random,
                 spill_load: float | None = None) -> None:
        super().__init__(len(engines), rng)
        # The in-process policy has no queue of its own (the daemon's API has
        # one): like the other policies here it lets engines queue up to 8
        # per slot.
        cfg = RouterConfig(max_queue_per_slot=8.0) if spill_load is None else RouterConfig(
            spill_load=spill_load, max_queue_per_slot=8.0)
        self.router = Router(cfg, rng=rng)
        self.targets = [Target("bench-node", e.shape.name) for e in engines]
        self.cands = [Candidate(t, kind="simulated", is_local=True,
                                load=EngineLoad(capacity=e.shape.concurrency))
                      for t, e in zip(self.targets, engines, strict=True)]
        self.index = {t: i for i, t in enumerate(self.targets)}

    def pick(self, body: dict[str, Any], now: float) -> int:
        feats = RequestFeatures(MODEL, affinity_key(ROUTE, body, 2))
        d = self.router.choose(feats, self.cands, now)
        if not d.targets:
            raise RuntimeError(f"router: {d.status}")
        return self.index[d.targets[0]]

    def started(self, i: int, now: float) -> None:
        super().started(i, now)
        self.router.start(self.targets[i], now)

    def done(self, i: int, latency: float, ok: bool, now: float) -> None:
        super().done(i, latency, ok, now)
        self.router.finish(self.targets[i])
        self.router.observe(self.targets[i], latency, ok, now)


class Daemon(Policy):
    """Everything to one swarmd daemon's API; the daemon routes."""

    name = "swarmd daemon (API)"

    def pick(self, body: dict[str, Any], now: float) -> int:
        return 0


# -- the client ------------------------------------------------------------------------


@dataclass
class Stats:
    lat: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    picks: Counter[int] = field(default_factory=Counter)
    later_turns: int = 0
    sticky: int = 0


async def send(http: aiohttp.ClientSession, url: str, body: dict[str, Any], policy: Policy,
               i: int, st: Stats) -> str | None:
    """One streaming request; the reply text, or None on failure."""
    t0 = time.monotonic()
    policy.started(i, t0)
    first: float | None = None
    parts: list[str] = []
    ok = False
    try:
        async with http.post(url + ROUTE, json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
            async for line in r.content:
                if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                    continue
                for ch in json.loads(line[5:]).get("choices") or []:
                    text = (ch.get("delta") or {}).get("content") or ""
                    if text and first is None:
                        first = time.monotonic()  # first token, not the role chunk
                    parts.append(text)
        ok = True
    except Exception as exc:  # counted; the run goes on
        st.errors += 1
        st.first_error = st.first_error or f"{type(exc).__name__}: {exc}"[:300]
    end = time.monotonic()
    policy.done(i, end - t0, ok, end)
    if not ok:
        return None
    st.lat.append((end - t0) * 1000)
    if first is not None:
        st.ttft.append((first - t0) * 1000)
    return "".join(parts)


async def closed_loop(urls: list[str], policy: Policy, clients: int, seconds: float,
                      max_tokens: int) -> tuple[Stats, float]:
    st = Stats()
    deadline = time.monotonic() + seconds
    n = 0

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal n
        while time.monotonic() < deadline:
            n += 1
            body = {"model": MODEL, "stream": True, "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": f"question {n} {random.random()}"}]}
            i = policy.pick(body, time.monotonic())
            st.picks[i] += 1
            await send(http, urls[i], body, policy, i, st)

    t0 = time.monotonic()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=120)) as http:
        await asyncio.gather(*(worker(http) for _ in range(clients)))
    return st, time.monotonic() - t0


async def conversations(urls: list[str], policy: Policy, tenants: int, convs: int,
                        turns: int, clients: int, max_tokens: int, seed: int) -> Stats:
    rng = random.Random(seed)
    systems = [f"You are the assistant of tenant {t}. " + " ".join(
        f"rule{t}-{k}" for k in range(60)) for t in range(tenants)]
    todo = [(c, systems[c % tenants]) for c in range(convs)]
    rng.shuffle(todo)
    st = Stats()

    async def worker(http: aiohttp.ClientSession) -> None:
        while todo:
            c, system = todo.pop()
            msgs: list[dict[str, str]] = [{"role": "system", "content": system}]
            prev: int | None = None
            for t in range(turns):
                msgs.append({"role": "user", "content": f"conv {c} turn {t} q{rng.random()}"})
                body = {"model": MODEL, "stream": True, "max_tokens": max_tokens,
                        "messages": list(msgs)}
                i = policy.pick(body, time.monotonic())
                st.picks[i] += 1
                if prev is not None:
                    st.later_turns += 1
                    st.sticky += i == prev
                reply = await send(http, urls[i], body, policy, i, st)
                if reply is None:
                    break
                msgs.append({"role": "assistant", "content": reply})
                prev = i

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=120)) as http:
        await asyncio.gather(*(worker(http) for _ in range(clients)))
    return st


async def metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(simengine_[a-z_]+)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


async def counters(engines: list[Eng]) -> list[dict[str, float]]:
    async with aiohttp.ClientSession() as http:
        return [await metrics(http, e.url) for e in engines]


def deltas(a: list[dict[str, float]], b: list[dict[str, float]], key: str) -> list[float]:
    return [y.get(key, 0.0) - x.get(key, 0.0) for x, y in zip(a, b, strict=True)]


# -- the three parts -------------------------------------------------------------------


def capacity(engines: list[Eng], seconds: float, max_tokens: int) -> list[float]:
    """Each engine alone (all at once), closed loop with 2 clients per slot: req/s."""

    async def all_at_once() -> list[float]:
        runs = [closed_loop([e.url], RandomPick(1, random.Random(0)), 2 * e.shape.concurrency,
                            seconds, max_tokens) for e in engines]
        out = await asyncio.gather(*runs)
        return [len(st.lat) / wall for st, wall in out]

    return asyncio.run(all_at_once())


def throughput(engines: list[Eng], policies: list[Policy], urls_for: Callable[[Policy], list[str]],
               seconds: float, max_tokens: int, cap: list[float]) -> None:
    clients = 2 * sum(e.shape.concurrency for e in engines)
    total = sum(cap)
    print(f"\n1. Throughput: {len(engines)} simulated engines "
          f"({', '.join(f'{e.shape.name} {e.shape.concurrency} slots x {e.shape.tps:g} tok/s' for e in engines)}; "
          f"{max_tokens} tokens, TTFT 50 ms), closed loop of {clients} clients, {seconds:g} s")
    print(f"   measured summed capacity {total:.1f} req/s "
          f"({' + '.join(f'{c:.1f}' for c in cap)})")
    hdr = (f"   {'policy':20} | {'req/s':>7} | {'% cap':>6} | {'p50 ms':>7} | {'p99 ms':>7} | "
           f"{'err':>4} | requests per engine ({'/'.join(e.shape.name for e in engines)})")
    print(hdr)
    print("   " + "-" * (len(hdr) - 3))
    for p in policies:
        before = asyncio.run(counters(engines))
        st, wall = asyncio.run(closed_loop(urls_for(p), p, clients, seconds, max_tokens))
        after = asyncio.run(counters(engines))
        served = [int(x) for x in deltas(before, after, "simengine_requests_total")]
        rps = len(st.lat) / wall
        print(f"   {p.name:20} | {rps:7.1f} | {100 * rps / total:5.1f}% | "
              f"{percentile(st.lat, 50):7.0f} | {percentile(st.lat, 99):7.0f} | "
              f"{st.errors:>4} | {'/'.join(map(str, served))}"
              + (f"  first error: {st.first_error}" if st.errors else ""), flush=True)


def affinity(engines: list[Eng], policies: list[Policy], urls_for: Callable[[Policy], list[str]],
             a: argparse.Namespace) -> None:
    print(f"\n2. Prefix affinity: {a.tenants} tenants, {a.convs} conversations x {a.turns} "
          f"turns, {a.conv_clients} concurrent; engine LRU prefix cache {a.prefix_cache} "
          f"entries, TTFT 50 ms (x{a.prefix_hit_factor:g} on a hit)")
    hdr = (f"   {'policy':20} | {'hit rate':>8} | {'sticky':>6} | {'TTFT p50':>8} | "
           f"{'TTFT p99':>8} | {'p99 ms':>7} | {'err':>4}")
    print(hdr)
    print("   " + "-" * (len(hdr) - 3))
    for p in policies:
        before = asyncio.run(counters(engines))
        st = asyncio.run(conversations(urls_for(p), p, a.tenants, a.convs, a.turns,
                                       a.conv_clients, 8, a.seed))
        after = asyncio.run(counters(engines))
        hits = sum(deltas(before, after, "simengine_prefix_hits_total"))
        later = a.convs * (a.turns - 1)
        sticky = (f"{100 * st.sticky / st.later_turns:5.0f}%"
                  if st.later_turns and not isinstance(p, Daemon) else f"{'-':>6}")
        print(f"   {p.name:20} | {100 * hits / later:7.1f}% | {sticky} | "
              f"{percentile(st.ttft, 50):8.1f} | {percentile(st.ttft, 99):8.1f} | "
              f"{percentile(st.lat, 99):7.0f} | {st.errors:>4}", flush=True)


def llama_part(a: argparse.Namespace) -> None:
    print("\n3. Real llama.cpp prompt cache (llama-cpp-python server --cache true, tiny "
          "random model)")
    try:
        from openai import OpenAI

        from bench.ttft_prefix_cache import N_CTX, summary, ttft_ms, workload
        from swarmd.testing.llama_server import llama_available, start
        from swarmd.testing.tiny_gguf import write_tiny_gguf
    except ImportError as exc:
        print(f"   skipped: {exc}")
        return
    if not llama_available():
        print("   skipped: llama-cpp-python is not installed (bash .ci/install-llama.sh)")
        return
    from contextlib import ExitStack

    tmp = Path(tempfile.mkdtemp(prefix="swarmd-route-llama-"))
    try:
        model = write_tiny_gguf(tmp / "tiny-2k.gguf", n_ctx=N_CTX)
        with ExitStack() as stack:
            servers = [stack.enter_context(start(model, n_ctx=N_CTX, cache=True, alias="tiny",
                                                 log_dir=tmp)) for _ in range(a.llama_engines)]
            clients = [OpenAI(base_url=s.openai_base_url, api_key="unused", max_retries=0,
                              timeout=60) for s in servers]
            for c in clients:
                ttft_ms(c, "hello")
            n = len(clients)
            rng = random.Random(a.seed)
            fresh = workload(rng, 1, a.llama_requests, a.llama_prefix, True)
            reqs = workload(random.Random(a.seed), a.llama_sessions, a.llama_requests,
                            a.llama_prefix, False)
            router = Router(RouterConfig(max_queue_per_slot=8.0), rng=random.Random(a.seed))
            targets = [Target("n", f"llama{i}") for i in range(n)]
            cands = [Candidate(t, kind="llamacpp", is_local=True, load=EngineLoad(capacity=1))
                     for t in targets]

            def routed(prompt: str) -> float:
                feats = RequestFeatures("tiny", affinity_key("/v1/completions",
                                                             {"prompt": prompt}))
                t = router.choose(feats, cands, time.monotonic()).targets[0]
                router.start(t, time.monotonic())
                try:
                    ms = ttft_ms(clients[targets.index(t)], prompt)
                finally:
                    router.finish(t)
                router.observe(t, ms / 1000, True, time.monotonic())
                return ms

            place = random.Random(a.seed + 1)
            rows = {
                "fresh prefix (ceiling)": summary([ttft_ms(clients[i % n], r.prompt)
                                                   for i, r in enumerate(fresh)]),
                "swarmd router": summary([routed(r.prompt) for r in reqs]),
                "random": summary([ttft_ms(clients[place.randrange(n)], r.prompt)
                                   for r in reqs]),
            }
    except Exception as exc:
        print(f"   failed: {type(exc).__name__}: {exc}")
        return
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"   {n} engines, {a.llama_sessions} sessions, {a.llama_requests} requests one at a "
          f"time, shared prefix ~{a.llama_prefix} tokens")
    print(f"   {'placement':24} | {'TTFT p50 ms':>11} | {'p90 ms':>7} | {'mean ms':>7}")
    for name, r in rows.items():
        print(f"   {name:24} | {r['median_ms']:11.1f} | {r['p90_ms']:7.1f} | {r['mean_ms']:7.1f}")


# -- main ------------------------------------------------------------------------------


def start_daemon(procs: Procs, engines: list[Eng], tmp: Path) -> str:
    from swarmd.testing.daemon import Daemon as RealDaemon

    toml = "\n".join(
        f'[[engines]]\nkind = "simulated"\nurl = "{e.url}"\nid = "{e.shape.name}"\n'
        f'models = ["{MODEL}"]\ncapacity = {e.shape.concurrency}\n' for e in engines)
    d = RealDaemon(tmp / "daemons", "route-node", secret=secrets.token_hex(32),
                   profile="local", log_level="warning", extra_toml=toml)
    procs.on_close(lambda: d.kill() if d.alive() else None)
    d.start()
    wait_until(lambda: chat_ok(d.api_url, MODEL), 30, "swarmd daemon", d.proc)
    return d.api_url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="per throughput run")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--tenants", type=int, default=8)
    ap.add_argument("--convs", type=int, default=64)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--conv-clients", type=int, default=16)
    ap.add_argument("--prefix-cache", type=int, default=16)
    ap.add_argument("--prefix-hit-factor", type=float, default=0.1)
    ap.add_argument("--daemon", action="store_true", help="also through a real swarmd daemon")
    ap.add_argument("--llama", action="store_true", help="run part 3 (real llama.cpp)")
    ap.add_argument("--llama-engines", type=int, default=2)
    ap.add_argument("--llama-sessions", type=int, default=4)
    ap.add_argument("--llama-requests", type=int, default=24)
    ap.add_argument("--llama-prefix", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--spill-load", type=float, default=None,
                    help="the in-process router's spill_load (default: RouterConfig's)")
    a = ap.parse_args()
    die_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="swarmd-route-"))
    t0 = time.monotonic()
    try:
        with Procs(tmp) as procs:
            engines: list[Eng] = []
            for shape in SHAPES:
                url, kind = start_engine(
                    procs, f"engine-{shape.name}", MODEL, ttft_ms=50.0, tps=shape.tps,
                    max_tokens=a.max_tokens, concurrency=shape.concurrency,
                    extra=("--queue", "10000", "--prefix-cache", str(a.prefix_cache),
                           "--prefix-hit-factor", str(a.prefix_hit_factor)))
                if kind != "simulated":
                    raise SystemExit("routing_bench needs swarmd-simengine (pip install -e .)")
                engines.append(Eng(shape, url))
            urls = [e.url for e in engines]
            rng = random.Random(a.seed)
            daemon_url = start_daemon(procs, engines, tmp) if a.daemon else ""

            def policies() -> list[Policy]:
                ps: list[Policy] = [SwarmdRouter(engines, rng, a.spill_load), LeastConn(len(engines), rng),
                                    RoundRobin(len(engines), rng),
                                    RandomPick(len(engines), rng)]
                if daemon_url:
                    ps.append(Daemon(1, rng))
                return ps

            def urls_for(p: Policy) -> list[str]:
                return [daemon_url] if isinstance(p, Daemon) else urls

            cap = capacity(engines, a.seconds, a.max_tokens)
            throughput(engines, policies(), urls_for, a.seconds, a.max_tokens, cap)
            affinity(engines, policies(), urls_for, a)
        if a.llama:
            llama_part(a)
    finally:
        print(f"\n(total {time.monotonic() - t0:.0f}s)", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
