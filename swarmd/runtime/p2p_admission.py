"""The admission gate: only peers that proved the swarm secret are served.

Theory of operation
-------------------
Admission.  A connection proves the remote's *peer id* (Noise); admission
proves it knows the *swarm secret* (:mod:`swarmd.core.admission`, protocol
``/swarmd/admit/1.0.0``).  Whoever needs the connection first runs it as
initiator; a peer admitted in either direction is admitted for both until its
last connection closes.  Streams of every swarmd protocol from a peer that is
not admitted are reset and counted; a connection not admitted within
``Timeouts.unadmitted_conn`` is closed; a failed admission closes it at once.

libp2p's own protocols (identify, ping) are wrapped by :meth:`AdmissionGate._gate`
and every swarmd protocol by :meth:`AdmissionGate._wrap`, so an unadmitted
peer's streams are reset and counted before any handler runs.  A failed
admission is logged at most once per ``WARN_EVERY`` seconds per peer.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from swarmd.core import admission
from swarmd.runtime.p2p_base import (
    ADMIT_PROTOCOL,
    MAX_PEERS,
    WARN_EVERY,
    Handler,
    P2PBase,
    P2PError,
    _pid_of,
    log,
)
from swarmd.runtime.p2p_framing import FrameReader, encode_frame


class AdmissionGate(P2PBase):
    """Admitting peers (both roles) and gating inbound streams."""

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

    async def _watch_unadmitted(self, peer_id: str) -> None:
        await trio.sleep(self.timeouts.unadmitted_conn)
        if peer_id not in self._admitted and peer_id not in self._admitting \
                and self._connected(peer_id):
            self.stats["conns_closed_unadmitted"] += 1
            await self._close_peer(peer_id)
