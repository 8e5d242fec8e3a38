"""The dialer and resolver: reaching a peer by id, or by a bare address.

Theory of operation
-------------------
A peer with a known id is dialled address by address (at most four, each
within ``Timeouts.dial``) and then admitted (:mod:`swarmd.runtime.p2p_admission`)
before a stream is opened.

Unknown peer ids.  A seed given as ``host:port`` or a multiaddr without
``/p2p/`` is dialled with the Noise handshake run with no expected peer id
(Noise still authenticates the remote key); the id it reports names the
connection, which is then upgraded to yamux and handed to the swarm like any
dialled connection.  Details in protocol/transport.md.  Frames for such an
address wait (bounded) while it is resolved; the learnt ``address -> id`` is
trusted for ``RESOLVE_TTL`` seconds, and forgotten as soon as that id stops
answering.

py-libp2p 0.8.1 pitfalls handled here (read in its source): its auto-connector
redials every peer in the peerstore below 50 connections (it would revive
peers that membership declared dead) and is switched off; its dial_peer dials
only the first TCP address and blacklists a peer for 60 s after a failure, so
we dial address by address with ``Swarm.dial_addr``; its default security
options include plaintext, so Noise is given explicitly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import multiaddr
import trio

from swarmd.runtime.p2p_base import (
    ADDR_TTL,
    MAX_RESOLVING,
    RESOLVE_QUEUE,
    RESOLVE_TTL,
    P2PBase,
    P2PError,
    _dialable,
    log,
)


class Dialer(P2PBase):
    """Dialling known and unknown peers."""

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

    async def _open(self, peer_id: str, addrs: Sequence[str], protocol: str) -> Any:
        from libp2p.peer.id import ID

        await self._ensure_admitted(peer_id, addrs)
        with trio.fail_after(self.timeouts.open_stream):
            return await self._host.new_stream(ID.from_base58(peer_id), [protocol])

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
