"""Measure before choosing: HTTP/1.1 keep-alive between two aiohttp processes, TLS vs plain.

Theory of operation: the parent starts a server process (aiohttp on
127.0.0.1, with or without TLS from Python's ``ssl``; a throwaway ECDSA
P-256 certificate) and measures from its own event loop, over one warm
keep-alive connection:

* small round trip: ``POST /echo`` with a 100-byte body, sequentially,
  p50 and p99 over ``--small`` requests (after 50 warm-up requests);
* bulk: ``GET /bulk?n=`` streams ``--bulk-mb`` MiB from memory in 256 KiB
  writes; MB/s over the whole body, read with ``readany``.

The libp2p figure to compare with (31 MB/s for one stream, 0.74 ms for a
100-byte round trip on an open stream) is in /work/shared/FIELD-NOTES.md.

    .venv/bin/python bench/dataplane_probe.py [--small 1000] [--bulk-mb 256]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

CHUNK = b"x" * (256 * 1024)


def make_cert(d: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cp, kp = d / "cert.pem", d / "key.pem"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cp, kp


async def serve(port: int, cert: str | None, key: str | None) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    async def bulk(request: web.Request) -> web.StreamResponse:
        n = int(request.query["n"])
        resp = web.StreamResponse()
        resp.content_length = n
        await resp.prepare(request)
        while n > 0:
            part = CHUNK if n >= len(CHUNK) else CHUNK[:n]
            await resp.write(part)
            n -= len(part)
        return resp

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/bulk", bulk)
    ctx = None
    if cert and key:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def measure(url: str, ctx: ssl.SSLContext | bool, small: int, bulk_mb: int
                  ) -> dict[str, float]:
    conn = aiohttp.TCPConnector(limit=1, ssl=ctx)
    async with aiohttp.ClientSession(connector=conn) as s:
        body = b"y" * 100
        for _ in range(50):
            async with s.post(url + "/echo", data=body) as r:
                await r.read()
        lat = []
        for _ in range(small):
            t = time.perf_counter()
            async with s.post(url + "/echo", data=body) as r:
                await r.read()
            lat.append(time.perf_counter() - t)
        lat.sort()
        n = bulk_mb * 1024 * 1024
        t = time.perf_counter()
        got = 0
        async with s.get(url + "/bulk", params={"n": str(n)}) as r:
            while True:
                data = await r.content.readany()
                if not data:
                    break
                got += len(data)
        dt = time.perf_counter() - t
        assert got == n, (got, n)
    return {"p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
            "MB_s": n / dt / 1e6}


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_case(tls: bool, d: Path, small: int, bulk_mb: int) -> dict[str, float]:
    port = free_port()
    args = [sys.executable, __file__, "--serve", str(port)]
    cp, kp = make_cert(d)
    if tls:
        args += ["--cert", str(cp), "--key", str(kp)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        ctx: ssl.SSLContext | bool = False
        if tls:
            c = ssl.create_default_context(cafile=str(cp))
            c.check_hostname = False
            ctx = c
        scheme = "https" if tls else "http"
        return asyncio.run(measure(f"{scheme}://127.0.0.1:{port}", ctx, small, bulk_mb))
    finally:
        proc.terminate()
        proc.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", type=int)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--bulk-mb", type=int, default=256)
    a = ap.parse_args()
    if a.serve:
        asyncio.run(serve(a.serve, a.cert, a.key))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = {"plain": run_case(False, Path(tmp), a.small, a.bulk_mb),
               "tls": run_case(True, Path(tmp), a.small, a.bulk_mb)}
    print(f"{'path':28} {'p50 ms':>8} {'p99 ms':>8} {'MB/s':>8}")
    for k, v in out.items():
        print(f"{'aiohttp http/1.1 ' + k:28} {v['p50_ms']:8.3f} {v['p99_ms']:8.3f} "
              f"{v['MB_s']:8.0f}")
    print(f"{'libp2p forward (FIELD-NOTES)':28} {0.74:8.3f} {'-':>8} {31:8.0f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
