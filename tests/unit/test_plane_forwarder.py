"""The daemon's forwarder over the data plane (swarmd/runtime/plane_side.py).

Real DataPlaneServers in front of SIMULATED engines, a real DataPlaneClient,
a snapshot the test changes: a node declared dead has its forwards abandoned
as ``unavailable`` (before and after the answer head), a node without a
``dp`` address or whose plane cannot be reached goes over the fallback, and
admission follows membership.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from swarmd.api.upstream import Deadlines, LocalUpstream, ProxyRequest, UpstreamError
from swarmd.core.snapshot import NodeInfo, Snapshot
from swarmd.dataplane import node_cert
from swarmd.dataplane.server import DataPlaneServer
from swarmd.engines.simulated import start_simulated_engine
from swarmd.identity import Identity
from swarmd.runtime.plane_side import Admission, Plane, advertised, build_plane
from swarmd.testing.local_engines import UrlEngines
from swarmd.testing.swarm_snapshot import node, snapshot

SECRET = b"s" * 32
MODEL = "m"
A, B = Identity.generate(), Identity.generate()
REC = [{"id": "e1", "kind": "simulated", "healthy": True, "models": [MODEL]}]


def _with_dp(n: NodeInfo, dp: list[str]) -> NodeInfo:
    return dataclasses.replace(n, record={**n.record, "dp": dp})


class Fallback:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def open(self, node_id: str, engine_id: str, req: ProxyRequest,
                   deadlines: Deadlines) -> Any:
        self.calls.append(node_id)
        raise UpstreamError("unavailable", "fallback reached")


def _req(stream: bool = True) -> ProxyRequest:
    body = (b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":'
            + (b"true" if stream else b"false") + b"}")
    return ProxyRequest(route="/v1/chat/completions", body=body, model=MODEL,
                        headers=(("content-type", "application/json"),), request_id="r1")


def _dl() -> Deadlines:
    return Deadlines(2.0, 30.0, 30.0, time.monotonic() + 60.0)


async def _serve_b(**engine: Any) -> tuple[DataPlaneServer, Any, Any, int]:
    eng = await start_simulated_engine(model=MODEL, **engine)
    sess = LocalUpstream.new_session()
    local = LocalUpstream(UrlEngines({"e1": eng.url}), sess)

    async def open_local(eid: str, req: ProxyRequest, dl: Deadlines) -> Any:
        return await local.open(eid, req, dl)

    srv = DataPlaneServer(cert=node_cert(B, SECRET), is_admitted=lambda p: p == A.peer_id,
                          open_local=open_local)
    port = await srv.start()
    return srv, eng, sess, port


class World:
    """A's view of the swarm: B alive or dead, with a data-plane address or not."""

    def __init__(self, port: int | None) -> None:
        self.state = "alive"
        self.port = port

    def snap(self) -> Snapshot:
        b = node(B.peer_id, REC, state=self.state)
        if self.port is not None:
            b = _with_dp(b, [f"127.0.0.1:{self.port}"])
        return snapshot(others=[b], self_id=A.peer_id)


async def _plane(world: World, fb: Fallback) -> Plane:
    return await build_plane(identity=A, secret=SECRET, snapshot=world.snap, fallback=fb)


@contextlib.asynccontextmanager
async def _swarm(**engine: Any) -> AsyncIterator[tuple[World, Fallback, Plane]]:
    """B serving a simulated engine behind its plane; A's plane and world; torn down after."""
    srv, eng, sess, port = await _serve_b(**engine)
    world, fb = World(port), Fallback()
    plane = await _plane(world, fb)
    try:
        yield world, fb, plane
    finally:
        await plane.stop()
        await srv.stop()
        await sess.close()
        await eng.stop()


def test_over_the_plane_and_death_mid_stream_is_unavailable() -> None:
    async def go() -> None:
        async with _swarm(tps=20.0, max_tokens=200) as (world, fb, plane):
            resp = await plane.forwarder.open(B.peer_id, "e1", _req(), _dl())
            assert resp.status == 200
            first = await resp.read()
            assert first.startswith(b"data: ")
            world.state = "dead"  # membership declares B dead mid-answer
            t0 = time.monotonic()
            with pytest.raises(UpstreamError) as ei:
                while await resp.read():
                    pass
            assert ei.value.kind == "unavailable"
            assert time.monotonic() - t0 < 2.0
            await resp.aclose()
            assert plane.forwarder.stats["plane"] == 1
            assert plane.forwarder.stats["abandoned"] == 1
            assert fb.calls == []

    asyncio.run(go())


def test_death_before_the_answer_head_is_unavailable() -> None:
    async def go() -> None:
        async def kill_soon(world: World) -> None:
            await asyncio.sleep(0.3)
            world.state = "dead"

        async with _swarm(ttft_ms=3000.0) as (world, _fb, plane):
            killer = asyncio.ensure_future(kill_soon(world))
            t0 = time.monotonic()
            with pytest.raises(UpstreamError) as ei:
                await plane.forwarder.open(B.peer_id, "e1", _req(stream=False), _dl())
            assert ei.value.kind == "unavailable", ei.value.message
            assert time.monotonic() - t0 < 2.0
            await killer
            # The caller's task is not left cancelled: it goes on normally.
            await asyncio.sleep(0.01)

    asyncio.run(go())


def test_no_address_or_unreachable_plane_uses_the_fallback() -> None:
    async def go() -> None:
        world, fb = World(None), Fallback()
        plane = await _plane(world, fb)
        try:
            with pytest.raises(UpstreamError, match="fallback reached"):
                await plane.forwarder.open(B.peer_id, "e1", _req(), _dl())
            assert fb.calls == [B.peer_id]
            # An address where nothing listens: unreachable, then the fallback,
            # and the plane is skipped for a while (no second connect attempt).
            srv, eng, sess, port = await _serve_b()
            await srv.stop()
            world.port = port
            with pytest.raises(UpstreamError, match="fallback reached"):
                await plane.forwarder.open(B.peer_id, "e1", _req(), _dl())
            with pytest.raises(UpstreamError, match="fallback reached"):
                await plane.forwarder.open(B.peer_id, "e1", _req(), _dl())
            assert plane.forwarder.stats["unreachable"] == 1
            assert plane.forwarder.stats["fallback"] == 3
            await sess.close()
            await eng.stop()
        finally:
            await plane.stop()

    asyncio.run(go())


def test_admission_follows_membership() -> None:
    c = Identity.generate().peer_id
    d = Identity.generate().peer_id
    snap = snapshot(others=[node(B.peer_id, []), node(c, [], state="suspect"),
                            node(d, [], state="dead")], self_id=A.peer_id)
    adm = Admission(lambda: snap)
    assert adm(B.peer_id) and adm(c)  # suspect is not dead: still admitted
    assert not adm(d)
    assert not adm(A.peer_id)  # ourselves: never a peer
    assert not adm(Identity.generate().peer_id)


def test_advertised_addresses() -> None:
    assert advertised("10.0.0.5", 4101) == ["10.0.0.5:4101"]
    assert advertised("fd00::5", 4101) == ["[fd00::5]:4101"]
    ips = advertised("0.0.0.0", 4101)
    assert ips and all(a.endswith(":4101") for a in ips)
