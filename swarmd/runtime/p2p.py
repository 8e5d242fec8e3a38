"""The libp2p side of a node: connections, admission and SWIM frame transport.

Theory of operation
-------------------
:class:`P2PNode` wraps one py-libp2p host: TCP, Noise (the only security
transport offered, so no plaintext/secio fallback), yamux, and this node's
Ed25519 identity.  On top of libp2p it adds:

Admission.  A connection proves the remote's *peer id* (Noise); admission
proves it knows the *swarm secret* (:mod:`swarmd.core.admission`, protocol
``/swarmd/admit/1.0.0``).  Whoever needs the connection first runs it as
initiator; a peer admitted in either direction is admitted for both until its
last connection closes.  Streams of every swarmd protocol from a peer that is
not admitted are reset and counted; a connection not admitted within
``Timeouts.unadmitted_conn`` is closed; a failed admission closes it at once.

SWIM frames, with UDP-like semantics.  :meth:`P2PNode.send` never blocks and
never raises: it queues the frame for the peer (bounded; the oldest frame is
dropped and counted when full) and wakes that peer's sender task.  The sender
dials if needed, admits if needed, keeps ONE long-lived outbound stream
``/swarmd/swim/1.0.0`` and writes 4-byte-length-prefixed frames, coalescing
what is queued into one write.  Any error resets the stream and drops what is
queued (counted); a failed dial backs off (0.25 s doubling to 5 s; an inbound
admission from the peer clears it).  A sender idle for ``sender_idle`` closes
its stream and exits.  Each direction uses its own stream; the inbound reader
hands each frame to ``on_frame(sender_peer_id, frame)`` in the trio thread.

Unknown peer ids.  A seed given as ``host:port`` or a multiaddr without
``/p2p/`` is dialled with the Noise handshake run with no expected peer id
(Noise still authenticates the remote key); the id it reports names the
connection, which is then upgraded to yamux and handed to the swarm like any
dialled connection.  Details in protocol/transport.md.

py-libp2p 0.8.1 pitfalls handled here (see FIELD-NOTES): its auto-connector
redials every peer in the peerstore below 50 connections (it would revive
peers that membership declared dead) and is switched off; its dial_peer dials
only the first TCP address and blacklists a peer for 60 s after a failure, so
we dial address by address with ``Swarm.dial_addr``; its default security
options include plaintext, so Noise is given explicitly.

Every await on the network has a deadline (dial, admission, each frame, each
write, idle streams), so a silent or hostile peer cannot hold a task; memory
per peer is bounded by the queue length, the frame size and the inbound
stream count.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio

from swarmd.core import admission
from swarmd.identity import Identity
from swarmd.runtime.p2p_addrs import (
    expand_listen_addr,
    hostport_to_multiaddr,
    parse_seed,
    split_p2p,
)
from swarmd.runtime.p2p_framing import FrameError, FrameReader, StreamClosedError, encode_frame

__all__ = ["SWIM_PROTOCOL", "ADMIT_PROTOCOL", "P2PError", "P2PNode", "Timeouts", "parse_seed"]

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


class P2PNode:
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

    # -- lifecycle -------------------------------------------------------------

    def _build_host(self) -> Any:
        from libp2p import new_host
        from libp2p.crypto.x25519 import create_new_key_pair as new_x25519
        from libp2p.network.config import RetryConfig
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
        from libp2p.security.noise.transport import Transport as NoiseTransport

        kp = self.identity.libp2p_keypair()
        host = new_host(
            key_pair=kp,
            sec_opt={NOISE_ID: NoiseTransport(kp, noise_privkey=new_x25519().private_key)},
            listen_addrs=[multiaddr.Multiaddr(a) for a in self.listen],
        )
        swarm: Any = host.get_network()

        async def _no_autoconnect(*_a: Any, **_k: Any) -> None:
            return None

        setattr(swarm.auto_connector, "maybe_connect", _no_autoconnect)  # noqa: B010
        swarm.retry_config = RetryConfig(max_retries=1, initial_delay=0.1, max_delay=0.5)
        return host

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen; ``task_status.started()`` once listening; run until cancelled."""
        from libp2p.abc import INotifee

        node = self

        class _Notifee(INotifee):
            async def opened_stream(self, network: Any, stream: Any) -> None:
                return None

            async def closed_stream(self, network: Any, stream: Any) -> None:
                return None

            async def connected(self, network: Any, conn: Any) -> None:
                node._on_connected(conn)

            async def disconnected(self, network: Any, conn: Any) -> None:
                node._on_disconnected(conn)

            async def listen(self, network: Any, multiaddr: Any) -> None:
                return None

            async def listen_close(self, network: Any, multiaddr: Any) -> None:
                return None

        host = self._build_host()
        host.get_network().register_notifee(_Notifee())
        # libp2p's own protocols (identify, identify-push, ping) answer
        # admitted peers only: identify would tell a stranger our addresses
        # and protocols, identify-push would let it write our peerstore.
        for proto, builtin in list(host.get_mux().handlers.items()):
            if builtin is not None:
                host.set_stream_handler(proto, self._gate(builtin))
        host.set_stream_handler(ADMIT_PROTOCOL, self._handle_admit)
        host.set_stream_handler(SWIM_PROTOCOL, self._handle_swim)
        for proto, handler in self._handlers.items():
            host.set_stream_handler(proto, self._wrap(handler))
        try:
            async with host.run([multiaddr.Multiaddr(a) for a in self.listen]):
                async with trio.open_nursery() as nursery:
                    self._host = host
                    self._nursery = nursery
                    log.debug("p2p listening", extra={"fields": {"addrs": self.addrs()}})
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            self._host = None
            self._admitted.clear()
            self._peers.clear()
            self._resolving.clear()

    # -- public API ------------------------------------------------------------

    def addrs(self) -> list[str]:
        """Dialable multiaddrs of this node, each ending /p2p/<peer_id>."""
        if self._host is None:
            return []
        out: list[str] = []
        for ma in self._host.get_transport_addrs():
            for a in expand_listen_addr(str(ma)):
                full = f"{a}/p2p/{self.peer_id}"
                if full not in out:
                    out.append(full)
        return out

    def is_admitted(self, peer_id: str) -> bool:
        return peer_id in self._admitted

    def admitted_peers(self) -> list[str]:
        return sorted(self._admitted)

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Serve ``protocol``; ``handler(peer_id, stream)`` runs only for admitted peers."""
        self._handlers[protocol] = handler
        if self._host is not None:
            self._host.set_stream_handler(protocol, self._wrap(handler))

    def send(self, peer_id: str, addrs: Sequence[str], frame: bytes) -> None:
        """Queue ``frame`` for ``peer_id``; best effort, never blocks, never raises."""
        try:
            self._send(peer_id, tuple(addrs), frame)
        except Exception:
            log.exception("p2p send failed")
            self.stats["dropped_send_error"] += 1

    def send_unknown(self, addrs: Sequence[str], frame: bytes) -> None:
        """Like :meth:`send` to a peer whose id is not known yet (seed ``host:port``)."""
        try:
            self._send_unknown(tuple(addrs), frame)
        except Exception:
            log.exception("p2p send_unknown failed")
            self.stats["dropped_send_error"] += 1

    async def open_stream(self, peer_id: str, protocol: str,
                          addrs: Sequence[str] = ()) -> Any:
        """A new stream to an admitted peer (dialling and admitting as needed)."""
        if self._host is None:
            raise P2PError("p2p node is not running")
        st = self._peers.get(peer_id)
        known = tuple(addrs) or (st.addrs if st else ())
        t = self.timeouts
        try:
            with trio.fail_after(t.dial * 2 + t.admission + t.open_stream):
                return await self._open(peer_id, known, protocol)
        except P2PError:
            raise
        except trio.TooSlowError:
            raise P2PError(f"opening {protocol} to {peer_id} timed out") from None
        except Exception as exc:
            raise P2PError(f"opening {protocol} to {peer_id} failed: {exc}") from exc

    def disconnect(self, peer_id: str) -> None:
        """Forget the peer: stop its sender, drop its queue, close its connections."""
        st = self._peers.pop(peer_id, None)
        if st is not None:
            st.closed = True
            st.queue.clear()
            if st.scope is not None:
                st.scope.cancel()
        self._admitted.discard(peer_id)
        if self._nursery is not None and self._host is not None:
            self._nursery.start_soon(self._close_peer, peer_id)

    # -- sending -----------------------------------------------------------------

    def _send(self, peer_id: str, addrs: tuple[str, ...], frame: bytes) -> None:
        if self._nursery is None:
            self.stats["dropped_not_running"] += 1
            return
        if peer_id == self.peer_id:
            self.stats["dropped_self"] += 1
            return
        if not frame or len(frame) > self.max_frame:
            self.stats["dropped_oversize"] += 1
            return
        st = self._peers.get(peer_id)
        if st is None:
            if len(self._peers) >= MAX_PEERS:
                self.stats["dropped_too_many_peers"] += 1
                return
            st = self._peers[peer_id] = _Peer(peer_id)
        if addrs:
            st.addrs = addrs
        if len(st.queue) >= self.queue_max:
            st.queue.popleft()
            self.stats["dropped_queue_full"] += 1
        st.queue.append(frame)
        if not st.running:
            st.running = True
            self._nursery.start_soon(self._sender, st)
        else:
            st.wake.set()

    def _drop_queue(self, st: _Peer, why: str = "dropped_send_error", extra: int = 0) -> None:
        self.stats[why] += len(st.queue) + extra
        st.queue.clear()

    async def _sender(self, st: _Peer) -> None:
        t = self.timeouts
        try:
            with trio.CancelScope() as scope:
                st.scope = scope
                while True:
                    if not st.queue:
                        st.wake = trio.Event()
                        with trio.move_on_after(t.sender_idle):
                            await st.wake.wait()
                        if not st.queue:
                            return
                    if st.stream is None:
                        if trio.current_time() < st.retry_at:
                            await trio.sleep_until(st.retry_at)
                        try:
                            with trio.fail_after(t.dial * 2 + t.admission + t.open_stream):
                                st.stream = await self._open(st.peer_id, st.addrs, SWIM_PROTOCOL)
                            st.backoff = 0.0
                        except Exception as exc:
                            st.backoff = min(max(st.backoff * 2, t.backoff_min), t.backoff_max)
                            st.retry_at = trio.current_time() + st.backoff
                            log.debug("p2p send: cannot reach peer",
                                      extra={"fields": {"peer": st.peer_id[-8:], "err": str(exc)}})
                            self._drop_queue(st)
                            self._forget_resolved(st.peer_id)
                            continue
                    batch: list[bytes] = []
                    size = 0
                    while st.queue and size < WRITE_BATCH:
                        f = st.queue.popleft()
                        batch.append(encode_frame(f))
                        size += len(f)
                    stream = st.stream
                    try:
                        with trio.fail_after(t.write):
                            await stream.write(b"".join(batch))
                    except Exception:
                        st.stream = None
                        self._drop_queue(st, extra=len(batch))
                        await self._reset(stream)
                        continue
                    self.stats["frames_out"] += len(batch)
                    self.stats["bytes_out"] += size
        finally:
            st.scope = None
            stream, st.stream = st.stream, None
            if stream is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    try:
                        await stream.close()
                    except Exception:
                        pass
            st.running = False
            # Respawn only while the node runs: a sender cancelled by shutdown
            # that respawned itself would spin forever in the cancelled
            # nursery and the process would never exit.
            stopping = trio.current_effective_deadline() == -math.inf
            if stopping:
                self._drop_queue(st, "dropped_not_running")
            if st.queue and not st.closed and self._nursery is not None:
                st.running = True
                self._nursery.start_soon(self._sender, st)
            elif self._peers.get(st.peer_id) is st:
                del self._peers[st.peer_id]

    # -- unknown peer ids ----------------------------------------------------------

    def _send_unknown(self, addrs: tuple[str, ...], frame: bytes) -> None:
        if self._nursery is None:
            self.stats["dropped_not_running"] += 1
            return
        if not addrs:
            self.stats["dropped_send_error"] += 1
            return
        now = trio.current_time()
        hit = self._resolved.get(addrs)
        if hit is not None and hit[1] > now:
            pid = hit[0]
            if pid == self.peer_id:
                self.stats["dropped_self"] += 1
            else:
                self._send(pid, self._with_id(addrs, pid), frame)
            return
        pending = self._resolving.get(addrs)
        if pending is None:
            if len(self._resolving) >= MAX_RESOLVING:
                self.stats["dropped_too_many_peers"] += 1
                return
            pending = self._resolving[addrs] = deque()
            self._nursery.start_soon(self._resolve, addrs)
        if len(pending) >= RESOLVE_QUEUE:
            pending.popleft()
            self.stats["dropped_queue_full"] += 1
        pending.append(frame)

    def resolved_peer(self, addrs: Sequence[str]) -> str | None:
        """The peer id last found behind ``addrs`` (a seed given without
        /p2p/), or None if they were never reached."""
        hit = self._resolved.get(tuple(addrs))
        return hit[0] if hit is not None else None

    def _forget_resolved(self, peer_id: str) -> None:
        """A learnt address -> id is stale once that id stops answering (a seed
        may come back at the same address with a new identity)."""
        for key in [k for k, (pid, _) in self._resolved.items() if pid == peer_id]:
            del self._resolved[key]

    @staticmethod
    def _with_id(addrs: Sequence[str], pid: str) -> tuple[str, ...]:
        return tuple(f"{ma}/p2p/{pid}" for ma in _dialable(addrs))

    async def _resolve(self, addrs: tuple[str, ...]) -> None:
        pid: str | None = None
        try:
            pid = await self._dial_unknown(addrs)
        except Exception as exc:
            self.stats["resolve_failures"] += 1
            log.debug("p2p: cannot reach seed",
                      extra={"fields": {"addrs": ",".join(addrs), "err": str(exc)}})
        pending = self._resolving.pop(addrs, deque())
        if pid is None:
            self.stats["dropped_send_error"] += len(pending)
            return
        self.stats["resolved"] += 1
        if len(self._resolved) > 4 * MAX_RESOLVING:
            self._resolved.clear()
        self._resolved[addrs] = (pid, trio.current_time() + RESOLVE_TTL)
        if pid == self.peer_id:
            self.stats["dropped_self"] += len(pending)
            return
        full = self._with_id(addrs, pid)
        for frame in pending:
            self._send(pid, full, frame)

    async def _dial_unknown(self, addrs: Sequence[str]) -> str:
        """Dial the first reachable address; return the peer id Noise reports."""
        host = self._host
        if host is None:
            raise P2PError("not running")
        swarm = host.get_network()
        last: Exception | None = None
        for ma in _dialable(addrs)[:4]:
            self.stats["dials"] += 1
            try:
                with trio.fail_after(self.timeouts.dial):
                    return await self._dial_addr_unknown(swarm, ma)
            except Exception as exc:
                last = exc
        self.stats["dial_failures"] += 1
        raise P2PError(f"no address of {list(addrs)} answered: {last}")

    async def _dial_addr_unknown(self, swarm: Any, ma: multiaddr.Multiaddr) -> str:
        transport = swarm.transport_manager.transport_for_dialing(ma)
        if transport is None:
            raise P2PError(f"no transport for {ma}")
        raw = await transport.dial(ma)
        secured: Any = None
        try:
            none_id: Any = None  # Noise XX with no expected id: it reports the remote's
            secured = await swarm.upgrader.security_multistream.secure_outbound(raw, none_id)
            remote = secured.get_remote_peer()
            pid = str(remote)
            if pid == self.peer_id:
                await secured.close()
                return pid
            if swarm.get_connections(remote):
                await secured.close()  # already connected (e.g. it dialled us)
                host_ps = swarm.peerstore
                host_ps.add_addrs(remote, [ma], ADDR_TTL)
                return pid
            muxed = await swarm.upgrader.upgrade_connection(secured, remote)
            swarm.peerstore.add_addrs(remote, [ma], ADDR_TTL)
            await swarm.add_conn(muxed, direction="outbound")
            return pid
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await (secured or raw).close()
                except Exception:
                    pass
            raise

    # -- dial + admission ------------------------------------------------------------

    def _connected(self, peer_id: str) -> bool:
        if self._host is None:
            return False
        try:
            from libp2p.peer.id import ID

            conns = self._host.get_network().get_connections(ID.from_base58(peer_id))
        except Exception:
            return False
        return any(not getattr(c, "is_closed", False) for c in conns)

    async def _open(self, peer_id: str, addrs: Sequence[str], protocol: str) -> Any:
        from libp2p.peer.id import ID

        await self._ensure_admitted(peer_id, addrs)
        with trio.fail_after(self.timeouts.open_stream):
            return await self._host.new_stream(ID.from_base58(peer_id), [protocol])

    async def _ensure_admitted(self, peer_id: str, addrs: Sequence[str]) -> None:
        if peer_id in self._admitted and self._connected(peer_id):
            return
        pending = self._admitting.get(peer_id)
        if pending is not None:
            await pending.wait()
            if peer_id in self._admitted:
                return
            raise P2PError(f"admission of {peer_id} failed")
        ev = self._admitting[peer_id] = trio.Event()
        try:
            if not self._connected(peer_id):
                await self._dial(peer_id, addrs)
            if peer_id in self._admitted:
                return
            await self._initiate(peer_id)
        finally:
            ev.set()
            if self._admitting.get(peer_id) is ev:
                del self._admitting[peer_id]

    async def _dial(self, peer_id: str, addrs: Sequence[str]) -> None:
        from libp2p.peer.id import ID

        host = self._host
        pid = ID.from_base58(peer_id)
        swarm = host.get_network()
        targets = _dialable(addrs)
        if targets:
            swarm.peerstore.add_addrs(pid, targets, ADDR_TTL)
        else:
            try:
                targets = _dialable([str(a) for a in swarm.peerstore.addrs(pid)])
            except Exception:
                targets = []
        if not targets:
            raise P2PError(f"no known address for {peer_id}")
        last: Exception | None = None
        for ma in targets[:4]:
            self.stats["dials"] += 1
            try:
                with trio.fail_after(self.timeouts.dial):
                    await swarm.dial_addr(ma, pid)
                return
            except Exception as exc:
                last = exc
        self.stats["dial_failures"] += 1
        raise P2PError(f"cannot reach {peer_id}: {last}")

    async def _initiate(self, peer_id: str) -> None:
        from libp2p.peer.id import ID

        stream: Any = None
        ini = admission.Initiator(self.secret, self.peer_id, peer_id, secrets.token_bytes(32))
        try:
            with trio.fail_after(self.timeouts.admission):
                stream = await self._host.new_stream(ID.from_base58(peer_id), [ADMIT_PROTOCOL])
                reader = FrameReader(stream, admission.MAX_MESSAGE, idle=math.inf,
                                     frame=self.timeouts.admission)
                await stream.write(encode_frame(ini.hello()))
                proof = ini.on_challenge(await reader.read_frame())
                await stream.write(encode_frame(proof))
                ini.on_result(await reader.read_frame())
        except Exception as exc:
            self._admission_failed(peer_id, exc, "initiator")
            if stream is not None:
                await self._reset(stream)
            await self._close_peer(peer_id)
            raise P2PError(f"admission to {peer_id} failed: {exc}") from None
        self._admit(peer_id)
        with trio.move_on_after(1.0):
            try:
                await stream.close()
            except Exception:
                pass

    def _admit(self, peer_id: str) -> None:
        new = peer_id not in self._admitted
        self._admitted.add(peer_id)
        self.stats["admission_ok"] += 1
        st = self._peers.get(peer_id)
        if st is not None:
            st.retry_at = 0.0
            st.backoff = 0.0
        if new:
            log.debug("p2p peer admitted", extra={"fields": {"peer": peer_id[-8:]}})
            if self.on_admitted is not None:
                try:
                    self.on_admitted(peer_id, self._known_addrs(peer_id))
                except Exception:
                    log.exception("on_admitted callback failed")

    def _known_addrs(self, peer_id: str) -> tuple[str, ...]:
        try:
            from libp2p.peer.id import ID

            raw = self._host.get_network().peerstore.addrs(ID.from_base58(peer_id))
        except Exception:
            return ()
        return self._with_id([str(a) for a in raw], peer_id)

    def _admission_failed(self, peer_id: str, exc: BaseException, role: str) -> None:
        self.stats["admission_failed"] += 1
        now = trio.current_time()
        if now - self._warned.get(peer_id, -math.inf) >= WARN_EVERY:
            if len(self._warned) > MAX_PEERS:
                self._warned.clear()
            self._warned[peer_id] = now
            reason = exc.reason if isinstance(exc, admission.AdmissionError) else type(exc).__name__
            log.warning("p2p admission failed",
                        extra={"fields": {"peer": peer_id, "role": role, "reason": reason,
                                          "detail": str(exc)}})

    async def _handle_admit(self, stream: Any) -> None:
        try:
            peer_id = _pid_of(stream)
        except Exception:
            await self._reset(stream)
            return
        resp = admission.Responder(self.secret, self.peer_id, peer_id, secrets.token_bytes(32))
        reader = FrameReader(stream, admission.MAX_MESSAGE, idle=math.inf,
                             frame=self.timeouts.admission)
        try:
            with trio.fail_after(self.timeouts.admission):
                chal = resp.on_hello(await reader.read_frame())
                await stream.write(encode_frame(chal))
                ok = resp.on_proof(await reader.read_frame())
                self._admit(peer_id)
                await stream.write(encode_frame(ok))
                await stream.close()
        except admission.AdmissionError as exc:
            self._admission_failed(peer_id, exc, "responder")
            if exc.reply is not None:
                with trio.move_on_after(1.0):
                    try:
                        await stream.write(encode_frame(exc.reply))
                        await stream.close()
                    except Exception:
                        pass
                await trio.sleep(0.05)  # let the reason reach the peer before the close
            await self._reset(stream)
            await self._close_peer(peer_id)
        except Exception as exc:
            if not resp.admitted:
                self._admission_failed(peer_id, exc, "responder")
                await self._reset(stream)
                await self._close_peer(peer_id)

    # -- inbound -------------------------------------------------------------------------

    async def _admitted_peer(self, stream: Any) -> str | None:
        """The admitted peer behind an inbound stream; else reset it (counted) and None."""
        try:
            peer_id = _pid_of(stream)
        except Exception:
            await self._reset(stream)
            return None
        if peer_id not in self._admitted:
            self.stats["dropped_unadmitted"] += 1
            await self._reset(stream)
            return None
        return peer_id

    def _gate(self, builtin: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """A libp2p built-in handler that resets streams from unadmitted peers."""
        async def gated(stream: Any) -> None:
            if await self._admitted_peer(stream) is not None:
                await builtin(stream)

        return gated

    def _wrap(self, handler: Handler) -> Callable[[Any], Awaitable[None]]:
        async def wrapped(stream: Any) -> None:
            peer_id = await self._admitted_peer(stream)
            if peer_id is None:
                return
            try:
                await handler(peer_id, stream)
            except Exception:
                self.stats["handler_errors"] += 1
                log.exception("p2p stream handler failed")
                await self._reset(stream)

        return wrapped

    async def _handle_swim(self, stream: Any) -> None:
        peer_id = await self._admitted_peer(stream)
        if peer_id is None:
            return
        if self._inbound.get(peer_id, 0) >= MAX_INBOUND_STREAMS:
            self.stats["streams_refused"] += 1
            await self._reset(stream)
            return
        self._inbound[peer_id] = self._inbound.get(peer_id, 0) + 1
        reader = FrameReader(stream, self.max_frame, idle=self.timeouts.idle_stream,
                             frame=self.timeouts.frame)
        clean = False
        try:
            while True:
                frame = await reader.read_frame()
                if peer_id not in self._admitted:
                    self.stats["dropped_unadmitted"] += 1
                    break
                self.stats["frames_in"] += 1
                self.stats["bytes_in"] += len(frame)
                try:
                    self.on_frame(peer_id, frame)
                except Exception:
                    self.stats["on_frame_errors"] += 1
                    log.exception("on_frame callback failed")
        except StreamClosedError:
            clean = True
        except FrameError:
            self.stats["dropped_malformed"] += 1
        except trio.TooSlowError:
            self.stats["stream_timeouts"] += 1
        except Exception:
            self.stats["stream_errors"] += 1
        finally:
            n = self._inbound.get(peer_id, 1) - 1
            if n <= 0:
                self._inbound.pop(peer_id, None)
            else:
                self._inbound[peer_id] = n
            if clean:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    try:
                        await stream.close()
                    except Exception:
                        pass
            else:
                await self._reset(stream)

    # -- connection events ------------------------------------------------------------------

    def _on_connected(self, conn: Any) -> None:
        try:
            peer_id = str(conn.muxed_conn.peer_id)
        except Exception:
            return
        if self._nursery is not None and peer_id not in self._admitted:
            self._nursery.start_soon(self._watch_unadmitted, peer_id)

    def _on_disconnected(self, conn: Any) -> None:
        try:
            peer_id = str(conn.muxed_conn.peer_id)
        except Exception:
            return
        if self._host is not None:
            try:
                others = [c for c in self._host.get_network().get_connections(
                    conn.muxed_conn.peer_id) if c is not conn and not getattr(c, "is_closed", False)]
            except Exception:
                others = []
            if others:
                return
        was_admitted = peer_id in self._admitted
        self._admitted.discard(peer_id)
        if was_admitted and self.on_lost is not None:
            try:
                self.on_lost(peer_id)
            except Exception:
                log.exception("on_lost callback failed")
        st = self._peers.get(peer_id)
        if st is not None and st.stream is not None:
            stream, st.stream = st.stream, None
            if self._nursery is not None:
                self._nursery.start_soon(self._reset, stream)

    async def _watch_unadmitted(self, peer_id: str) -> None:
        await trio.sleep(self.timeouts.unadmitted_conn)
        if peer_id not in self._admitted and peer_id not in self._admitting \
                and self._connected(peer_id):
            self.stats["conns_closed_unadmitted"] += 1
            await self._close_peer(peer_id)

    # -- helpers -------------------------------------------------------------------------------

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
