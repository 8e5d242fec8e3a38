"""Forwarding end to end in one process: asyncio client side -> bridge -> trio
ForwardClient -> in-memory streams -> trio ForwardServer -> bridge -> asyncio
LocalUpstream -> stub engine over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from swarmd.api.upstream import Deadlines, LocalUpstream, ProxyRequest, UpstreamError
from swarmd.core import forward_wire as fw
from swarmd.runtime.bridge import Bridge
from swarmd.runtime.forward import (
    ForwardClient,
    ForwardServer,
    ForwardTimeouts,
)
from swarmd.runtime.forward_remote import BridgedForwarder
from swarmd.testing.local_engines import SimEngines
from swarmd.testing.loops import AsyncioThread, in_asyncio, run_with_bridge
from swarmd.testing.sim_engine import SimEngine, sse_bytes
from swarmd.testing.streams import MemOpener, stream_pair

pytestmark = pytest.mark.timeout(30)

CHAT = b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],"x_unknown":[1,2]}'
STREAM = b'{"model":"tiny","stream":true,"messages":[{"role":"user","content":"hi"}]}'


def deadlines(first_byte: float = 5.0, idle: float = 5.0, total: float = 10.0) -> Deadlines:
    return Deadlines(2.0, first_byte, idle, time.monotonic() + total)


def preq(body: bytes = CHAT) -> ProxyRequest:
    return ProxyRequest("/v1/chat/completions", body, "tiny",
                        (("content-type", "application/json"), ("X-Request-Id", "rid-1")),
                        request_id="rid-1")


@dataclass
class Rig:
    bridge: Bridge
    aio: AsyncioThread
    stub: SimEngine
    engines: SimEngines
    server: ForwardServer
    client: ForwardClient
    opener: MemOpener
    fwd: BridgedForwarder

    async def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await in_asyncio(self.aio, fn())


@asynccontextmanager
async def rig(bridge: Bridge, aio: AsyncioThread,
              timeouts: ForwardTimeouts | None = None) -> AsyncIterator[Rig]:
    t = timeouts or ForwardTimeouts()

    async def setup() -> tuple[SimEngine, LocalUpstream]:
        stub = await SimEngine("e0", canned=True).start()
        engines = SimEngines([stub])
        return stub, LocalUpstream(engines, LocalUpstream.new_session())

    stub, local = await in_asyncio(aio, setup())
    server = ForwardServer(bridge, local.open, t)
    async with trio.open_nursery() as nursery:
        opener = MemOpener(nursery, server.handle)
        client = ForwardClient(opener, t)
        yield Rig(bridge, aio, stub, local.engines, server, client, opener,  # type: ignore[arg-type]
                  BridgedForwarder(bridge, client))
        nursery.cancel_scope.cancel()

    async def teardown() -> None:
        await local.session.close()
        await stub.stop()

    await in_asyncio(aio, teardown())


async def read_all(up: Any) -> bytes:
    out = b""
    while chunk := await up.read():
        out += chunk
    await up.aclose()
    return out


def test_forward_non_stream_and_sse_reusing_one_stream() -> None:
    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        async with rig(bridge, aio) as r:
            async def non_stream() -> tuple[int, bytes]:
                up = await r.fwd.open("peer", "e0", preq(), deadlines())
                return up.status, await read_all(up)

            status, body = await r.call(non_stream)
            assert status == 200 and b'"content": "hi"' in body
            seen = r.stub.seen[-1]
            assert seen.body == CHAT and seen.headers["x-request-id"] == "rid-1"

            async def sse() -> tuple[int, dict[str, str], bytes]:
                up = await r.fwd.open("peer", "e0", preq(STREAM), deadlines())
                return up.status, dict(up.headers), await read_all(up)

            for _ in range(3):
                status, headers, body = await r.call(sse)
                assert status == 200 and headers["Content-Type"] == "text/event-stream"
                assert body == sse_bytes()
            assert len(r.opener.opened) == 1  # one stream, kept and reused
            assert r.opener.opened[0][1] == "/swarmd/forward/1.0.0"
            assert r.client.pool.stats["reused"] == 3
            # The server counts a request completed after its last frame went
            # out, so the client may have read it all a moment before.
            with trio.fail_after(5):
                while r.server.stats["completed"] < 4:  # noqa: ASYNC110
                    await trio.sleep(0.005)
            assert r.server.stats["completed"] == 4

    run_with_bridge(main)


@pytest.mark.parametrize(("mode", "kind", "retry_after"),
                         [("status:429", "saturated", 2.0), ("status:503", "unavailable", 2.0),
                          ("drop", "connect", None)])
def test_errors_before_head_come_back_as_upstream_errors(mode: str, kind: str,
                                                         retry_after: float | None) -> None:
    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        async with rig(bridge, aio) as r:
            r.stub.mode = mode

            async def go() -> UpstreamError:
                with pytest.raises(UpstreamError) as ei:
                    await r.fwd.open("peer", "e0", preq(), deadlines())
                return ei.value

            err = await r.call(go)
            assert err.kind in (kind, "upstream") and err.retry_after == retry_after
            if mode != "drop":
                assert err.kind == kind and err.status == int(mode.split(":")[1])

            async def unknown() -> str:
                with pytest.raises(UpstreamError) as ei:
                    await r.fwd.open("peer", "nope", preq(), deadlines())
                return ei.value.kind

            assert await r.call(unknown) == "unavailable"
            assert len(r.opener.opened) == 1  # Error frames leave the stream reusable

    run_with_bridge(main)


def test_first_byte_timeout_and_midstream_failure() -> None:
    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        async with rig(bridge, aio) as r:
            r.stub.mode = "hang"

            async def hang() -> str:
                with pytest.raises(UpstreamError) as ei:
                    await r.fwd.open("peer", "e0", preq(), deadlines(first_byte=0.2))
                return ei.value.kind

            assert await r.call(hang) == "timeout"
            r.stub.mode = "midfail"

            async def midfail() -> tuple[bytes, str]:
                up = await r.fwd.open("peer", "e0", preq(STREAM), deadlines())
                got = b""
                try:
                    while chunk := await up.read():
                        got += chunk
                except UpstreamError as exc:
                    await up.aclose()
                    return got, exc.kind
                return got, "no error"

            got, kind = await r.call(midfail)
            assert kind == "upstream" and got.startswith(b"data: ") and b"[DONE]" not in got

    run_with_bridge(main)


def test_client_disconnect_cancels_remote_engine_request() -> None:
    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        async with rig(bridge, aio) as r:
            r.stub.mode, r.stub.delay = "slow", 0.2

            async def go() -> None:
                up = await r.fwd.open("peer", "e0", preq(STREAM), deadlines())
                assert await up.read()
                await up.aclose()  # what the API does when its client goes away

            await r.call(go)
            with trio.fail_after(5):
                while not (r.stub.cancelled and r.server.stats["cancelled"]):  # noqa: ASYNC110
                    await trio.sleep(0.02)
            assert r.engines.inflight_now["e0"] == 0
            assert r.client.stats["cancelled"] == 1
            assert r.opener.server_ends[0].is_reset
            r.stub.mode = "ok"

            async def again() -> int:
                up = await r.fwd.open("peer", "e0", preq(), deadlines())
                await read_all(up)
                return up.status

            assert await r.call(again) == 200
            assert len(r.opener.opened) == 2  # the cancelled stream was not reused

    run_with_bridge(main)


def test_stale_pooled_stream_is_replaced_silently() -> None:
    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        async with rig(bridge, aio, ForwardTimeouts(server_idle=0.1)) as r:
            async def one() -> int:
                up = await r.fwd.open("peer", "e0", preq(), deadlines())
                await read_all(up)
                return up.status

            assert await r.call(one) == 200
            await trio.sleep(0.3)  # the server closes the idle stream
            assert r.server.stats["idle_closed"] == 1
            assert await r.call(one) == 200
            assert r.client.stats["stale_retries"] == 1
            assert len(r.opener.opened) == 2

    run_with_bridge(main)


class EndlessEngine:
    """local_open that streams 64 KiB chunks forever, counting what it made."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = False
        self.status = 200
        self.headers: tuple[tuple[str, str], ...] = ()

    async def open(self, engine_id: str, req: ProxyRequest, d: Deadlines) -> EndlessEngine:
        return self

    async def read(self) -> bytes:
        await asyncio.sleep(0)
        self.produced += 65536
        return b"x" * 65536

    async def aclose(self) -> None:
        self.closed = True


def test_backpressure_bounds_buffering() -> None:
    """A consumer that stops reading stops the engine: the buffering between
    them is bounded (server channel + yamux-like window + client channel)."""

    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        engine = EndlessEngine()
        server = ForwardServer(bridge, engine.open)
        async with trio.open_nursery() as n:
            opener = MemOpener(n, server.handle)
            fwd = BridgedForwarder(bridge, ForwardClient(opener))
            holder: dict[str, Any] = {}

            async def start() -> int:
                up = await fwd.open("peer", "e0", preq(), deadlines(idle=10))
                holder["up"] = up
                holder["first"] = len(await up.read())
                return holder["first"]  # type: ignore[no-any-return]

            assert await in_asyncio(aio, start()) > 0
            await trio.sleep(0.3)  # the consumer stalls
            stalled_at = engine.produced
            await trio.sleep(0.2)
            assert engine.produced == stalled_at  # the engine is held back
            held = opener.server_ends[0].bytes_written - holder["first"]
            # Between the stalled consumer and the server: the client channel
            # (8 frames of <= 256 KiB), the one frame its reader holds, the
            # window (256 KiB) and the server's frame in flight.
            assert held < 3 * 1024 * 1024, held
            # Between the stream and the engine: the server channel (8 reads
            # of 64 KiB) and one coalesced batch.
            assert stalled_at - opener.server_ends[0].bytes_written < 2 * 1024 * 1024

            async def consume() -> int:
                got = 0
                for _ in range(50):
                    got += len(await holder["up"].read())
                await holder["up"].aclose()
                return got

            assert await in_asyncio(aio, consume()) > 0
            assert engine.produced > stalled_at  # reading again lets it go on
            with trio.fail_after(2):
                while not engine.closed:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            n.cancel_scope.cancel()

    run_with_bridge(main)


def test_server_resets_on_malformed_frames() -> None:
    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        server = ForwardServer(bridge, _never_called, ForwardTimeouts(frame=0.5))
        for junk in (b"\x00\x00\x00\x03abc", b"\x00\x00\x00\x00",
                     fw.encode(fw.Data(b"x")), fw.encode(fw.Request("/v1/x")) + fw.encode(
                         fw.Head(200))):
            a, b = stream_pair()
            await a.write(junk)
            with trio.fail_after(2):
                await server.handle("peer", b)
            assert b.is_reset
        assert server.stats["malformed"] == 4

    run_with_bridge(main)


async def _never_called(*_a: Any) -> Any:  # pragma: no cover
    raise AssertionError("no request should reach the engine")


def test_open_failure_is_connect_error() -> None:
    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        async with trio.open_nursery() as n:
            opener = MemOpener(n, _never_called, fail=True)
            fwd = BridgedForwarder(bridge, ForwardClient(opener))

            async def go() -> str:
                with pytest.raises(UpstreamError) as ei:
                    await fwd.open("peer", "e0", preq(), deadlines())
                return ei.value.kind

            assert await in_asyncio(aio, go()) == "connect"
            n.cancel_scope.cancel()

    run_with_bridge(main)



def test_api_routes_to_remote_node_and_retries_elsewhere() -> None:
    """The HTTP API with a snapshot where the model lives on another node."""
    import random

    import aiohttp

    from swarmd.api.app import ApiDeps, ApiServer
    from swarmd.config import ApiSection, RoutingSection
    from swarmd.core.routing import Router
    from swarmd.testing.swarm_snapshot import node, snapshot

    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        async with rig(bridge, aio) as r:
            remote = node("12D3KooWPeer", r.engines.records())

            async def start() -> tuple[ApiServer, SimEngine]:
                local_stub = await SimEngine("local0", canned=True).start()
                snap = snapshot(SimEngines([local_stub]).records(), [remote])
                deps = ApiDeps(api=ApiSection(listen="127.0.0.1:0"), routing=RoutingSection(),
                               snapshot=lambda: snap, local=SimEngines([local_stub]),
                               remote=r.fwd, router=Router(rng=random.Random(3)))
                server = ApiServer(deps)
                await server.start()
                return server, local_stub

            server, local_stub = await in_asyncio(aio, start())
            base = f"http://127.0.0.1:{server.port}"

            async def requests() -> list[tuple[str, bytes]]:
                out = []
                async with aiohttp.ClientSession() as http:
                    for i in range(8):  # distinct prefixes: affinity spreads them
                        body = STREAM.replace(b'"hi"', f'"hi {i}"'.encode())
                        async with http.post(base + "/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"}) as resp:
                            assert resp.status == 200
                            out.append((resp.headers["X-Swarmd-Node"], await resp.read()))
                return out

            got = await in_asyncio(aio, requests())
            assert all(body == sse_bytes() for _, body in got)
            assert {n for n, _ in got} == {"12D3KooWPeer", "12D3KooWSelf"}  # both used
            assert r.stub.seen and r.stub.seen[-1].body.startswith(STREAM[:30])
            # The remote engine fails now: every request still succeeds (retried locally).
            r.stub.mode = "drop"
            got = await in_asyncio(aio, requests())
            assert all(n == "12D3KooWSelf" and body == sse_bytes() for n, body in got)
            assert server.proxy.stats.retries >= 1

            async def stop() -> None:
                await server.stop()
                await local_stub.stop()

            await in_asyncio(aio, stop())

    run_with_bridge(main)


class HangingEngine:
    """local_open that never answers (a node whose link was cut mid-request)."""

    async def open(self, engine_id: str, req: ProxyRequest, d: Deadlines) -> Any:
        await asyncio.sleep(3600)


def test_a_forward_to_a_node_declared_dead_is_abandoned_before_its_timeout() -> None:
    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        server = ForwardServer(bridge, HangingEngine().open)
        alive = {"peer": True}
        async with trio.open_nursery() as n:
            opener = MemOpener(n, server.handle)
            fwd = BridgedForwarder(bridge, ForwardClient(opener), alive=lambda p: alive[p])

            async def go() -> tuple[str, float]:
                t0 = time.monotonic()
                try:
                    await fwd.open("peer", "e0", preq(), deadlines(first_byte=60, total=60))
                except UpstreamError as exc:
                    return exc.kind, time.monotonic() - t0
                return "answered", 0.0

            async def kill_later() -> None:
                await trio.sleep(0.3)
                alive["peer"] = False

            n.start_soon(kill_later)
            kind, took = await in_asyncio(aio, go())
            assert kind == "unavailable"  # retryable before the first byte
            assert took < 2.0  # DEATH_POLL after the death, not the 60 s first-byte timeout
            n.cancel_scope.cancel()

    run_with_bridge(main)
