"""Membership state rules: the member table, incarnations, suspect/dead/left.

Theory of operation
-------------------
:class:`MembershipState` holds everything a :class:`~swarmd.core.membership.Membership`
knows (the member table, queues, timers) and the rules that change a
member's state; the failure detector, dissemination and record exchange
(:mod:`swarmd.core.membership_detector`, :mod:`swarmd.core.membership_sync`,
:mod:`swarmd.core.membership_records`) extend it, and the facade combines them.

Incarnations.  Only a node raises its own incarnation.  Alive(i) beats
suspect/dead(j) iff i > j; suspect/dead(j) beats alive(i) iff j >= i.  A node
that hears itself suspected or declared dead (or alive with a newer
incarnation: an earlier instance of itself) *refutes*: it takes an
incarnation above the accusation and gossips alive.  A restarted node (same
id, incarnation 0) is told by push-pull what the swarm remembers and
refutes above it.  A graceful leave gossips ``left`` (never refuted, distinct
from dead).  Dead and left members are forgotten after ``reap_after``.

Sending: every frame leaves through :meth:`MembershipState._send` (piggybacking
queued gossip up to the peer's packet limit) as a ``Send`` action.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from swarmd.core import records as rec
from swarmd.core import wire
from swarmd.core.broadcast_queue import BroadcastQueue
from swarmd.core.indexed_set import IndexedSet
from swarmd.core.lifeguard import (
    Awareness,
    Suspicion,
    retransmit_limit,
    suspicion_timeouts,
)
from swarmd.core.membership_config import MembershipConfig
from swarmd.core.membership_types import (
    _STAT_KEYS,
    Action,
    MemberChanged,
    MemberState,
    MemberView,
    Send,
    _Member,
    _Probe,
    _Relay,
)


class MembershipState:
    """The member table and its rules (see the module docstring)."""

    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        addrs: Sequence[str],
        config: MembershipConfig,
        now: float,
        rng: random.Random,
        record: Mapping[str, Any] | None = None,
    ) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        self.node_id = node_id
        self.config = config
        self._rng = rng
        self.stats: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)
        self._actions: list[Action] = []
        # Four queues, served in this order into every packet (memberlist
        # fills its own broadcasts first, then the delegate's): membership
        # news must never wait behind records.  The last holds lazy user
        # messages (wire.USER_LAZY): they ride on frames sent anyway and
        # never start a gossip round of their own.
        self._queue = BroadcastQueue()
        self._uqueue = BroadcastQueue()
        self._rqueue = BroadcastQueue()
        self._lqueue = BroadcastQueue()
        self._awareness = Awareness(config.awareness_max_multiplier)
        self._members: dict[str, _Member] = {}
        # Digest sync: entry hashes of all members (in _members order),
        # rebuilt when _dirty[0] is set; fingerprints per window cached.
        self._dirty = [True]
        self._digest_members: list[_Member] = []
        self._digests: dict[int, bytes] = {}
        self._counts = dict.fromkeys(MemberState, 0)
        self._live = IndexedSet()  # alive + suspect, not self
        self._recent_dead: dict[str, float] = {}  # dead member -> since (gossip to the dead)
        self._suspicions: dict[str, Suspicion] = {}
        self._relays: dict[int, _Relay] = {}
        self._probe: _Probe | None = None
        self._urgent: _Probe | None = None  # a hinted probe run beside the scheduled one
        self._probe_list: list[str] = []
        self._probe_idx = 0
        self._hinted: dict[str, float] = {}  # member -> when last hinted unreachable
        self._rx: tuple[str, int] = ("", 0)  # (sender, version) of the frame being handled
        self._seq = rng.randrange(1 << 30)
        self._user_seen: dict[int, float] = {}
        self._pulling: dict[str, float] = {}
        self._joins: dict[str, tuple[str, tuple[str, ...], int, float]] = {}
        self._left = False
        self._leave_at = 0.0
        me = _Member(node_id, name, tuple(addrs), MemberState.ALIVE, 0, now, self._dirty)
        self._me = me
        self._members[node_id] = me
        self._counts[MemberState.ALIVE] = 1
        # Record broadcast state: last broadcast record/version, rate limit.
        self._rec_sent: dict[str, Any] = {}
        self._rec_sent_version = 0
        self._rec_next_at = now
        self._rec_pending = False
        self._rec_synced = False
        if record:
            me.record = MappingProxyType(rec.check_record(record, config.max_record_bytes))
            me.record_version = 1
            # Not gossiped: peers pull it when a (join or digest) push-pull
            # shows them version 1; later changes go out as deltas.
            self._rec_sent = dict(me.record)
            self._rec_sent_version = 1
        # Schedules, staggered so that a swarm started at once does not beat.
        c = config
        self._next_probe = now + rng.random() * c.probe_interval
        self._next_gossip = now + rng.random() * c.gossip_interval
        self._next_push_pull = now + c.push_pull_interval * (0.5 + rng.random())
        self._next_sync = float("inf")  # busy syncs: scheduled by _busy()
        self._busy_until = -1.0
        self._housekeeping_every = max(c.probe_interval, min(5.0, c.reap_after / 10))
        self._next_housekeeping = now + self._housekeeping_every
        self._queue_alive(me)

    def _version_of(self, node: str) -> int:
        """Wire version ``node`` was last seen writing (0: not heard from yet)."""
        m = self._members.get(node)
        if m is not None and m.wire_version:
            return m.wire_version
        return self._rx[1] if self._rx[0] == node else 0

    def members(self) -> list[MemberView]:
        return [m.view() for m in self._members.values()]

    def member(self, node_id: str) -> MemberView | None:
        m = self._members.get(node_id)
        return None if m is None else m.view()

    def counts(self) -> dict[MemberState, int]:
        """Members per state, self included (O(1))."""
        return dict(self._counts)

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    @property
    def health(self) -> int:
        """Lifeguard awareness score (0 = healthy)."""
        return self._awareness.score

    def _emit(self, to: str, addrs: tuple[str, ...], payload: bytes) -> None:
        self.stats["msgs_out"] += 1
        self.stats["bytes_out"] += len(payload)
        self._actions.append(Send(to, addrs, payload))

    def _addrs_of(self, node: str) -> tuple[str, ...]:
        m = self._members.get(node)
        return () if m is None else m.addrs

    def _limit(self) -> int:
        return retransmit_limit(self.config.retransmit_mult, len(self._members))

    def _send(self, to: str, msgs: list[bytes], piggyback: bool = False,
              addrs: tuple[str, ...] | None = None) -> None:
        if piggyback and (self._pending_gossip() or len(self._lqueue)):
            used = sum(len(m) for m in msgs) + wire.FRAME_OVERHEAD
            room = self.config.gossip_packet_bytes - used
            if room > 16:
                msgs = msgs + self._take(room, self._limit())
        self._emit_msgs(to, self._addrs_of(to) if addrs is None else addrs, msgs)

    def _emit_msgs(self, to: str, addrs: tuple[str, ...], msgs: list[bytes]) -> None:
        """Send ``msgs`` as one frame, compressed where it pays and ``to`` reads it."""
        payload = wire.frame(msgs)
        least = self.config.compress_min_bytes
        if least and len(payload) >= least:
            if self._version_of(to) >= wire.COMPRESS_VERSION:
                packed = wire.compressed_frame(msgs)
                if len(packed) <= len(payload) - len(payload) // 8:
                    self.stats["compressed_frames"] += 1
                    self.stats["compress_saved_bytes"] += len(payload) - len(packed)
                    payload = packed
        self._emit(to, addrs, payload)

    def _pending_gossip(self) -> bool:
        return bool(len(self._queue) or len(self._uqueue) or len(self._rqueue))

    def _take(self, budget: int, limit: int) -> list[bytes]:
        out = self._queue.get(budget, limit)
        for q in (self._uqueue, self._rqueue, self._lqueue):
            room = budget - sum(len(m) for m in out)
            if room < 32 or not len(q):
                continue
            got = q.get(room, limit)
            if q is self._rqueue:
                self.stats["record_bytes_out"] += sum(len(m) for m in got)
            out += got
        return out

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _set_state(self, m: _Member, new: MemberState, now: float) -> None:
        old = m.state
        if old is new:
            return
        self._counts[old] -= 1
        self._counts[new] += 1
        m.state = new
        m.state_since = now
        m.changed()
        if m is not self._me:
            self._busy(now)
            if new in (MemberState.ALIVE, MemberState.SUSPECT):
                self._live.add(m.node_id)
            else:
                self._live.discard(m.node_id)
            if new is MemberState.DEAD:
                self._recent_dead[m.node_id] = now
            else:
                self._recent_dead.pop(m.node_id, None)
        self._actions.append(MemberChanged(m.node_id, old, new, m.view()))

    def _queue_alive(self, m: _Member) -> None:
        self._queue.put(("m", m.node_id), wire.encode_message(
            wire.Alive(m.node_id, m.incarnation, m.name, m.addrs)))

    def _refute(self, accused: int) -> None:
        me = self._me
        me.incarnation = max(me.incarnation + 1, accused + 1)
        me.changed()
        self._awareness.apply(1)
        self.stats["refutations"] += 1
        self._queue_alive(me)

    def _on_alive(self, a: wire.Alive, now: float, relay: bool = True) -> None:
        if a.node == self.node_id:
            me = self._me
            if self._left:
                return
            if a.inc > me.incarnation or (
                a.inc == me.incarnation and (a.addrs != me.addrs or a.name != me.name)
            ):
                self._refute(a.inc)
            return
        m = self._members.get(a.node)
        if m is None:
            m = _Member(a.node, a.name, a.addrs, MemberState.ALIVE, a.inc, now, self._dirty)
            self._members[a.node] = m
            self._counts[MemberState.ALIVE] += 1
            self._live.add(a.node)
            # A random place in the probe order (memberlist does the same).
            self._probe_list.insert(
                self._rng.randint(self._probe_idx, len(self._probe_list)), a.node)
            if relay and self.config.join_retransmits > 0:
                # A join: digest sync spreads it; gossip only seeds it.
                self._queue.put(("m", a.node), wire.encode_message(a),
                                cap=self.config.join_retransmits)
            self._busy(now)
            self._actions.append(MemberChanged(a.node, None, MemberState.ALIVE, m.view()))
            return
        if a.inc <= m.incarnation:
            return
        self._suspicions.pop(a.node, None)
        m.incarnation = a.inc
        m.name = a.name
        m.addrs = a.addrs
        m.changed()
        if relay:
            self._queue.put(("m", a.node), wire.encode_message(a))
        self._set_state(m, MemberState.ALIVE, now)

    def _on_suspect(self, s: wire.Suspect, now: float) -> None:
        m = self._members.get(s.node)
        if m is None or s.inc < m.incarnation:
            return
        susp = self._suspicions.get(s.node)
        if susp is not None:
            if susp.confirm(s.frm):
                self._queue.put(("m", s.node), wire.encode_message(s))
            return
        if s.node == self.node_id:
            if not self._left:
                self._refute(s.inc)
            return
        if m.state is not MemberState.ALIVE:
            return
        self._queue.put(("m", s.node), wire.encode_message(s))
        m.incarnation = s.inc
        self.stats["suspicions"] += 1
        c = self.config
        n = len(self._members)
        k = c.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        lo, hi = suspicion_timeouts(c.suspicion_mult, c.suspicion_max_timeout_mult, n,
                                    c.probe_interval)
        self._suspicions[s.node] = Suspicion(s.frm, k, lo, hi, now)
        self._set_state(m, MemberState.SUSPECT, now)

    def _on_dead(self, d: wire.Dead, now: float) -> None:
        m = self._members.get(d.node)
        if m is None or d.inc < m.incarnation:
            return
        left = d.frm == d.node
        self._suspicions.pop(d.node, None)
        if m.state is MemberState.LEFT or (m.state is MemberState.DEAD and not left):
            return
        if d.node == self.node_id:
            if not self._left:
                self._refute(d.inc)
            return
        m.incarnation = d.inc
        m.changed()
        if left:
            self._queue.put(("m", d.node), wire.encode_message(wire.Left(d.node, d.inc)))
            self._set_state(m, MemberState.LEFT, now)
        else:
            self.stats["deaths"] += 1
            self._queue.put(("m", d.node), wire.encode_message(d))
            self._set_state(m, MemberState.DEAD, now)

    def _housekeeping(self, now: float) -> None:
        reap = self.config.reap_after
        for node in [
            n for n, m in self._members.items()
            if m.state in (MemberState.DEAD, MemberState.LEFT) and now - m.state_since >= reap
            and m is not self._me
        ]:
            m = self._members.pop(node)
            self._dirty[0] = True
            self._counts[m.state] -= 1
            self._recent_dead.pop(node, None)
            self._suspicions.pop(node, None)
            self._pulling.pop(node, None)
            self.stats["reaped"] += 1
        ttd = self.config.gossip_to_the_dead
        for node in [n for n, t in self._recent_dead.items() if now - t >= ttd]:
            del self._recent_dead[node]
        if self._user_seen:
            for mid in [i for i, t in self._user_seen.items() if t <= now]:
                del self._user_seen[mid]
        for node in [n for n, t in self._pulling.items() if now - t >= 10.0]:
            del self._pulling[node]
        if self._hinted:
            for node in [n for n, t in self._hinted.items()
                         if now - t >= self.config.probe_interval]:
                del self._hinted[node]

    # -- provided by the other parts (see each docstring) ------------------

    def _busy(self, now: float) -> None:
        """Defined by :mod:`swarmd.core.membership_sync`."""
        raise NotImplementedError

    @staticmethod
    def _record_reply(m: _Member) -> bytes:
        """Defined by :mod:`swarmd.core.membership_records`."""
        raise NotImplementedError

    def _bump_own_record(self, seen_version: int, force: bool = False) -> None:
        """Defined by :mod:`swarmd.core.membership_records`."""
        raise NotImplementedError

    def _send_batched(self, to: str, msgs: list[bytes]) -> None:
        """Defined by :mod:`swarmd.core.membership_sync`."""
        raise NotImplementedError
