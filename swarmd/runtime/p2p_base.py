"""The p2p layer's shared state: limits, timeouts, per-peer slots, and helpers.

:class:`P2PBase` holds what every part of :class:`~swarmd.runtime.p2p.P2PNode`
reads and writes (the host, the admitted set, per-peer senders, learnt
addresses, counters) and the small helpers they share (reset a stream, close
a peer's connections).  The parts extend it: the admission gate
(:mod:`swarmd.runtime.p2p_admission`), the dialer and resolver
(:mod:`swarmd.runtime.p2p_dialer`), and the frame transport itself
(:mod:`swarmd.runtime.p2p`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio

from swarmd.core import admission
from swarmd.identity import Identity
from swarmd.runtime.p2p_addrs import (
    hostport_to_multiaddr,
    split_p2p,
)

log = logging.getLogger("swarmd.p2p")

SWIM_PROTOCOL = "/swarmd/swim/1.0.0"
ADMIT_PROTOCOL = admission.PROTOCOL_ID
#: Most frames a sender keeps queued for one peer.
QUEUE_MAX = 256
#: Most peers with a sender at once; more are dropped (and counted).
MAX_PEERS = 1024
#: Most unknown-id addresses being resolved at once, and frames held for each.
MAX_RESOLVING = 64
RESOLVE_QUEUE = 16
#: Most concurrent inbound swim streams from one peer (its sender keeps one).
MAX_INBOUND_STREAMS = 4
#: Bytes coalesced into one write.
WRITE_BATCH = 256 * 1024
#: Seconds a learnt "address -> peer id" stays trusted without a new dial.
RESOLVE_TTL = 60.0
#: Seconds between warnings about one peer's failed admission.
WARN_EVERY = 60.0
#: Peerstore address TTL for addresses we were given.
ADDR_TTL = 600

Handler = Callable[[str, Any], Awaitable[None]]

_STAT_KEYS = (
    "frames_in", "frames_out", "bytes_in", "bytes_out",
    "dropped_unadmitted", "dropped_malformed", "dropped_queue_full", "dropped_send_error",
    "dropped_oversize", "dropped_not_running", "dropped_self", "dropped_too_many_peers",
    "admission_ok", "admission_failed", "dials", "dial_failures",
    "conns_closed_unadmitted", "streams_refused", "stream_timeouts", "stream_errors",
    "resolved", "resolve_failures", "on_frame_errors", "handler_errors",
)


class P2PError(Exception):
    """A dial, admission or stream open failed (open_stream only; send never raises)."""


@dataclass(frozen=True)
class Timeouts:
    """Deadlines in seconds."""

    dial: float = 5.0  # per address: TCP + Noise + yamux
    admission: float = 5.0  # the whole admission exchange
    open_stream: float = 5.0  # protocol negotiation of a new stream
    write: float = 5.0  # one coalesced write
    frame: float = 10.0  # a frame whose first byte arrived must complete
    idle_stream: float = 300.0  # inbound swim stream silent this long is closed
    unadmitted_conn: float = 10.0  # connection not admitted by then is closed
    sender_idle: float = 60.0  # sender with nothing to send exits
    backoff_min: float = 0.25
    backoff_max: float = 5.0


@dataclass(eq=False)
class _Peer:
    peer_id: str
    addrs: tuple[str, ...] = ()
    queue: deque[bytes] = field(default_factory=deque)
    wake: trio.Event = field(default_factory=trio.Event)
    running: bool = False
    scope: trio.CancelScope | None = None
    stream: Any = None
    retry_at: float = 0.0
    backoff: float = 0.0
    closed: bool = False


def _pid_of(stream: Any) -> str:
    return str(stream.muxed_conn.peer_id)


def _dialable(addrs: Sequence[str]) -> list[multiaddr.Multiaddr]:
    """TCP multiaddrs without /p2p/ from addresses in any seed spelling."""
    out: list[multiaddr.Multiaddr] = []
    for a in addrs:
        try:
            base, _ = split_p2p(a if a.startswith("/") else hostport_to_multiaddr(a))
            ma = multiaddr.Multiaddr(base)
        except Exception:
            continue
        if "tcp" in [p.name for p in ma.protocols()] and ma not in out:
            out.append(ma)
    return out


class P2PBase:
    """State and helpers shared by the p2p parts."""

    def __init__(
        self,
        *,
        identity: Identity,
        listen: Sequence[str],
        secret: bytes,
        on_frame: Callable[[str, bytes], None],
        on_admitted: Callable[[str, tuple[str, ...]], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        max_frame: int = 1 << 20,
        queue_max: int = QUEUE_MAX,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.identity = identity
        self.peer_id: str = identity.peer_id
        self.listen = tuple(listen)
        self.secret = secret
        self.swarm_id = admission.swarm_id(secret)
        self.on_frame = on_frame
        self.on_admitted = on_admitted
        #: Called with a peer id when the last connection to an admitted peer closed.
        self.on_lost = on_lost
        self.max_frame = max_frame
        self.queue_max = queue_max
        self.timeouts = timeouts or Timeouts()
        self.stats: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)
        self._host: Any = None
        self._nursery: trio.Nursery | None = None
        self._handlers: dict[str, Handler] = {}
        self._peers: dict[str, _Peer] = {}
        self._admitted: set[str] = set()
        self._admitting: dict[str, trio.Event] = {}
        self._inbound: dict[str, int] = {}
        self._resolving: dict[tuple[str, ...], deque[bytes]] = {}
        self._resolved: dict[tuple[str, ...], tuple[str, float]] = {}
        self._warned: dict[str, float] = {}

    def _drop_queue(self, st: _Peer, why: str = "dropped_send_error", extra: int = 0) -> None:
        self.stats[why] += len(st.queue) + extra
        st.queue.clear()

    def _forget_resolved(self, peer_id: str) -> None:
        """A learnt address -> id is stale once that id stops answering (a seed
        may come back at the same address with a new identity)."""
        for key in [k for k, (pid, _) in self._resolved.items() if pid == peer_id]:
            del self._resolved[key]

    @staticmethod
    def _with_id(addrs: Sequence[str], pid: str) -> tuple[str, ...]:
        return tuple(f"{ma}/p2p/{pid}" for ma in _dialable(addrs))

    def _connected(self, peer_id: str) -> bool:
        if self._host is None:
            return False
        try:
            from libp2p.peer.id import ID

            conns = self._host.get_network().get_connections(ID.from_base58(peer_id))
        except Exception:
            return False
        return any(not getattr(c, "is_closed", False) for c in conns)

    async def _reset(self, stream: Any) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            try:
                await stream.reset()
            except Exception:
                pass

    async def _close_peer(self, peer_id: str) -> None:
        host = self._host
        if host is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(2.0):
            try:
                from libp2p.peer.id import ID

                await host.disconnect(ID.from_base58(peer_id))
            except Exception:
                log.debug("p2p disconnect failed", exc_info=True)

    # -- provided by the other parts ---------------------------------------

    def _send(self, peer_id: str, addrs: tuple[str, ...], frame: bytes) -> None:
        """Defined by :mod:`swarmd.runtime.p2p`."""
        raise NotImplementedError

    async def _ensure_admitted(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Defined by :mod:`swarmd.runtime.p2p_admission`."""
        raise NotImplementedError

    async def _dial(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Defined by :mod:`swarmd.runtime.p2p_dialer`."""
        raise NotImplementedError
