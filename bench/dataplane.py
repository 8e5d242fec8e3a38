"""The data plane measured: remote hop vs direct, and blob transfer vs curl from nginx.

Theory of operation: every party is its own process on 127.0.0.1.

* engine: the SIMULATED engine (zero delay, 4-token chat), as in bench/run proxy;
* node B (``--role b``): a DataPlaneServer whose ``open_local`` is the API's
  LocalUpstream to that engine, and which serves one blob file;
* node A (``--role a``): the real ApiServer whose ``Forwarder`` is a
  DataPlaneClient to B (a snapshot names B as the engine's node), plus a
  control port whose ``POST /fetch`` runs ``fetch_range`` of the whole blob
  into a file (so the transfer runs inside A's process);
* optionally (``--old``) the real swarmd daemons of bench/proxy_compare.py:
  swarmd local, and the remote hop over the old libp2p forward protocol.

Requests: bench/loadgen.py (its own process), c=1 p50 and c=16 req/s for each
path.  Blob: a ``--blob-mb`` file of random bytes; nginx (``sendfile on``,
plain HTTP) fetched with ``curl`` to /dev/null and to a file, then node B ->
node A over the data plane (TLS, verified by sha256, written to a file).
During each transfer the sender's and receiver's CPU seconds (utime+stime,
/proc/PID/stat) and peak RSS (VmRSS sampled every 20 ms) are recorded.

    .venv/bin/python bench/dataplane.py [--blob-mb 512] [--duration 4] [--old]

Nothing here is a product path: the snapshot is made up, the identities are
fresh, the secret is random.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    Procs,
    die_on_sigterm,
    free_port,
    nginx_exe,
    run_loadgen,
    start_engine,
    wait_until,
)

MODEL = "bench"
TOKENS = 4


# -- the node processes -------------------------------------------------------------------


def _engines(url: str) -> Any:
    from swarmd.testing.local_engines import UrlEngines

    return UrlEngines({"e1": url})


async def role_b(a: argparse.Namespace) -> None:
    from swarmd.api.upstream import LocalUpstream
    from swarmd.dataplane import node_cert
    from swarmd.dataplane.server import DataPlaneServer
    from swarmd.identity import Identity

    me = Identity.from_private_bytes(bytes.fromhex(a.seed))
    local = LocalUpstream(_engines(a.engine), LocalUpstream.new_session())
    blob = Path(a.blob)
    srv = DataPlaneServer(cert=node_cert(me, bytes.fromhex(a.secret)),
                          is_admitted=lambda p: True, open_local=local.open,
                          blob_path=lambda d: blob if d == a.digest else None)
    await srv.start("127.0.0.1", a.port)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def role_a(a: argparse.Namespace) -> None:
    from aiohttp import web

    from swarmd.api.app import ApiDeps, ApiServer
    from swarmd.config import ApiSection, RoutingSection
    from swarmd.dataplane import node_cert
    from swarmd.dataplane.client import DataPlaneClient
    from swarmd.identity import Identity
    from swarmd.testing.swarm_snapshot import node, snapshot

    me = Identity.from_private_bytes(bytes.fromhex(a.seed))
    b_id = a.peer
    client = DataPlaneClient(node_cert(me, bytes.fromhex(a.secret)), lambda p: True,
                             lambda n: ("127.0.0.1", a.dp_port) if n == b_id else None)
    rec = [{"id": "e1", "kind": "simulated", "healthy": True, "models": [MODEL]}]
    snap = snapshot(others=[node(b_id, rec)], self_id=me.peer_id)
    api = ApiServer(ApiDeps(api=ApiSection(listen=f"127.0.0.1:{a.port}"),
                            routing=RoutingSection(), snapshot=lambda: snap, remote=client))
    await api.start()

    async def fetch(request: web.Request) -> web.Response:
        doc = await request.json()
        dest = Path(doc["dest"])
        t = time.monotonic()
        r = await client.fetch_range(b_id, doc["digest"], 0, int(doc["size"]), dest)
        return web.json_response({"seconds": time.monotonic() - t, "nbytes": r.nbytes})

    app = web.Application()
    app.router.add_post("/fetch", fetch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", a.ctl_port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


# -- measuring ------------------------------------------------------------------------------


class ProcWatch:
    """CPU seconds and peak RSS of some processes while a ``with`` block runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.cpu: dict[str, float] = {}
        self.rss_peak: dict[str, int] = dict.fromkeys(pids, 0)
        self.rss_before: dict[str, int] = {}
        self._stop = threading.Event()

    @staticmethod
    def _cpu(pid: int) -> float:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _rss(pid: int) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for k, pid in self.pids.items():
                self.rss_peak[k] = max(self.rss_peak[k], self._rss(pid))

    def __enter__(self) -> ProcWatch:
        self._c0 = {k: self._cpu(p) for k, p in self.pids.items()}
        self.rss_before = {k: self._rss(p) for k, p in self.pids.items()}
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.cpu = {k: self._cpu(p) - self._c0[k] for k, p in self.pids.items()}


def start_nginx_static(procs: Procs, root: Path, tmp: Path, host: str = "127.0.0.1",
                       netns: str | None = None) -> tuple[str, int] | None:
    """nginx (one worker, sendfile) serving ``root`` on ``host``, in network
    namespace ``netns`` if given: (base URL, the worker's pid); None without nginx."""
    exe = nginx_exe()
    if exe is None:
        return None
    d = tmp / "nginx"
    d.mkdir()
    os.chmod(d, 0o777)
    port = free_port()
    (d / "nginx.conf").write_text(f"""
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{ listen {host}:{port}; root {root}; }}
}}
""")
    pre = ["ip", "netns", "exec", netns] if netns else []
    proc = procs.spawn("nginx", [*pre, exe, "-p", str(d), "-c", str(d / "nginx.conf"),
                                 "-e", str(d / "error.log")])
    base = f"http://{host}:{port}"

    def up() -> bool:
        r = subprocess.run([*pre, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            "-r", "0-0", base + "/model.bin"], capture_output=True, text=True,
                           check=False, timeout=5)
        return r.stdout.strip() in ("200", "206")

    wait_until(up, 10, "nginx", proc)
    # nginx has one worker: the worker, not the master, moves the bytes.
    time.sleep(0.3)
    kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return base, int(kids[0]) if kids else proc.pid


def curl(url: str, out: str, pids: dict[str, int], netns: str | None = None) -> dict[str, Any]:
    pre = ["ip", "netns", "exec", netns] if netns else []
    with ProcWatch(pids) as w:
        r = subprocess.run([*pre, "curl", "-s", "-o", out, "-w", "%{speed_download} %{size_download}",
                            url], capture_output=True, text=True, check=True, timeout=120)
    speed, size = r.stdout.split()
    return {"MB_s": float(speed) / 1e6, "bytes": int(float(size)), "watch": w}


def make_blob(path: Path, mb: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(mb):
            chunk = os.urandom(1024 * 1024)
            h.update(chunk)
            f.write(chunk)
    os.chmod(path, 0o644)
    return h.hexdigest()


def spawn_node(procs: Procs, name: str, args: list[str]) -> subprocess.Popen[bytes]:
    proc = procs.spawn(name, [sys.executable, __file__, *args],
                       env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    log = procs.log_dir / f"{name}.log"
    wait_until(lambda: b"ready" in log.read_bytes(), 30, name, proc)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", choices=("a", "b"))
    ap.add_argument("--seed")
    ap.add_argument("--secret")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--dp-port", type=int, default=0)
    ap.add_argument("--ctl-port", type=int, default=0)
    ap.add_argument("--peer")
    ap.add_argument("--engine")
    ap.add_argument("--blob")
    ap.add_argument("--digest")
    ap.add_argument("--blob-mb", type=int, default=512)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--old", action="store_true",
                    help="also the real daemons: swarmd local and the libp2p remote hop")
    a = ap.parse_args()
    if a.role == "b":
        asyncio.run(role_b(a))
        return
    if a.role == "a":
        asyncio.run(role_a(a))
        return
    die_on_sigterm()
    from swarmd.identity import Identity

    with tempfile.TemporaryDirectory(prefix="swarmd-dp-bench-") as tmp_s, \
            Procs(Path(tmp_s)) as procs:
        tmp = Path(tmp_s)
        blobdir = tmp / "blobs"
        blobdir.mkdir()
        os.chmod(tmp, 0o755)  # nginx's worker runs as another user
        os.chmod(blobdir, 0o755)
        blob = blobdir / "model.bin"
        t = time.monotonic()
        digest = make_blob(blob, a.blob_mb)
        print(f"# blob: {a.blob_mb} MiB written in {time.monotonic() - t:.1f} s", flush=True)
        engine, _ = start_engine(procs, "engine", MODEL, max_tokens=TOKENS)
        ia, ib = Identity.generate(), Identity.generate()
        secret = secrets.token_hex(32)
        dp_port, api_port, ctl_port = free_port(), free_port(), free_port()
        pb = spawn_node(procs, "node-b", ["--role", "b", "--seed", ib.private_bytes.hex(),
                                          "--secret", secret, "--port", str(dp_port),
                                          "--engine", engine, "--blob", str(blob),
                                          "--digest", digest])
        pa = spawn_node(procs, "node-a", ["--role", "a", "--seed", ia.private_bytes.hex(),
                                          "--secret", secret, "--port", str(api_port),
                                          "--dp-port", str(dp_port), "--ctl-port",
                                          str(ctl_port), "--peer", ib.peer_id])
        paths = {"direct": engine, "dataplane remote hop": f"http://127.0.0.1:{api_port}"}
        if a.old:
            try:
                from bench.proxy_compare import start_daemons

                local, remote, old = start_daemons(procs, "simulated", {"e1": engine}, tmp,
                                                   True, "local", True)
                paths["swarmd local (daemon)"] = local
                if remote:
                    paths["data-plane remote hop (daemon)"] = remote
                if old:
                    paths["libp2p remote hop (daemon)"] = old
            except Exception as exc:  # noqa: BLE001 - report, measure the rest
                print(f"# --old: daemons not measured: {exc}", flush=True)
        res: dict[tuple[str, int], dict[str, Any]] = {}
        for name, url in paths.items():
            for c in (1, 16):
                res[(name, c)] = run_loadgen(url + "/v1/chat/completions", model=MODEL,
                                             concurrency=c, requests=10**6, warmup=50 * c,
                                             duration=a.duration, max_tokens=TOKENS)
        print("\n## requests (4-token chat, zero-delay simulated engine, keep-alive)")
        print(f"| {'path':28} | c=1 p50 ms | c=1 req/s | c=16 req/s | errors |")
        print(f"|{'-' * 30}|-----------:|----------:|-----------:|-------:|")
        for name in paths:
            r1, r16 = res[(name, 1)], res[(name, 16)]
            print(f"| {name:28} | {r1['p50_ms']:10.2f} | {r1['rps']:9.0f} | "
                  f"{r16['rps']:10.0f} | {r1['errors'] + r16['errors']:6d} |")
        hop = res[("dataplane remote hop", 1)]["p50_ms"] - res[("direct", 1)]["p50_ms"]
        print(f"\ndata-plane hop adds {hop:.2f} ms p50 at c=1 over direct; c=16 holds "
              f"{res[('dataplane remote hop', 16)]['rps'] / res[('direct', 16)]['rps']:.2f}x "
              "direct")
        if ("swarmd local (daemon)", 16) in res:
            loc = res[("swarmd local (daemon)", 16)]["rps"]
            print(f"c=16: dataplane remote hop / swarmd local = "
                  f"{res[('dataplane remote hop', 16)]['rps'] / loc:.2f}")

        print(f"\n## blob transfer ({a.blob_mb} MiB, page-cached source, loopback)")
        rows: list[tuple[str, float, str, ProcWatch]] = []
        ng = start_nginx_static(procs, blobdir, tmp)
        if ng is not None:
            base, ngpid = ng
            for out in ("/dev/null", str(tmp / "curl.out")):
                curl(base + "/model.bin", out, {"sender": ngpid})  # warm
                r = curl(base + "/model.bin", out, {"sender": ngpid})
                assert r["bytes"] == a.blob_mb * 1024 * 1024
                rows.append((f"curl <- nginx, to {'/dev/null' if out == '/dev/null' else 'file'}",
                             r["MB_s"], "http, sendfile", r["watch"]))
                if os.path.exists(tmp / "curl.out"):
                    os.unlink(tmp / "curl.out")
        else:
            print("# nginx not installed: no curl baseline")
        import urllib.request

        size = a.blob_mb * 1024 * 1024
        for i in range(2):  # first run warms the pool and the page cache of the dest
            dest = tmp / f"dp.out{i}"
            body = json.dumps({"digest": digest, "size": size, "dest": str(dest)}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{ctl_port}/fetch", data=body)
            with ProcWatch({"sender": pb.pid, "receiver": pa.pid}) as w:
                with urllib.request.urlopen(req, timeout=300) as resp:  # noqa: S310
                    doc = json.loads(resp.read())
            dest.unlink()
        rows.append(("data plane B -> A, to file", size / doc["seconds"] / 1e6,
                     "TLS 1.3 + sha256 verify", w))
        print(f"| {'transfer':32} | MB/s  | {'what':24} | sender CPU s | sender RSS MiB "
              "(before/peak) | receiver CPU s | receiver RSS MiB |")
        print(f"|{'-' * 34}|------:|{'-' * 26}|------------:|------------:|-------------:|"
              "-------------:|")
        mib = 1024 * 1024
        for name, mbs, what, w in rows:
            rc = w.cpu.get("receiver")
            rx = (f"{rc:12.2f} | {w.rss_before['receiver'] / mib:5.0f}/"
                  f"{w.rss_peak['receiver'] / mib:5.0f}") if rc is not None else \
                f"{'(curl)':>12} | {'':>11}"
            print(f"| {name:32} | {mbs:5.0f} | {what:24} | {w.cpu['sender']:11.2f} | "
                  f"{w.rss_before['sender'] / mib:5.0f}/{w.rss_peak['sender'] / mib:5.0f} | "
                  f"{rx} |")
        if ng is not None:
            print(f"\ndata plane / curl<-nginx (to file) = {rows[-1][1] / rows[1][1]:.2f}; "
                  f"/ curl<-nginx (/dev/null) = {rows[-1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
