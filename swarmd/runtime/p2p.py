"""The libp2p side of a node: connections, admission and SWIM frame transport.

Theory of operation
-------------------
:class:`P2PNode` wraps one py-libp2p host: TCP, Noise (the only security
transport offered, so no plaintext/secio fallback), yamux, and this node's
Ed25519 identity.  On top of libp2p it adds admission (only peers that
proved the swarm secret are served), SWIM frames with UDP-like semantics, and
dialling of seeds given without a peer id.

Layout: this module is the frame transport (the host's lifecycle, the
per-peer senders, the inbound SWIM reader, connection events) behind the
unchanged :class:`P2PNode` facade; the admission gate is
:mod:`swarmd.runtime.p2p_admission`, dialling and resolving bare addresses
:mod:`swarmd.runtime.p2p_dialer`, shared state :mod:`swarmd.runtime.p2p_base`.

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

Every await on the network has a deadline (dial, admission, each frame, each
write, idle streams), so a silent or hostile peer cannot hold a task; memory
per peer is bounded by the queue length, the frame size and the inbound
stream count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import multiaddr
import trio

from swarmd.runtime.p2p_addrs import (
    expand_listen_addr,
    parse_seed,
)
from swarmd.runtime.p2p_admission import AdmissionGate
from swarmd.runtime.p2p_base import (
    ADMIT_PROTOCOL,
    MAX_INBOUND_STREAMS,
    MAX_PEERS,
    SWIM_PROTOCOL,
    WRITE_BATCH,
    Handler,
    P2PError,
    Timeouts,
    _Peer,
    log,
)
from swarmd.runtime.p2p_dialer import Dialer
from swarmd.runtime.p2p_framing import FrameError, FrameReader, StreamClosedError, encode_frame

__all__ = ["SWIM_PROTOCOL", "ADMIT_PROTOCOL", "P2PError", "P2PNode", "Timeouts", "parse_seed"]


class P2PNode(AdmissionGate, Dialer):
    """One libp2p host with admission and SWIM frame transport (see the module docstring)."""

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
