"""Start the asyncio-side services and return their cleanups, in order.

Wiring only: the engine manager feeds the node's gossiped record; the API
reads the snapshot, calls local engines directly and forwards to peers over
``/swarmd/forward/1.0.0`` through the bridge; the control server answers
``swarmctl`` from the snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from swarmd.api.app import ApiDeps, ApiServer
from swarmd.control.server import start_control_server
from swarmd.engines.manager import EngineManager
from swarmd.join_token import encode_join_token
from swarmd.metrics import SwarmCollector, new_registry
from swarmd.runtime.bridge import Bridge
from swarmd.runtime.forward import (
    BridgedForwarder,
    ForwardClient,
    ForwardServer,
    ForwardTimeouts,
)

if TYPE_CHECKING:
    from swarmd.config import Config
    from swarmd.runtime.node import Node

log = logging.getLogger("swarmd.services")


class _Opener:
    """P2PNode.open_stream, with peer addresses taken from the snapshot."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def open_stream(self, peer_id: str, protocol: str) -> Any:
        addrs: tuple[str, ...] = ()
        for n in self.node.box.get().nodes:
            if n.node_id == peer_id:
                addrs = n.addrs
                break
        return await self.node.p2p.open_stream(peer_id, protocol, addrs)


class ControlProviderImpl:
    """What ``swarmctl`` sees: built from the snapshot, no thread crossing."""

    def __init__(self, node: Node, engines: EngineManager) -> None:
        self.node = node
        self.engines = engines

    def status(self) -> dict[str, Any]:
        return self.node.box.get().status_doc()

    async def leave(self) -> None:
        self.node.request_stop()

    def join_line(self) -> str:
        snap = self.node.box.get()
        seeds = [a for a in snap.addrs if "/127." not in a and "/::1/" not in a] or list(snap.addrs)
        return "swarmd --join " + encode_join_token(self.node.secret, seeds)

    def models(self) -> dict[str, Any]:
        snap = self.node.box.get()
        table: dict[str, dict[str, Any]] = {}
        for n in snap.nodes:
            if n.state != "alive":
                continue
            for eng in n.record.get("engines") or []:
                for model in eng.get("models") or []:
                    row = table.setdefault(model, {"id": model, "nodes": [], "engines": []})
                    if n.name not in row["nodes"]:
                        row["nodes"].append(n.name)
                    row["engines"].append(
                        {
                            "node_id": n.node_id,
                            "node": n.name,
                            "engine_id": eng.get("id"),
                            "kind": eng.get("kind"),
                            "healthy": bool(eng.get("healthy")),
                            "load": eng.get("load") or {},
                        }
                    )
        return {"models": [table[k] for k in sorted(table)]}

    async def drain(self, on: bool) -> None:
        self.node.update_record({"draining": bool(on)})


async def start_services(
    cfg: Config, node: Node, loop: asyncio.AbstractEventLoop
) -> list[Callable[[], Any]]:
    cleanups: list[Callable[[], Any]] = []
    try:
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=cfg.api.connect_timeout),
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
        )
        cleanups.append(session.close)

        engines = EngineManager(
            cfg.engines,
            detect=cfg.local_engines.detect,
            poll_interval=cfg.local_engines.poll_interval,
            session=session,
            on_change=lambda rec: node.update_record({"engines": rec}),
        )
        await engines.start()
        cleanups.append(engines.stop)
        node.update_record({"engines": engines.record()})

        assert node.trio_token is not None
        bridge = Bridge(node.trio_token, loop)
        timeouts = ForwardTimeouts(
            open=cfg.api.connect_timeout,
            first_byte=cfg.api.first_byte_timeout,
            idle=cfg.api.idle_timeout,
            total=cfg.api.request_timeout,
        )
        client = ForwardClient(_Opener(node), timeouts)
        collector = SwarmCollector(node.box.get, engines=engines.engines)
        registry, request_metrics = new_registry(collector)
        api = ApiServer(
            ApiDeps(
                api=cfg.api,
                routing=cfg.routing,
                snapshot=node.box.get,
                local=engines,
                remote=BridgedForwarder(bridge, client),
                session=session,
                registry=registry,
                metrics=request_metrics,
            )
        )
        await api.start()
        cleanups.append(api.stop)
        server = ForwardServer(bridge, api.proxy.open_local, timeouts)
        node.forward_server = server
        proxy = api.proxy
        collector.counters.update({
            "api_errors_": lambda: dict(proxy.stats.errors),
            "api_": lambda: {"retries": proxy.stats.retries},
            "forward_client_": lambda: dict(client.stats),
            "forward_streams_": lambda: dict(client.pool.stats),
            "forward_server_": lambda: dict(server.stats),
        })

        control = await start_control_server(
            cfg.control.socket, ControlProviderImpl(node, engines), registry
        )
        cleanups.append(control.stop)
    except BaseException:
        for c in reversed(cleanups):
            try:
                r = c()
                if asyncio.iscoroutine(r):
                    await r
            except Exception:
                log.exception("cleanup after failed start")
        raise
    return cleanups
