"""The data plane end to end: real TLS on 127.0.0.1, the SIMULATED engine behind it.

Node A runs a DataPlaneClient; node B a DataPlaneServer whose ``open_local``
is the real LocalUpstream calling a simulated engine (or a small bulk engine
for backpressure).  Membership is a set of alive peer ids (the admission
oracle).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from swarmd.api.upstream import Deadlines, LocalUpstream, ProxyRequest, UpstreamError
from swarmd.dataplane import certs, node_cert, tls
from swarmd.dataplane.client import BlobError, DataPlaneClient
from swarmd.dataplane.server import DataPlaneServer, ServerLimits
from swarmd.engines.simulated import SimulatedEngine, start_simulated_engine
from swarmd.identity import Identity
from swarmd.testing.local_engines import UrlEngines

SECRET = b"\x11" * 32
A, B = Identity.generate(), Identity.generate()
MODEL = "sim-model"


Engines = UrlEngines  # LocalEngines over HTTP servers by engine id (the testing kit's)


@dataclass
class Net:
    alive: set[str]
    server: DataPlaneServer
    client: DataPlaneClient
    engine: SimulatedEngine
    opened: list[str] = field(default_factory=list)

    def admitted(self, peer_id: str) -> bool:
        return peer_id in self.alive


def deadlines(first_byte: float = 10.0, idle: float = 10.0, total: float = 30.0) -> Deadlines:
    return Deadlines(2.0, first_byte, idle, time.monotonic() + total)


def chat(stream: bool = False, tokens: int = 8) -> ProxyRequest:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi there"}],
                       "stream": stream, "max_tokens": tokens}).encode()
    return ProxyRequest("/v1/chat/completions", body, MODEL,
                        headers=(("content-type", "application/json"), ("X-Request-Id", "r1")),
                        request_id="r1")


@contextlib.asynccontextmanager
async def net(*, sim: dict[str, Any] | None = None, limits: ServerLimits | None = None,
              extra_engines: dict[str, str] | None = None,
              blobs: dict[str, Path] | None = None,
              client_cert: certs.NodeCert | None = None,
              server_cert: certs.NodeCert | None = None) -> AsyncIterator[Net]:
    engine = await start_simulated_engine(**{"max_tokens": 4096, **(sim or {})})
    session = LocalUpstream.new_session()
    local = LocalUpstream(Engines({"e1": engine.url, **(extra_engines or {})}), session)
    alive = {A.peer_id, B.peer_id}
    holder: dict[str, Net] = {}

    async def open_local(engine_id: str, req: ProxyRequest, dl: Deadlines) -> Any:
        holder["n"].opened.append(engine_id)
        return await local.open(engine_id, req, dl)

    server = DataPlaneServer(cert=server_cert or node_cert(B, SECRET),
                             is_admitted=lambda p: p in alive, open_local=open_local,
                             blob_path=(blobs or {}).get, limits=limits or ServerLimits())
    port = await server.start()
    client = DataPlaneClient(client_cert or node_cert(A, SECRET), lambda p: p in alive,
                             lambda n: ("127.0.0.1", port) if n == B.peer_id else None)
    n = holder["n"] = Net(alive, server, client, engine)
    try:
        yield n
    finally:
        await client.close()
        await server.stop()
        await session.close()
        await engine.stop()


def run(fn: Callable[[], Awaitable[None]], limit: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(fn(), limit))


async def read_all(up: Any) -> bytes:
    out = []
    try:
        while chunk := await up.read():
            out.append(chunk)
    finally:
        await up.aclose()
    return b"".join(out)


async def until(cond: Callable[[], bool], within: float = 3.0) -> None:
    t = time.monotonic() + within
    while not cond():
        assert time.monotonic() < t, "condition not reached in time"
        await asyncio.sleep(0.01)


# -- forwarding ----------------------------------------------------------------------------


def test_forward_plain_and_stream_match_the_engine() -> None:
    async def go() -> None:
        async with net() as n:
            up = await n.client.open(B.peer_id, "e1", chat(), deadlines())
            assert up.status == 200
            doc = json.loads(await read_all(up))
            async with aiohttp.ClientSession() as http:
                async with http.post(n.engine.url + "/v1/chat/completions",
                                     data=chat().body) as r:
                    direct = await r.json()
                async with http.get(n.engine.url + "/debug/last_request") as r:
                    seen = await r.json()
            assert doc["choices"][0]["message"] == direct["choices"][0]["message"]
            assert seen["route"] == "/v1/chat/completions"
            up = await n.client.open(B.peer_id, "e1", chat(stream=True, tokens=50), deadlines())
            assert dict(up.headers)["Content-Type"].startswith("text/event-stream")
            events = [e for e in (await read_all(up)).split(b"\n\n") if e]
            assert events[-1] == b"data: [DONE]" and len(events) == 53  # role, 50 tokens, stop, DONE
            for _ in range(20):
                await read_all(await n.client.open(B.peer_id, "e1", chat(), deadlines()))
            assert n.client.pooled(B.peer_id) == 1  # one warm connection, reused
            assert n.server.stats["completed"] == 22
            assert await n.client.ping(B.peer_id) < 1.0
    run(go)


def test_forwarded_headers_reach_the_engine() -> None:
    async def go() -> None:
        async with net() as n:
            await read_all(await n.client.open(B.peer_id, "e1", chat(), deadlines()))
            async with aiohttp.ClientSession() as http:
                async with http.get(n.engine.url + "/debug/last_request") as r:
                    seen = await r.json()
            hdrs = {k.lower(): v for k, v in seen["headers"].items()}
            assert hdrs["x-request-id"] == "r1" and hdrs["content-type"] == "application/json"
            assert not any(k.startswith("swarmd-") for k in hdrs)
    run(go)


def test_client_disconnect_cancels_the_engine_request() -> None:
    async def go() -> None:
        async with net(sim={"tps": 20}) as n:
            up = await n.client.open(B.peer_id, "e1", chat(stream=True, tokens=400), deadlines())
            assert await up.read()
            assert n.engine.running == 1
            await up.aclose()  # mid-stream
            await until(lambda: n.engine.running == 0)
            await until(lambda: n.server.stats["cancelled"] == 1)
    run(go)


async def _bulk_engine(size: int, written: list[int]) -> tuple[web.AppRunner, str]:
    """An engine answering with ``size`` bytes in 64 KiB writes; counts what it wrote."""
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        chunk = b"z" * 65536
        while written[0] < size:
            await resp.write(chunk)
            written[0] += len(chunk)
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def test_backpressure_a_stalled_reader_stops_the_engine() -> None:
    size = 128 * 1024 * 1024

    async def go() -> None:
        written = [0]
        runner, url = await _bulk_engine(size, written)
        try:
            async with net(extra_engines={"bulk": url}) as n:
                up = await n.client.open(B.peer_id, "bulk", chat(), deadlines())
                got = len(await up.read())
                await asyncio.sleep(0.5)  # the reader stalls
                stalled = written[0]
                await asyncio.sleep(0.3)
                assert written[0] == stalled, "the engine kept writing into a stalled reader"
                assert stalled < 32 * 1024 * 1024, f"{stalled} bytes buffered between hops"
                while chunk := await up.read():
                    got += len(chunk)
                await up.aclose()
                assert got == size == written[0]
        finally:
            await runner.cleanup()
    run(go)


def test_stale_pooled_connection_is_replaced() -> None:
    async def go() -> None:
        async with net(limits=ServerLimits(keepalive=0.2)) as n:
            await read_all(await n.client.open(B.peer_id, "e1", chat(), deadlines()))
            await asyncio.sleep(0.5)  # the server has closed the idle connection
            up = await n.client.open(B.peer_id, "e1", chat(), deadlines())
            assert up.status == 200 and await read_all(up)
    run(go)


def test_server_gone_is_a_retryable_error_before_the_first_byte() -> None:
    async def go() -> None:
        async with net(sim={"ttft_ms": 3000}, limits=ServerLimits()) as n:
            task = asyncio.ensure_future(n.client.open(B.peer_id, "e1", chat(), deadlines()))
            await until(lambda: n.engine.running == 1)
            n.server._runner._shutdown_timeout = 0.05  # type: ignore[union-attr]
            await n.server.stop()  # the node dies with the request in flight
            with pytest.raises(UpstreamError) as ei:
                await task
            assert ei.value.kind in ("connect", "upstream")
            with pytest.raises(UpstreamError) as ei:
                await n.client.open(B.peer_id, "e1", chat(), deadlines())
            assert ei.value.kind == "connect"
    run(go)


def test_deadlines_first_byte_and_idle() -> None:
    async def go() -> None:
        async with net(sim={"ttft_ms": 3000}) as n:
            t = time.monotonic()
            with pytest.raises(UpstreamError) as ei:
                await n.client.open(B.peer_id, "e1", chat(), deadlines(first_byte=0.3))
            assert ei.value.kind == "timeout" and time.monotonic() - t < 1.5
            await until(lambda: n.engine.running == 0)  # the server gave up on the engine too
        async with net(sim={"tps": 2}) as n:
            up = await n.client.open(B.peer_id, "e1", chat(stream=True, tokens=5),
                                     deadlines(idle=0.2))
            with pytest.raises(UpstreamError) as ei:
                for _ in range(5):
                    await up.read()
            assert ei.value.kind == "timeout"
            await up.aclose()
        async with net() as n:
            with pytest.raises(UpstreamError) as ei:
                await n.client.open(B.peer_id, "e1", chat(), deadlines(total=-1))
            assert ei.value.kind == "timeout"
    run(go)


def test_engine_error_kinds_cross_the_plane() -> None:
    async def go() -> None:
        async with net(sim={"concurrency": 1, "queue": 0, "tps": 20},
                       extra_engines={"down": "http://127.0.0.1:9"}) as n:
            busy = await n.client.open(B.peer_id, "e1", chat(stream=True, tokens=100),
                                       deadlines())
            with pytest.raises(UpstreamError) as ei:
                await n.client.open(B.peer_id, "e1", chat(), deadlines())
            assert (ei.value.kind, ei.value.status, ei.value.retry_after) == ("saturated", 429,
                                                                            1.0)
            await busy.aclose()
            with pytest.raises(UpstreamError) as ei:
                await n.client.open(B.peer_id, "nope", chat(), deadlines())
            assert ei.value.kind == "unavailable"
            with pytest.raises(UpstreamError) as ei:
                await n.client.open(B.peer_id, "down", chat(), deadlines())
            assert ei.value.kind == "connect"
            with pytest.raises(UpstreamError) as ei:
                await n.client.open("12D3KooWUnknown", "e1", chat(), deadlines())
            assert ei.value.kind == "connect"  # no address
    run(go)


# -- refused peers ------------------------------------------------------------------------------


def _forged(identity: Identity, claims: Identity, secret: bytes = SECRET) -> certs.NodeCert:
    """A cert under the right CA whose extension claims ``claims`` but is signed by ``identity``."""
    key = ec.generate_private_key(ec.SECP256R1())
    good = certs.libp2p_extension(identity, key.public_key())
    _, sig = certs.decode_signed_key(good)
    ext = certs.encode_signed_key(b"\x08\x01\x12\x20" + claims.public_bytes, sig)
    ca = certs.swarm_ca(secret)
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(9)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.UnrecognizedExtension(certs.LIBP2P_OID, ext), critical=False)
            .sign(ca.key, None))
    return certs.NodeCert(claims.peer_id, cert.public_bytes(serialization.Encoding.PEM),
                          key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), ca.pem)


def _other_swarm(identity: Identity) -> certs.NodeCert:
    """A cert from another swarm's CA, presented by a node that trusts ours."""
    own = node_cert(identity, b"\x22" * 32)
    return certs.NodeCert(identity.peer_id, own.cert_pem, own.key_pem, certs.swarm_ca(SECRET).pem)


async def _refused(n: Net) -> UpstreamError:
    with pytest.raises(UpstreamError) as ei:
        await n.client.open(B.peer_id, "e1", chat(), deadlines())
    assert n.opened == [] and n.server.stats["forwarded"] == 0
    return ei.value


def test_client_with_the_wrong_secret_is_refused_in_the_handshake() -> None:
    async def go() -> None:
        async with net(client_cert=_other_swarm(A)) as n:
            assert (await _refused(n)).kind == "connect"
            assert n.server.check.stats["verified"] == 0  # never got past OpenSSL
        async with net(client_cert=node_cert(A, b"\x22" * 32)) as n:  # distrusts B too
            err = await _refused(n)
            assert err.kind == "connect" and "TLS" in err.message
    run(go)


def test_server_with_the_wrong_secret_or_identity_is_refused_by_the_client() -> None:
    async def go() -> None:
        async with net(server_cert=_other_swarm(B)) as n:
            err = await _refused(n)
            assert err.kind == "connect" and "TLS" in err.message
        c = Identity.generate()
        async with net(server_cert=node_cert(c, SECRET)) as n:  # a member, but not B
            n.alive.add(c.peer_id)
            err = await _refused(n)
            assert err.kind == "connect" and "expected peer" in err.message
            assert n.client.check.stats["refused_identity"] == 1
        async with net(server_cert=_forged(c, B)) as n:  # claims B's identity
            err = await _refused(n)
            assert err.kind == "connect" and "signature" in err.message
    run(go)


def test_forged_or_unadmitted_client_is_refused_before_any_request() -> None:
    async def go() -> None:
        async with net(client_cert=_forged(Identity.generate(), A)) as n:
            await _refused(n)
            assert n.server.stats["refused_connections"] >= 1
        async with net() as n:
            n.alive.discard(A.peer_id)  # B does not (or no longer) list A
            n.client.check.is_admitted = lambda p: True  # A still thinks it may talk
            await _refused(n)
            assert n.server.stats["refused_connections"] >= 1
            assert n.server.check.stats["refused_admission"] >= 1
    run(go)


def test_member_declared_dead_is_refused_on_its_open_connection() -> None:
    async def go() -> None:
        async with net() as n:
            await read_all(await n.client.open(B.peer_id, "e1", chat(), deadlines()))
            assert n.client.pooled(B.peer_id) == 1
            n.alive.discard(A.peer_id)
            n.client.check.is_admitted = lambda p: True
            with pytest.raises(UpstreamError) as ei:
                await n.client.open(B.peer_id, "e1", chat(), deadlines())
            assert ei.value.kind == "unavailable" and "not an admitted" in ei.value.message
            assert n.server.stats["refused_requests"] == 1 and n.server.stats["forwarded"] == 1
            # ... and A, seeing B declared dead, does not even dial.
            n.client.check.is_admitted = n.admitted
            n.alive.add(A.peer_id)
            n.alive.discard(B.peer_id)
            with pytest.raises(UpstreamError) as ei:
                await n.client.open(B.peer_id, "e1", chat(), deadlines())
            assert ei.value.kind == "unavailable"
    run(go)


# -- blobs --------------------------------------------------------------------------------------


@pytest.fixture
def blob(tmp_path: Path) -> Iterator[tuple[Path, str, bytes]]:
    data = os.urandom(5 * 1024 * 1024 + 123)
    p = tmp_path / "blob"
    p.write_bytes(data)
    yield p, hashlib.sha256(data).hexdigest(), data


def test_blob_ranges_are_verified_and_land_at_their_offsets(
        blob: tuple[Path, str, bytes], tmp_path: Path) -> None:
    path, digest, data = blob

    async def go() -> None:
        async with net(blobs={digest: path}) as n:
            whole = tmp_path / "whole"
            r = await n.client.fetch_range(B.peer_id, digest, 0, len(data), whole)
            assert r.nbytes == len(data) and whole.read_bytes() == data
            dest = tmp_path / "parts"
            cut = 3 * 1024 * 1024 + 7
            for a, b in ((cut, len(data)), (0, cut)):  # out of order, into one file
                want = hashlib.sha256(data[a:b]).hexdigest()
                await n.client.fetch_range(B.peer_id, digest, a, b, dest, expect=want)
            assert dest.read_bytes() == data
            with pytest.raises(BlobError) as ei:  # a slice whose expected digest is wrong
                await n.client.fetch_range(B.peer_id, digest, 0, 10, tmp_path / "x",
                                           expect=digest)
            assert ei.value.reason == "altered"
            with pytest.raises(BlobError) as ei:
                await n.client.fetch_range(B.peer_id, "0" * 64, 0, 10, tmp_path / "x",
                                           expect=digest)
            assert ei.value.reason == "not_found"
            with pytest.raises(BlobError) as ei:
                await n.client.fetch_range(B.peer_id, digest, len(data), len(data) + 5,
                                           tmp_path / "x", expect=digest)
            assert ei.value.reason == "range"
            with pytest.raises(BlobError) as ei:
                await n.client.fetch_range(B.peer_id, digest, 0, 10, tmp_path / "x")
            assert ei.value.reason == "bad_answer"  # partial range without expect=
    run(go)


def test_altered_blob_is_detected(blob: tuple[Path, str, bytes], tmp_path: Path) -> None:
    path, digest, data = blob
    bad = tmp_path / "bad"
    bad.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])

    async def go() -> None:
        async with net(blobs={digest: bad}) as n:
            with pytest.raises(BlobError) as ei:
                await n.client.fetch_range(B.peer_id, digest, 0, len(data), tmp_path / "out")
            assert ei.value.reason == "altered"
    run(go)


@pytest.mark.parametrize(("mode", "reason"), [("truncate", "truncated"), ("flip", "altered"),
                                              ("range", "bad_answer"), ("long", "bad_answer")])
def test_lying_peer_streams_are_detected(mode: str, reason: str, tmp_path: Path) -> None:
    """A peer with a valid identity that sends a short, altered or mislabelled body."""
    data = os.urandom(2 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        body = data[:-1] + bytes([data[-1] ^ 0x80]) if mode == "flip" else data
        first = 1 if mode == "range" else 0
        length = len(data) + (5 if mode == "long" else 0)
        w.write((f"HTTP/1.1 206 Partial Content\r\nContent-Length: {length}\r\n"
                 f"Content-Range: bytes {first}-{len(data) - 1 + first}/{len(data) + first}"
                 "\r\n\r\n").encode())
        w.write(body[: len(body) // 2] if mode == "truncate" else body)
        await w.drain()
        w.transport.abort()

    async def go() -> None:
        srv = await asyncio.start_server(handler, "127.0.0.1", 0,
                                         ssl=tls.server_context(node_cert(B, SECRET)))
        port = srv.sockets[0].getsockname()[1]
        client = DataPlaneClient(node_cert(A, SECRET), lambda p: True,
                                 lambda n: ("127.0.0.1", port))
        try:
            with pytest.raises(BlobError) as ei:
                await client.fetch_range(B.peer_id, digest, 0, len(data), tmp_path / "o")
            assert ei.value.reason == reason, ei.value
        finally:
            await client.close()
            srv.close()
    run(go)


class _Partial:
    """A blob being fetched, shaped like the store's PartialBlob (1 MiB chunks here)."""

    chunk_size = 1024 * 1024

    def __init__(self, part_path: Path, size: int, done: set[int]) -> None:
        self.part_path, self.size, self.done = part_path, size, done
        self.coming: set[int] = set()

    def covers(self, start: int, end: int) -> bool:
        cs = self.chunk_size
        return 0 <= start < end <= self.size and all(
            i in self.done for i in range(start // cs, (end - 1) // cs + 1))

    def have_chunks(self) -> frozenset[int]:
        return frozenset(self.done)

    def coming_chunks(self) -> frozenset[int]:
        return frozenset(self.coming)


def test_a_partial_blob_serves_verified_chunks_only_and_have_names_other_askers(
        blob: tuple[Path, str, bytes], tmp_path: Path) -> None:
    path, digest, data = blob  # 5 MiB + 123: six 1 MiB chunks
    mib = 1024 * 1024
    part = tmp_path / "blob.part"
    with open(part, "wb") as f:  # chunks 0 and 2 written; the rest is not there yet
        f.write(data[:mib])
        f.seek(2 * mib)
        f.write(data[2 * mib:3 * mib])
    partial = _Partial(part, len(data), {0, 2})
    full_data = os.urandom(3 * mib)
    full_path = tmp_path / "full"
    full_path.write_bytes(full_data)
    full_digest = hashlib.sha256(full_data).hexdigest()
    C = Identity.generate()

    async def go() -> None:
        async with net(blobs={digest: partial, full_digest: full_path}) as n:  # type: ignore[dict-item]
            dest = tmp_path / "dest"
            for a, b in ((0, mib), (2 * mib, 3 * mib), (2 * mib + 5, 2 * mib + 99)):
                want = hashlib.sha256(data[a:b]).hexdigest()
                r = await n.client.fetch_range(B.peer_id, digest, a, b, dest, expect=want)
                assert r.nbytes == b - a
            for a, b in ((mib, 2 * mib), (0, 3 * mib), (3 * mib - 1, 3 * mib + 1),
                         (0, len(data))):  # touches chunk 1 or 3: not verified there
                with pytest.raises(BlobError) as ei:
                    await n.client.fetch_range(B.peer_id, digest, a, b, tmp_path / "x",
                                               expect="0" * 64)
                assert ei.value.reason == "incomplete", (a, b)
            assert n.server.stats["incomplete"] == 4 and n.server.stats["partial_reads"] == 3
            have = await n.client.have(B.peer_id, digest)
            assert (have.size, have.chunk_size, have.chunks) == (len(data), mib,
                                                                 frozenset({0, 2}))
            assert have.peers == ()  # only A asked, and A is not told of itself
            assert have.coming == frozenset()
            partial.coming.update({3, 4})  # being read: told, so others leave them to it
            assert (await n.client.have(B.peer_id, digest)).coming == frozenset({3, 4})
            partial.coming.clear()
            # Another member asks: the answer names A, which read that blob.
            n.alive.add(C.peer_id)
            other = DataPlaneClient(node_cert(C, SECRET), lambda p: p in n.alive,
                                    lambda x: ("127.0.0.1", n.server.port))
            try:
                seen = await other.have(B.peer_id, digest)
                assert seen.peers == (A.peer_id,) and seen.chunks == frozenset({0, 2})
                assert (await n.client.have(B.peer_id, digest)).peers == (C.peer_id,)
                n.alive.discard(C.peer_id)  # a member gone is not named any more
                assert (await n.client.have(B.peer_id, digest)).peers == ()
            finally:
                await other.close()
            whole = await n.client.have(B.peer_id, full_digest)
            assert whole.chunks is None and whole.size == len(full_data)
            with pytest.raises(BlobError) as ei:
                await n.client.have(B.peer_id, "0" * 64)
            assert ei.value.reason == "not_found"
            part.write_bytes(data)
            partial.done.update({1, 3, 4, 5})  # verified meanwhile: now served whole
            out = tmp_path / "all"
            await n.client.fetch_range(B.peer_id, digest, 0, len(data), out)
            assert out.read_bytes() == data
    run(go)
