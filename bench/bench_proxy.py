"""Overhead of the swarmd API in front of a zero-delay engine.

Measures sequential request latency (keep-alive, one process, like the
FIELD-NOTES figures) for:

  direct  client -> engine stub
  local   client -> swarmd API -> engine stub (same node; no bridge)
  remote  client -> swarmd API -> bridge -> trio ForwardClient -> in-memory
          stream -> ForwardServer -> bridge -> engine stub
          (the forwarding path minus the libp2p transport: add the
          0.74 ms libp2p round trip from FIELD-NOTES for a real one)

Run: PYTHONPATH=.:plugins .venv/bin/python bench/bench_proxy.py [-n 1000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import trio

from swarmd.api.app import ApiDeps, ApiServer
from swarmd.api.upstream import LocalUpstream
from swarmd.config import ApiSection, RoutingSection
from swarmd.core.routing import Router
from swarmd.core.snapshot import Snapshot
from swarmd.runtime.bridge import Bridge
from swarmd.runtime.forward import ForwardClient, ForwardServer
from swarmd.runtime.forward_remote import BridgedForwarder
from swarmd.testing.local_engines import SimEngines
from swarmd.testing.loops import AsyncioThread, in_asyncio
from swarmd.testing.sim_engine import SimEngine
from swarmd.testing.streams import MemOpener
from swarmd.testing.swarm_snapshot import node, snapshot

BODIES = {
    "chat": b'{"model":"tiny","messages":[{"role":"user","content":"hi"}]}',
    "sse": b'{"model":"tiny","stream":true,"messages":[{"role":"user","content":"hi"}]}',
}


async def timed(http: aiohttp.ClientSession, url: str, body: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            assert r.status == 200, r.status
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _const(snap: Snapshot) -> Callable[[], Snapshot]:
    return lambda: snap


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    return (f"p50 {statistics.median(xs):.3f} ms  p90 {xs[int(len(xs) * 0.9)]:.3f} ms  "
            f"p99 {xs[int(len(xs) * 0.99)]:.3f} ms")


async def trio_main(n: int) -> None:
    aio = AsyncioThread().start()
    bridge = Bridge(trio.lowlevel.current_trio_token(), aio.loop)
    try:
        async def setup() -> tuple[SimEngine, LocalUpstream]:
            stub = await SimEngine("e0", canned=True).start()
            return stub, LocalUpstream(SimEngines([stub]), LocalUpstream.new_session())

        stub, local = await in_asyncio(aio, setup())
        server = ForwardServer(bridge, local.open)
        async with trio.open_nursery() as nursery:
            opener = MemOpener(nursery, server.handle)
            fwd = BridgedForwarder(bridge, ForwardClient(opener))

            async def run() -> dict[tuple[str, str], Any]:
                engines = SimEngines([stub])
                results: dict[tuple[str, str], Any] = {}
                for name, snap in (
                    ("local", snapshot(engines.records())),
                    ("remote", snapshot([], [node("12D3KooWPeer", engines.records())])),
                ):
                    deps = ApiDeps(api=ApiSection(listen="127.0.0.1:0"),
                                   routing=RoutingSection(), snapshot=_const(snap),
                                   local=engines, remote=fwd, router=Router(rng=random.Random(1)))
                    api = ApiServer(deps)
                    await api.start()
                    async with aiohttp.ClientSession() as http:
                        for kind, body in BODIES.items():
                            url = stub.url + "/v1/chat/completions"
                            await timed(http, url, body, 50)
                            results[("direct", kind)] = await timed(http, url, body, n)
                            url = f"http://127.0.0.1:{api.port}/v1/chat/completions"
                            await timed(http, url, body, 50)
                            results[(name, kind)] = await timed(http, url, body, n)
                    await api.stop()
                await local.session.close()
                await stub.stop()
                return results

            results = await in_asyncio(aio, run())
            nursery.cancel_scope.cancel()
        for kind in BODIES:
            d = statistics.median(results[("direct", kind)])
            for name in ("direct", "local", "remote"):
                xs = results[(name, kind)]
                extra = "" if name == "direct" else \
                    f"  overhead p50 +{statistics.median(xs) - d:.3f} ms"
                print(f"{kind:5} {name:7} {summary(xs)}{extra}")
    finally:
        aio.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1000)
    trio.run(trio_main, ap.parse_args().n)


if __name__ == "__main__":
    main()
