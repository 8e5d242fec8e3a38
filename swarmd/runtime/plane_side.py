"""The data plane in the daemon: its server, its client, and the proxy's forwarder.

Theory of operation
-------------------
:func:`start_plane` (called by :func:`swarmd.runtime.services.start_services`
on the asyncio side) builds this node's data-plane certificate from its
libp2p identity and the swarm secret, serves :class:`DataPlaneServer` on
``[dataplane] listen`` -- forwarded requests run through the proxy's
``open_local``, blob reads come from the model store (blobs and manifests
by digest) -- and puts the bound addresses in the node record as ``dp``.

Admission (:class:`Admission`) reads the published snapshot, never the trio
thread: a peer id is admitted while membership lists it as a member that is
neither dead nor left.  The set is rebuilt once per published snapshot.

:class:`PlaneForwarder` is the proxy's ``Forwarder``.  A request to a node
whose record has a ``dp`` address goes over the data plane; one to a node
without (a swarmd that predates it, or ``enabled = false`` there), or whose
plane this node could not reach at all (:class:`PlaneUnreachable`: no byte
was sent) goes over the libp2p forward protocol instead, and that node's
plane is skipped for :data:`COOLDOWN` seconds (then tried again, on its next
address).  Forwards in flight are checked against membership every
:data:`DEATH_POLL` seconds: one whose node was declared dead is abandoned as
``unavailable`` -- before the answer head the proxy retries elsewhere --
since a cut link sends no reset.  Pools to dead nodes are closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from swarmd.api.proxy import Forwarder
from swarmd.api.upstream import Deadlines, ProxyRequest, UpstreamError, UpstreamResponse
from swarmd.core.snapshot import Snapshot
from swarmd.dataplane import node_cert
from swarmd.dataplane.client import DataPlaneClient, PlaneUnreachable
from swarmd.dataplane.server import BlobPath, DataPlaneServer, OpenLocal, ServerLimits
from swarmd.identity import Identity

log = logging.getLogger("swarmd.dataplane")

#: Seconds a node's data plane is skipped after it could not be reached.
COOLDOWN = 30.0
#: Seconds between checks of in-flight forwards against membership.
DEATH_POLL = 0.5


class Admission:
    """``is_admitted(peer_id)`` from the published snapshot (any thread)."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot
        self._seen: Snapshot | None = None
        self._ids: frozenset[str] = frozenset()

    def members(self) -> frozenset[str]:
        snap = self.snapshot()
        if snap is not self._seen:
            self._ids = frozenset(n.node_id for n in snap.nodes
                                  if not n.is_self and n.state not in ("dead", "left"))
            self._seen = snap
        return self._ids

    def __call__(self, peer_id: str) -> bool:
        return peer_id in self.members()


def advertised(host: str, port: int) -> list[str]:
    """The ``dp`` record entries for a bound ``host:port`` (unspecified host:
    this machine's interface addresses, routable first)."""
    from swarmd.runtime.p2p_addrs import interface_ips

    if host in ("0.0.0.0", ""):
        hosts = interface_ips(4)
    elif host == "::":
        hosts = interface_ips(6) + interface_ips(4)
    else:
        hosts = [host]
    return [f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in hosts][:8]


@dataclass(eq=False)
class _Flight:
    node_id: str
    task: asyncio.Task[Any] | None = None  # the task waiting for the answer head
    content: Any = None  # the answer's aiohttp StreamReader, once the head is in
    killed: bool = False


@dataclass
class PlaneForwarder:
    """The proxy's ``Forwarder``: the data plane, else the libp2p fallback."""

    client: DataPlaneClient
    fallback: Forwarder
    snapshot: Callable[[], Snapshot]
    stats: dict[str, int] = field(default_factory=lambda: {
        "plane": 0, "fallback": 0, "unreachable": 0, "abandoned": 0})

    def __post_init__(self) -> None:
        self._cool: dict[str, tuple[float, int]] = {}  # node -> (until, next address index)
        self._flights: set[_Flight] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._seen: Snapshot | None = None
        self._by_id: dict[str, Any] = {}
        self.client.address_of = self.address_of

    def _node(self, node_id: str) -> Any:
        """The member ``node_id`` (an index rebuilt once per published snapshot)."""
        snap = self.snapshot()
        if snap is not self._seen:
            self._by_id = {n.node_id: n for n in snap.nodes}
            self._seen = snap
        return self._by_id.get(node_id)

    def address_of(self, node_id: str) -> tuple[str, int] | None:
        n = self._node(node_id)
        if n is None:
            return None
        _, index = self._cool.get(node_id, (0.0, 0))
        addr: tuple[str, int] | None = n.info.dp_address(index)
        return addr

    def _use_plane(self, node_id: str) -> bool:
        until, _ = self._cool.get(node_id, (0.0, 0))
        return time.monotonic() >= until and self.address_of(node_id) is not None

    async def open(self, node_id: str, engine_id: str, req: ProxyRequest,
                   deadlines: Deadlines) -> UpstreamResponse:
        if self._use_plane(node_id):
            try:
                resp = await self._open_plane(node_id, engine_id, req, deadlines)
            except PlaneUnreachable as exc:
                self.stats["unreachable"] += 1
                _, index = self._cool.get(node_id, (0.0, 0))
                self._cool[node_id] = (time.monotonic() + COOLDOWN, index + 1)
                log.warning("data plane unreachable; using the libp2p forward",
                            extra={"node": node_id[-8:], "error": exc.message})
            else:
                self.stats["plane"] += 1
                return resp
        self.stats["fallback"] += 1
        return await self.fallback.open(node_id, engine_id, req, deadlines)

    async def _open_plane(self, node_id: str, engine_id: str, req: ProxyRequest,
                          deadlines: Deadlines) -> UpstreamResponse:
        flight = _Flight(node_id, asyncio.current_task())
        self._track(flight)
        try:
            resp = await self.client.open(node_id, engine_id, req, deadlines)
        except asyncio.CancelledError:
            self._flights.discard(flight)
            task = flight.task
            if flight.killed and task is not None and task.uncancel() == 0:
                raise UpstreamError("unavailable",
                                    f"node {node_id[-8:]} was declared dead") from None
            raise
        except BaseException:
            self._flights.discard(flight)
            raise
        flight.task = None
        flight.content = resp.content
        return _Watched(resp, lambda: self._flights.discard(flight))

    def _track(self, flight: _Flight) -> None:
        self._flights.add(flight)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while self._flights:
            await asyncio.sleep(DEATH_POLL)
            alive = {n.node_id for n in self.snapshot().nodes
                     if n.state not in ("dead", "left")}
            dead = {f.node_id for f in self._flights if f.node_id not in alive}
            for flight in [f for f in self._flights if f.node_id in dead]:
                self._flights.discard(flight)
                self.stats["abandoned"] += 1
                flight.killed = True
                if flight.task is not None:
                    flight.task.cancel()
                elif flight.content is not None:
                    flight.content.set_exception(UpstreamError(
                        "unavailable", f"node {flight.node_id[-8:]} was declared dead"))
            for node_id in dead:
                await self.client.forget(node_id)


class _Watched:
    """An answer over the data plane, untracked once closed."""

    def __init__(self, inner: Any, untrack: Callable[[], None]) -> None:
        self._inner = inner
        self._untrack = untrack
        self.status = inner.status
        self.headers = inner.headers

    async def read(self) -> bytes:
        data: bytes = await self._inner.read()
        return data

    async def aclose(self) -> None:
        self._untrack()
        await self._inner.aclose()


@dataclass
class Plane:
    """This node's data plane: :func:`build_plane`, then :meth:`serve`, :meth:`stop`."""

    server: DataPlaneServer
    client: DataPlaneClient
    forwarder: PlaneForwarder
    addresses: list[str] = field(default_factory=list)

    async def serve(self, listen: tuple[str, int], open_local: OpenLocal,
                    blob_path: BlobPath, backlog: int = ServerLimits.backlog) -> list[str]:
        """Listen; returns the addresses to gossip as the record's ``dp``."""
        self.server.open_local = open_local
        self.server.blob_path = blob_path
        self.server.limits = dataclasses.replace(self.server.limits, backlog=backlog)
        host, port = listen
        bound = await self.server.start(host, port)
        self.addresses = advertised(host, bound)
        log.info("data plane listening", extra={"addresses": ",".join(self.addresses)})
        return self.addresses

    async def stop(self) -> None:
        await self.server.stop()
        await self.client.close()


async def build_plane(*, identity: Identity, secret: bytes, snapshot: Callable[[], Snapshot],
                      fallback: Forwarder) -> Plane:
    """This node's certificate, server (not yet listening), client and forwarder."""
    cert = await asyncio.to_thread(node_cert, identity, secret)
    admitted = Admission(snapshot)
    server = DataPlaneServer(cert, admitted)
    client = DataPlaneClient(cert, admitted, lambda _n: None)
    return Plane(server, client, PlaneForwarder(client, fallback, snapshot))
