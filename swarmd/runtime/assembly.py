"""The composition root: builds the daemon's parts and hands each what it needs.

Theory of operation
-------------------
:func:`run_node` (called by :mod:`swarmd.daemon`) is the only place that
knows every part.  In the trio thread it builds, in order:

1. the libp2p host (:class:`~swarmd.runtime.p2p.P2PNode`), whose frames and
   lost connections go to the node;
2. the node (:class:`~swarmd.runtime.node.Node`, the trio shell around the
   sans-IO :class:`~swarmd.core.node.NodeMachine`), given the host as its
   :class:`~swarmd.runtime.node.Transport` and the
   :class:`~swarmd.core.snapshot.SnapshotBox` it publishes into;
3. the HTTP side (:class:`~swarmd.runtime.http_side.HttpSide`, the asyncio
   thread), which creates the :class:`~swarmd.runtime.bridge.Bridge` and
   starts the services (:func:`~swarmd.runtime.services.start_services`)
   with :class:`~swarmd.runtime.services.NodePorts`: the box's reader, the
   node's two trio-side calls (always reached through the bridge), a
   trio-side stream opener and the secret;
4. the forward protocol handler, served with the forward server the services
   hand back (until then, and after the HTTP side is gone, such streams are
   reset).

Nothing reaches back: the node knows no HTTP side, the services know no
node, and no attribute is written across threads.  Import graph:
assembly -> node, p2p, http_side, services -> core/api/engines/control.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import trio

from swarmd.config import Config
from swarmd.core.snapshot import SnapshotBox
from swarmd.identity import Identity, load_or_create_identity
from swarmd.log import kv
from swarmd.runtime.bridge import Bridge
from swarmd.runtime.forward import PROTOCOL_ID, ForwardServer
from swarmd.runtime.http_side import HttpSide
from swarmd.runtime.node import Node, empty_snapshot
from swarmd.runtime.p2p import P2PNode
from swarmd.runtime.services import NodePorts, Started, start_services
from swarmd.swarm_secret import load_secret

log = logging.getLogger("swarmd.node")


class SnapshotOpener:
    """``P2PNode.open_stream`` with the peer's addresses taken from the snapshot (trio)."""

    def __init__(self, p2p: P2PNode, box: SnapshotBox) -> None:
        self.p2p = p2p
        self.box = box

    async def open_stream(self, peer_id: str, protocol: str) -> Any:
        addrs: Sequence[str] = ()
        for n in self.box.get().nodes:
            if n.node_id == peer_id:
                addrs = n.addrs
                break
        return await self.p2p.open_stream(peer_id, protocol, addrs)


class ForwardGate:
    """The forward protocol's handler: resets streams until a server is attached (trio)."""

    def __init__(self) -> None:
        self.server: ForwardServer | None = None

    async def handle(self, peer_id: str, stream: Any) -> None:
        server = self.server
        if server is None:  # API not up yet (start-up) or shutting down
            await stream.reset()
            return
        await server.handle(peer_id, stream)


async def serve(cfg: Config, identity: Identity, secret: bytes) -> None:
    """Run the daemon until it is asked to stop (trio)."""
    box = SnapshotBox(empty_snapshot(cfg, identity.peer_id))
    node: Node | None = None

    def on_frame(sender: str, frame: bytes) -> None:
        if node is not None:
            node.on_frame(sender, frame)

    def on_lost(peer_id: str) -> None:
        if node is not None:
            node.on_peer_lost(peer_id)

    p2p = P2PNode(identity=identity, listen=list(cfg.p2p.listen), secret=secret,
                  on_frame=on_frame, on_lost=on_lost)
    node = Node(cfg, identity.peer_id, secret, p2p, box)
    gate = ForwardGate()
    p2p.set_handler(PROTOCOL_ID, gate.handle)
    ports = NodePorts(snapshot=box.get, update_record=node.update_record,
                      request_stop=node.request_stop, write_table=node.write_table,
                      write_table_many=node.write_table_many,
                      opener=SnapshotOpener(p2p, box), secret=secret, identity=identity)

    async def start_http(bridge: Bridge) -> Started:
        return await start_services(cfg, ports, bridge)

    async with trio.open_nursery() as nursery:
        await nursery.start(p2p.run)
        await node.start()
        http = HttpSide(trio.lowlevel.current_trio_token(), start_http, label=cfg.api.listen,
                        event_loop=cfg.api.event_loop)
        # Blocks until every listener is bound; run off the trio thread so
        # libp2p keeps answering meanwhile.
        started = await trio.to_thread.run_sync(http.start)
        assert isinstance(started, Started)
        gate.server = started.forward_server
        log.info("swarmd started",
                 extra=kv(name=cfg.node.name, id=identity.peer_id, addrs=",".join(p2p.addrs()),
                          api=cfg.api.listen, control=str(cfg.control.socket)))
        await node.run()  # returns after the graceful leave
        await trio.to_thread.run_sync(http.stop)
        nursery.cancel_scope.cancel()


def run_node(cfg: Config) -> int:
    identity = load_or_create_identity(cfg.node.data_dir)
    secret, source = load_secret(cfg)
    log.info("swarm secret loaded", extra=kv(source=source))
    trio.run(serve, cfg, identity, secret)
    return 0
