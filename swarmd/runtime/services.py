"""Start the asyncio-side services and return their cleanups, in order.

Wiring only: the engine manager feeds the node's gossiped record; the API
reads the snapshot, calls local engines directly and forwards to peers over
``/swarmd/forward/1.0.0`` through the bridge; the control server answers
``swarmctl`` from the snapshot (:mod:`swarmd.core.views`).

The services never see the node: the composition root
(:mod:`swarmd.runtime.assembly`) hands them :class:`NodePorts`, the few
things they may use -- the snapshot reader (no crossing), two trio-side
calls that always go through the bridge, the trio-side stream opener used by
the forward client, and the swarm secret for join lines.  What the trio side
needs back (the forward server) is returned in :class:`Started`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from swarmd.api.accounting import Accounting
from swarmd.api.app import ApiDeps, ApiServer
from swarmd.api.errors import ApiError
from swarmd.api.key_service import BudgetService, KeyService
from swarmd.api.ollama_api import OllamaServer
from swarmd.api.tls import server_context
from swarmd.config import Config, parse_hostport
from swarmd.control.server import start_control_server
from swarmd.core.replica import Entry
from swarmd.core.snapshot import Snapshot
from swarmd.core.views import ModelsDoc, StatusDoc, models_view, status_view
from swarmd.engines.deployer import Deployer
from swarmd.engines.manager import EngineManager
from swarmd.engines.on_demand import LoadFailed, OnDemand
from swarmd.identity import Identity
from swarmd.join_token import encode_join_token
from swarmd.metrics import SwarmCollector, new_registry
from swarmd.models.service import ModelService
from swarmd.runtime.bridge import Bridge
from swarmd.runtime.deploy_setup import start_deployer
from swarmd.runtime.forward import (
    ForwardClient,
    ForwardServer,
    ForwardTimeouts,
    StreamOpener,
)
from swarmd.runtime.forward_remote import BridgedForwarder
from swarmd.runtime.keys_usage import KeysAndUsage
from swarmd.runtime.peer_models import PeerModels
from swarmd.runtime.plane_side import Plane, build_plane

log = logging.getLogger("swarmd.services")


@dataclass(frozen=True)
class NodePorts:
    """What the asyncio side may use of the trio side (built by the composition root)."""

    #: The latest snapshot; safe from any thread, no crossing.
    snapshot: Callable[[], Snapshot]
    #: Trio-thread call: merge keys into this node's gossiped record.
    update_record: Callable[[Mapping[str, Any]], None]
    #: Trio-thread call: leave the swarm and stop.
    request_stop: Callable[[], None]
    #: Trio-thread coroutine: write an entry of a replicated table (keys).
    write_table: Callable[[str, str, Any], Awaitable[Entry]]
    #: Trio-thread call: write several entries as one delta (usage counters).
    write_table_many: Callable[[str, list[tuple[str, Any]]], None]
    #: Trio-side stream opener (the forward client runs in trio).
    opener: StreamOpener
    #: The swarm secret, for join lines and the data plane's certificates.
    secret: bytes
    #: This node's libp2p identity (its data-plane certificate carries it);
    #: None: no data plane (tests that build ports by hand).
    identity: Identity | None = None


@dataclass
class Started:
    """What :func:`start_services` hands back: cleanups (in start order) and the
    trio-side forward server the composition root serves the protocol with."""

    cleanups: list[Callable[[], Any]] = field(default_factory=list)
    forward_server: ForwardServer | None = None


class ControlProviderImpl:
    """What ``swarmctl`` sees: built from the snapshot, no thread crossing."""

    def __init__(self, ports: NodePorts, bridge: Bridge) -> None:
        self.ports = ports
        self.bridge = bridge
        self.model_service: ModelService | None = None
        self.key_service: KeyService | None = None
        self.budget_service: BudgetService | None = None
        self.accounting: Accounting | None = None
        self.api_tls_fingerprint: str | None = None
        self.engine_manager: EngineManager | None = None
        self.deployer: Deployer | None = None

    def status(self) -> StatusDoc:
        doc = status_view(self.ports.snapshot())
        if self.api_tls_fingerprint:
            doc["api_tls_fingerprint"] = self.api_tls_fingerprint
        return doc

    async def leave(self) -> None:
        self.bridge.call_trio_soon(self.ports.request_stop)

    def join_line(self) -> str:
        snap = self.ports.snapshot()
        seeds = [a for a in snap.addrs if "/127." not in a and "/::1/" not in a] or list(snap.addrs)
        return "swarmd --join " + encode_join_token(self.ports.secret, seeds)

    def models(self) -> ModelsDoc:
        return models_view(self.ports.snapshot())

    async def drain(self, on: bool) -> None:
        self.bridge.call_trio_soon(self.ports.update_record, {"draining": bool(on)})


def _not_dead(snap: Snapshot, node_id: str) -> bool:
    """False once membership declared ``node_id`` dead or left (suspect is not dead)."""
    return any(n.node_id == node_id and n.state not in ("dead", "left") for n in snap.nodes)


async def start_services(cfg: Config, ports: NodePorts, bridge: Bridge) -> Started:
    started = Started()
    cleanups = started.cleanups
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
            on_change=lambda rec: bridge.call_trio_soon(ports.update_record, {"engines": rec}),
        )
        await engines.start()
        cleanups.append(engines.stop)
        bridge.call_trio_soon(ports.update_record, {"engines": engines.record()})

        models = ModelService.from_config(
            cfg,
            in_use=lambda: {m for e in engines.engines() for m in e.models},
            on_change=lambda inv: bridge.call_trio_soon(ports.update_record, {"models": inv}),
        )
        bridge.call_trio_soon(ports.update_record, {"models": models.inventory()})

        timeouts = ForwardTimeouts(
            open=cfg.api.connect_timeout,
            first_byte=cfg.api.first_byte_timeout,
            idle=cfg.api.idle_timeout,
            total=cfg.api.request_timeout,
        )
        client = ForwardClient(ports.opener, timeouts)
        collector = SwarmCollector(ports.snapshot, engines=engines.engines)
        registry, request_metrics = new_registry(collector)
        ku = await KeysAndUsage.build(cfg, bridge, snapshot=ports.snapshot,
                                      write_table=ports.write_table,
                                      write_table_many=ports.write_table_many,
                                      update_record=ports.update_record,
                                      metrics=request_metrics, session=session)
        cleanups.append(ku.stop)
        libp2p_forwarder = BridgedForwarder(bridge, client, alive=lambda node_id: _not_dead(
            ports.snapshot(), node_id))
        plane: Plane | None = None
        if cfg.dataplane.enabled and ports.identity is not None:
            plane = await build_plane(identity=ports.identity, secret=ports.secret,
                                      snapshot=ports.snapshot, fallback=libp2p_forwarder)
        api = ApiServer(
            ApiDeps(
                auth=ku.auth,
                keys=ku.keys,
                accounting=ku.accounting,
                api=cfg.api,
                routing=cfg.routing,
                snapshot=ports.snapshot,
                local=engines,
                remote=plane.forwarder if plane is not None else libp2p_forwarder,
                session=session,
                registry=registry,
                metrics=request_metrics,
                models=models,
            )
        )
        ssl_ctx, fingerprint = await asyncio.to_thread(
            server_context, cfg.api, cfg.node.data_dir, cfg.node.name)
        await api.start(ssl_context=ssl_ctx)
        cleanups.append(api.stop)
        if cfg.api.ollama_listen:  # Ollama's API on its own port too (same proxy)
            ollama = OllamaServer(api.proxy, api.deps)
            await ollama.start(cfg.api.ollama_listen)
            cleanups.append(ollama.stop)
        if plane is not None:
            dp_addrs = await plane.serve(parse_hostport(cfg.dataplane.listen),
                                         api.proxy.open_local, models.store.served_blob,
                                         backlog=cfg.dataplane.backlog)
            cleanups.append(plane.stop)
            bridge.call_trio_soon(ports.update_record, {"dp": dp_addrs})
            # Pulls ask the peers that hold a model before its source.
            peer_models = PeerModels(plane.client, ports.snapshot, asyncio.get_running_loop())
            models.puller.peer_plan = peer_models.plan
            models.peers = peer_models  # swarmctl rm --node / --everywhere
            plane.server.remove_model = lambda name: asyncio.to_thread(models.try_remove, name)
        server = ForwardServer(bridge, api.proxy.open_local, timeouts)
        started.forward_server = server
        proxy = api.proxy
        ku.attach(proxy)
        # Queue depths ride in the record as load (coalesced by the proxy).
        proxy.on_queue_depths = lambda depths: bridge.call_trio_soon(
            ports.update_record, {"queued": depths})
        collector.counters.update({
            "api_errors_": lambda: dict(proxy.stats.errors),
            "api_": lambda: {"retries": proxy.stats.retries},
            "forward_client_": lambda: dict(client.stats),
            "forward_streams_": lambda: dict(client.pool.stats),
            "forward_server_": lambda: dict(server.stats),
        })
        if plane is not None:
            dp = plane
            collector.counters.update({
                "dataplane_forward_": lambda: dict(dp.forwarder.stats),
                "dataplane_client_": lambda: dict(dp.client.stats),
                "dataplane_server_": lambda: dict(dp.server.stats),
                "dataplane_peer_": lambda: dict(dp.server.check.stats),
            })

        provider = ControlProviderImpl(ports, bridge)
        provider.api_tls_fingerprint = fingerprint
        provider.model_service = models  # the control API's /v1/store routes
        provider.key_service = ku.keys  # /v1/keys
        provider.budget_service = BudgetService(ports.snapshot, ku.keys._write)  # /v1/budgets
        provider.engine_manager = engines  # /v1/engines
        deployer = await start_deployer(cfg, bridge, snapshot=ports.snapshot,
                                        write_table=ports.write_table,
                                        update_record=ports.update_record, models=models,
                                        engines=engines, session=session)
        cleanups.append(deployer.stop)
        provider.deployer = deployer  # /v1/deployments, /v1/ps
        if cfg.models.on_demand:
            od = OnDemand(deployer, ports.snapshot, load_timeout=cfg.models.load_timeout,
                          keep_alive=cfg.models.keep_alive)
            proxy.on_demand = on_demand_hook(od)
            collector.counters["on_demand_"] = lambda: dict(od.stats)
        provider.accounting = ku.accounting  # /v1/usage
        control = await start_control_server(cfg.control.socket, provider, registry)
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
    return started


def on_demand_hook(od: OnDemand) -> Callable[[str], Awaitable[bool]]:
    """The proxy's on-demand hook: a load failure becomes an API error."""

    async def hook(model: str) -> bool:
        try:
            return await od.ensure(model)
        except LoadFailed as exc:
            raise ApiError(exc.status, str(exc), code=exc.code, retry_after=5.0) from None

    return hook
