"""Added latency and throughput of swarmd vs nginx and LiteLLM, in one run.

Theory of operation
-------------------
One zero-delay engine (``swarmd-simengine --ttft-ms 0 --tps 0``, the
product's simulated engine) answers every request at once, so
whatever a path adds on top of going straight to it is that path's cost.
The paths, all real processes on 127.0.0.1:

  direct         client -> engine
  nginx          client -> nginx proxy_pass (1 worker, keepalive upstream) -> engine
  litellm        client -> LiteLLM proxy (bench/.venv-litellm, 1 worker) -> engine
  swarmd-local   client -> swarmd daemon with the engine in [[engines]] -> engine
  swarmd-remote  client -> daemon A (no engines) -> data plane (TLS) -> daemon B -> engine
  swarmd-asyncio swarmd-local with ``[api] event_loop = "asyncio"`` (the others run
                 uvloop when it is installed: ``event_loop = "auto"``)
  swarmd-libp2p  client -> daemon A2 ([dataplane] enabled = false) -> libp2p forward
                 protocol -> daemon B -> engine (the old path, kept as the fallback)

For each concurrency level (1, 16, 64, 256) every path is measured back to
back (interleaved, so background load on the shared machine hits all of
them alike) by bench/loadgen.py in its own process: keep-alive aiohttp, a
fixed number of requests, a time bound.  The table shows p50/p99 latency,
requests/s and the overhead (p50/p99 minus direct's at the same level).
At concurrency 1 the overhead is the pure added latency; at higher levels
it also contains queueing in whichever process is the bottleneck on this
2-core machine (the load generator, the engine or the proxy).

Then 500 concurrent streams (engine at ``--stream-tps`` tokens/s per stream,
``--stream-tokens`` tokens each): tokens/s delivered through one swarmd node
as a fraction of direct, through one node and through a remote hop.

Targets (issue "A fast data plane"): local adds <= 0.3 ms p50 at c=1 and
holds >= 0.5x nginx's req/s at c=16; the remote hop adds <= 1 ms p50 at c=1
and holds >= 0.8x the local path's req/s at c=16; 500 streams deliver >= 0.97
of direct's tokens/s locally and >= 0.95 through a remote hop; LiteLLM's
overhead at least 5x swarmd-local's.  A path that
cannot be set up (LiteLLM not installed, nginx missing, daemon failing) is
reported with the reason and the rest still run.

    .venv/bin/python bench/proxy_compare.py [--levels 1,16,64,256] [--only direct,nginx]
        [--scale 1.0] [--streams 500] [--keep-logs]
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    BENCH,
    Procs,
    chat_ok,
    die_on_sigterm,
    free_port,
    nginx_exe,
    run_loadgen,
    start_engine,
    wait_until,
)

MODEL = "bench"
STREAM_MODEL = "bench-stream"
LITELLM_VENV = BENCH / ".venv-litellm"
PATHS = ("direct", "nginx", "litellm", "swarmd-local", "swarmd-asyncio", "swarmd-remote",
         "swarmd-libp2p")
#: Requests per concurrency level (times --scale); warm-up is max(50, level).
REQUESTS = {1: 400, 16: 1200, 64: 2000, 256: 2560}


@dataclass
class Setup:
    """Base URLs of the paths that came up, and why the others did not."""

    urls: dict[str, str] = field(default_factory=dict)
    why_not: dict[str, str] = field(default_factory=dict)
    engine_kind: str = ""
    keys: dict[str, str] = field(default_factory=dict)
    stream_urls: dict[str, str] = field(default_factory=dict)


# -- the paths -------------------------------------------------------------------------


def start_nginx(procs: Procs, engine: str, tmp: Path) -> str:
    exe = nginx_exe()
    if exe is None:
        raise RuntimeError("nginx not installed (Debian: apt-get install nginx)")
    d = tmp / "nginx"
    d.mkdir()
    os.chmod(d, 0o777)
    port = free_port()
    up = engine.removeprefix("http://")
    (d / "nginx.conf").write_text(f"""
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream engine {{ server {up}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://engine;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
    proc = procs.spawn("nginx", [exe, "-p", str(d), "-c", str(d / "nginx.conf"),
                                 "-e", str(d / "error.log")])
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: chat_ok(base, MODEL), 15, "nginx", proc)
    return base


def start_litellm(procs: Procs, engine: str, tmp: Path, key: str) -> str:
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        raise RuntimeError(f"LiteLLM not installed ({exe} missing; "
                           f"python3 -m venv {LITELLM_VENV} && "
                           f"{LITELLM_VENV}/bin/pip install 'litellm[proxy]')")
    port = free_port()
    cfg = tmp / "litellm.yaml"
    cfg.write_text(f"""
model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {engine}/v1
      api_key: sk-bench
general_settings:
  master_key: {key}
litellm_settings:
  telemetry: false
  set_verbose: false
  drop_params: true
""")
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"}
    proc = procs.spawn("litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1",
                                   "--port", str(port), "--num_workers", "1"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: chat_ok(base, MODEL, key), 120, "litellm", proc, interval=0.5)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; log: {procs.log_tail('litellm', 600)!r}") from None
    return base


def _engines_toml(kind: str, engines: dict[str, str]) -> str:
    out = []
    for model, url in engines.items():
        out.append(f'[[engines]]\nkind = "{kind}"\nurl = "{url}"\nid = "e-{model}"\n'
                   f'models = ["{model}"]\n')
    return "\n".join(out)


def start_daemons(procs: Procs, kind: str, engines: dict[str, str], tmp: Path,
                  remote: bool, profile: str, old: bool = False
                  ) -> tuple[str, str | None, str | None]:
    """The local daemon's API URL, and, if ``remote``, the engineless peer's (and,
    if ``old``, that of a peer without a data plane: the libp2p forward)."""
    from swarmd.testing.daemon import Daemon

    secret = secrets.token_hex(32)
    root = tmp / "daemons"
    b = Daemon(root, "node-b", secret=secret, profile=profile, log_level="warning",
               extra_toml=_engines_toml(kind, engines))
    procs.on_close(lambda: b.kill() if b.alive() else None)
    b.start()
    wait_until(lambda: chat_ok(b.api_url, MODEL), 30, "swarmd-local", b.proc)
    if not remote and not old:
        return b.api_url, None, None
    urls: list[str | None] = []
    for name, want, plane in (("node-a", remote, True), ("node-a2", old, False)):
        if not want:
            urls.append(None)
            continue
        a = Daemon(root, name, secret=secret, profile=profile, log_level="warning",
                   seeds=[b.seed], dataplane=plane)
        procs.on_close(lambda a=a: a.kill() if a.alive() else None)
        a.start()
        wait_until(lambda a=a: chat_ok(a.api_url, MODEL), 60, name, a.proc, interval=0.3)
        urls.append(a.api_url)
    return b.api_url, urls[0], urls[1]


def start_plain_asyncio(procs: Procs, kind: str, engine: str, tmp: Path, profile: str) -> str:
    """A local-engine daemon on plain asyncio (its own swarm of one)."""
    from swarmd.testing.daemon import Daemon

    d = Daemon(tmp / "daemons", "node-asyncio", secret=secrets.token_hex(32), profile=profile,
               log_level="warning", api_toml='event_loop = "asyncio"',
               extra_toml=_engines_toml(kind, {MODEL: engine}))
    procs.on_close(lambda: d.kill() if d.alive() else None)
    d.start()
    wait_until(lambda: chat_ok(d.api_url, MODEL), 30, "swarmd-asyncio", d.proc)
    return d.api_url


def setup(procs: Procs, tmp: Path, only: set[str], streams: int, stream_tps: float,
          stream_tokens: int, profile: str) -> Setup:
    s = Setup()
    engine, s.engine_kind = start_engine(procs, "engine", MODEL)
    s.urls["direct"] = engine
    stream_engine = ""
    if streams:
        stream_engine, _ = start_engine(procs, "engine-stream", STREAM_MODEL,
                                        ttft_ms=0.0, tps=stream_tps,
                                        max_tokens=stream_tokens)
        s.stream_urls["direct"] = stream_engine

    def attempt(name: str, fn: Callable[[], str]) -> None:
        if name not in only:
            return
        try:
            s.urls[name] = fn()
        except Exception as exc:
            s.why_not[name] = f"{type(exc).__name__}: {exc}"[:400]

    attempt("nginx", lambda: start_nginx(procs, engine, tmp))
    attempt("swarmd-asyncio", lambda: start_plain_asyncio(procs, s.engine_kind, engine, tmp,
                                                           profile))
    s.keys["litellm"] = "sk-bench-" + secrets.token_hex(16)
    attempt("litellm", lambda: start_litellm(procs, engine, tmp, s.keys["litellm"]))
    if only & {"swarmd-local", "swarmd-remote", "swarmd-libp2p"}:
        engines = {MODEL: engine}
        if stream_engine:
            engines[STREAM_MODEL] = stream_engine
        try:
            local, remote, old = start_daemons(procs, s.engine_kind, engines, tmp,
                                               "swarmd-remote" in only, profile,
                                               "swarmd-libp2p" in only)
            if "swarmd-local" in only:
                s.urls["swarmd-local"] = local
            if remote:
                s.urls["swarmd-remote"] = remote
                s.stream_urls["swarmd-remote"] = remote
            if old:
                s.urls["swarmd-libp2p"] = old
            s.stream_urls["swarmd-local"] = local
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"[:600]
            for name in ("swarmd-local", "swarmd-remote", "swarmd-libp2p"):
                if name in only:
                    s.why_not[name] = why
    return s


# -- measuring and printing ------------------------------------------------------------


def measure(s: Setup, levels: list[int], scale: float, duration: float
            ) -> dict[tuple[str, int], dict[str, Any]]:
    res: dict[tuple[str, int], dict[str, Any]] = {}
    for c in levels:
        n = max(c, int(REQUESTS.get(c, 10 * c) * scale))
        for name in PATHS:
            if name not in s.urls:
                continue
            url = s.urls[name] + "/v1/chat/completions"
            try:
                res[(name, c)] = run_loadgen(url, model=MODEL, concurrency=c, requests=n,
                                             warmup=max(50, c), duration=duration,
                                             api_key=s.keys.get(name, ""))
            except Exception as exc:
                res[(name, c)] = {"failed": f"{type(exc).__name__}: {exc}"[:300]}
            print(f"  c={c:<4} {name:14} {_brief(res[(name, c)])}", file=sys.stderr, flush=True)
    return res


def _brief(r: dict[str, Any]) -> str:
    if "failed" in r:
        return "FAILED " + str(r["failed"])
    return f"p50 {r['p50_ms']:.2f} ms  {r['rps']:.0f} req/s  ok {r['ok']} err {r['errors']}"


def _f(x: float, w: int = 8, p: int = 2) -> str:
    return f"{x:>{w}.{p}f}" if isinstance(x, int | float) and not math.isnan(x) else f"{'-':>{w}}"


def print_table(s: Setup, res: dict[tuple[str, int], dict[str, Any]], levels: list[int]) -> None:
    print(f"\nProxy overhead, zero-delay engine ({s.engine_kind} kind; non-streaming chat, "
          f"16 tokens), all on 127.0.0.1")
    hdr = (f"{'conc':>4} | {'path':14} | {'p50 ms':>8} | {'p99 ms':>8} | {'req/s':>8} | "
           f"{'+p50 ms':>8} | {'+p99 ms':>8} | {'errors':>6}")
    print(hdr)
    print("-" * len(hdr))
    for c in levels:
        d = res.get(("direct", c), {})
        for name in PATHS:
            r = res.get((name, c))
            if r is None:
                continue
            if "failed" in r:
                print(f"{c:>4} | {name:14} | failed: {r['failed']}")
                continue
            o50 = r["p50_ms"] - d.get("p50_ms", math.nan) if name != "direct" else math.nan
            o99 = r["p99_ms"] - d.get("p99_ms", math.nan) if name != "direct" else math.nan
            print(f"{c:>4} | {name:14} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | "
                  f"{_f(r['rps'], 8, 0)} | {_f(o50)} | {_f(o99)} | {r['errors']:>6}")
    for name, why in s.why_not.items():
        print(f"     | {name:14} | not measured: {why}")
    for (name, c), r in res.items():
        if r.get("errors"):
            print(f"  errors {name} at {c}: {r['errors']}, first: {r['first_error']}")


def overhead(res: dict[tuple[str, int], dict[str, Any]], name: str, c: int) -> float:
    r, d = res.get((name, c)), res.get(("direct", c))
    if not r or not d or "failed" in r or "failed" in d:
        return math.nan
    return float(r["p50_ms"] - d["p50_ms"])


def rps(res: dict[tuple[str, int], dict[str, Any]], name: str, c: int) -> float:
    r = res.get((name, c))
    return math.nan if not r or "failed" in r else float(r["rps"])


def _verdict(x: float, ok: bool) -> str:
    return "n/a" if math.isnan(x) else ("MET" if ok else "NOT MET")


def print_targets(res: dict[tuple[str, int], dict[str, Any]], levels: list[int]) -> None:
    if 1 not in levels:
        return
    loc, rem, old, lit = (overhead(res, n, 1) for n in
                          ("swarmd-local", "swarmd-remote", "swarmd-libp2p", "litellm"))
    hop = rem - loc
    print("\nTargets (c=1: p50 added vs direct; the hop: remote minus local):")
    print(f"  swarmd-local  adds {_f(loc, 6, 3)} ms  (target <= 0.3 ms)  "
          f"{_verdict(loc, loc <= 0.3)}")
    plain = overhead(res, "swarmd-asyncio", 1)
    print(f"  (swarmd-local on plain asyncio adds {_f(plain, 6, 3)} ms; c=16 req/s "
          f"{_f(rps(res, 'swarmd-asyncio', 16), 6, 0)} vs {_f(rps(res, 'swarmd-local', 16), 6, 0)})")
    print(f"  remote hop    adds {_f(hop, 6, 3)} ms  (target <= 1 ms)    "
          f"{_verdict(hop, hop <= 1.0)}   [old libp2p hop: {_f(old - loc, 6, 3)} ms]")
    if 16 in levels:
        r_loc, r_ng, r_rem, r_old = (rps(res, n, 16) for n in
                                     ("swarmd-local", "nginx", "swarmd-remote", "swarmd-libp2p"))
        a, b = r_loc / r_ng, r_rem / r_loc
        print(f"  c=16 local / nginx req/s  {_f(a, 6, 2)}x (target >= 0.5x)  {_verdict(a, a >= 0.5)}")
        print(f"  c=16 remote / local req/s {_f(b, 6, 2)}x (target >= 0.8x)  "
              f"{_verdict(b, b >= 0.8)}   [old libp2p: {_f(r_old / r_loc, 6, 2)}x]")
    ratio = lit / loc if not math.isnan(lit) and not math.isnan(loc) and loc > 0 else math.nan
    print(f"  litellm       {_f(lit, 6, 3)} ms  = {_f(ratio, 4, 1)}x swarmd-local "
          f"(target >= 5x)  {_verdict(ratio, ratio >= 5.0)}")
    if not math.isnan(loc) and loc <= 0:
        print("  (swarmd-local overhead is within noise of direct: ratio not meaningful)")


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped because an accept queue was
    full (TcpExt ListenOverflows, all sockets), None where unreadable."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(row["ListenOverflows"]) if "ListenOverflows" in row else None
    return None


def run_streams(s: Setup, streams: int, tokens: int, tps: float, duration: float) -> None:
    if not streams or "direct" not in s.stream_urls:
        return
    rows: dict[str, dict[str, Any]] = {}
    for name in ("direct", "swarmd-local", "swarmd-remote"):
        if name not in s.stream_urls:
            continue
        url = s.stream_urls[name] + "/v1/chat/completions"
        before = listen_overflows()
        try:
            rows[name] = run_loadgen(url, model=STREAM_MODEL, concurrency=streams,
                                     requests=streams, warmup=0, duration=duration,
                                     stream=True, max_tokens=tokens, timeout=120)
        except Exception as exc:
            rows[name] = {"failed": f"{type(exc).__name__}: {exc}"[:300]}
        after = listen_overflows()
        rows[name]["overflows"] = None if before is None or after is None else after - before
        print(f"  streams {name:14} {rows[name]}", file=sys.stderr, flush=True)
    ideal = streams * tps
    print(f"\n{streams} concurrent streams, {tokens} tokens each at {tps:g} tok/s per stream "
          f"(ideal {ideal:.0f} tok/s)")
    hdr = (f"{'path':14} | {'tok/s':>8} | {'vs direct':>9} | {'TTFT p50':>8} | "
           f"{'1st ev p99':>8} | {'done p50 s':>10} | {'ok':>4} | {'err':>4} | "
           "SYNs dropped")
    print(hdr)
    print("-" * len(hdr))
    base = rows.get("direct", {}).get("tok_per_s")
    for name, r in rows.items():
        if "failed" in r:
            print(f"{name:14} | failed: {r['failed']}")
            continue
        ratio = r["tok_per_s"] / base if base else math.nan
        print(f"{name:14} | {_f(r['tok_per_s'], 8, 0)} | {_f(ratio, 9, 3)} | "
              f"{_f(r['ttft_p50_ms'], 8, 1)} | {_f(r['ttft_p99_ms'], 8, 1)} | "
              f"{_f(r['p50_ms'] / 1000, 10, 2)} | {r['ok']:>4} | {r['errors']:>4} | "
              f"{'-' if r['overflows'] is None else r['overflows']}")
    if "swarmd-local" not in rows and "swarmd-local" in s.why_not:
        print(f"swarmd-local   | not measured: {s.why_not['swarmd-local']}")
    print("(SYNs dropped: the kernel's ListenOverflows during that path's run, every "
          "listener on the machine; each costs its client a 1 s retransmit.)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,16,64,256")
    ap.add_argument("--only", default=",".join(PATHS), help="comma list of paths")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply request counts")
    ap.add_argument("--duration", type=float, default=12.0, help="time bound per level, s")
    ap.add_argument("--streams", type=int, default=500, help="0 skips the stream test")
    ap.add_argument("--stream-tokens", type=int, default=100)
    ap.add_argument("--stream-tps", type=float, default=50.0)
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("--profile", default="local", help="daemons' membership profile")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",") if x]
    only = {"direct", *a.only.split(",")}
    die_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="swarmd-proxy-"))
    t0 = time.monotonic()
    ok = False
    try:
        with Procs(tmp) as procs:
            s = setup(procs, tmp, only, a.streams, a.stream_tps, a.stream_tokens,
                      a.profile)
            print(f"setup {time.monotonic() - t0:.1f}s; paths: {', '.join(s.urls)}; "
                  f"logs in {tmp}", file=sys.stderr, flush=True)
            res = measure(s, levels, a.scale, a.duration)
            print_table(s, res, levels)
            print_targets(res, levels)
            run_streams(s, a.streams, a.stream_tokens, a.stream_tps, 60.0)
            ok = True
    finally:
        print(f"\n(total {time.monotonic() - t0:.0f}s)", file=sys.stderr)
        if ok and not a.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        elif not ok:
            print(f"logs kept in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    main()
