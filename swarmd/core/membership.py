"""SWIM membership with Lifeguard, sans-IO (modelled on hashicorp/memberlist).

Theory of operation
-------------------
The caller feeds frames (:meth:`Membership.receive`) and time
(:meth:`Membership.tick` at :meth:`Membership.next_deadline`), and carries out
the actions from :meth:`Membership.drain`: ``Send`` (deliver best-effort),
``MemberChanged`` (a member's state changed) and ``UserMessage`` (a user
broadcast from another node, e.g. a lease claim).  Nothing here does I/O,
reads a clock or draws unseeded randomness.

Failure detection (SWIM).  Every ``probe_interval * (awareness + 1)`` we ping
the next member of a shuffled round-robin list.  No ack within
``probe_timeout`` -> ask ``indirect_checks`` random peers to ping it for us
(ping-req, they nack if they get no ack either).  No ack from anyone by the
end of the interval -> we *suspect* it.  A suspect has a Lifeguard suspicion
timeout (max, shrinking to min with independent confirmations; see
:mod:`swarmd.core.lifeguard`) to refute before we declare it *dead*.

Dissemination.  State changes are queued in a transmit-limited broadcast
queue and piggybacked on probes and acks, and sent by a gossip round every
``gossip_interval`` to ``gossip_nodes`` random peers (each broadcast sent
``retransmit_mult * ceil(log10(N+1))`` times per node, newest first, one
packet of ``gossip_packet_bytes`` per peer per round).  A periodic full-state
push-pull with one random peer (and, Serf-style, with one dead member to
heal partitions) repairs whatever gossip lost; a join is a push-pull with a
seed (:meth:`Membership.introduce`).

Incarnations.  Only a node raises its own incarnation.  Alive(i) beats
suspect/dead(j) iff i > j; suspect/dead(j) beats alive(i) iff j >= i.  A node
that hears itself suspected or declared dead (or alive with a newer
incarnation: an earlier instance of itself) *refutes*: it takes an
incarnation above the accusation and gossips alive.  A restarted node (same
id, incarnation 0) is told by push-pull what the swarm remembers and
refutes above it.  A graceful leave gossips ``left`` (never refuted, distinct
from dead).  Dead and left members are forgotten after ``reap_after``.

Records.  Each member's record travels in record messages (deltas, pulls;
see :mod:`swarmd.core.records`), rate-limited by the gossip budget.

User messages.  :meth:`Membership.broadcast` gossips an opaque payload to
every node (epidemic re-broadcast, duplicates dropped by message id); other
nodes get it from drain() as :class:`UserMessage`.  A newer broadcast with
the same key replaces an older one still queued.
"""

from __future__ import annotations

import enum
import hashlib
import random
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from swarmd.core import records as rec
from swarmd.core import wire
from swarmd.core.broadcast_queue import BroadcastQueue
from swarmd.core.indexed_set import IndexedSet
from swarmd.core.lifeguard import (
    Awareness,
    Suspicion,
    push_pull_scale,
    relay_timeout,
    retransmit_limit,
    suspicion_timeouts,
)
from swarmd.core.membership_config import PROFILES, MembershipConfig

__all__ = [
    "PROFILES",
    "MemberChanged",
    "MemberState",
    "MemberView",
    "Membership",
    "MembershipConfig",
    "Send",
    "UserMessage",
]


class MemberState(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


_TO_WIRE = {
    MemberState.ALIVE: wire.WireState.ALIVE,
    MemberState.SUSPECT: wire.WireState.SUSPECT,
    MemberState.DEAD: wire.WireState.DEAD,
    MemberState.LEFT: wire.WireState.LEFT,
}


@dataclass(frozen=True)
class MemberView:
    node_id: str
    name: str
    addrs: tuple[str, ...]
    state: MemberState
    incarnation: int
    record: Mapping[str, Any]
    record_version: int
    state_since: float  # monotonic time (caller's clock) of the last state change


@dataclass(frozen=True)
class Send:
    """Deliver ``payload`` (one frame) to node ``to`` best-effort.

    ``to`` is "" when the node id is not known yet (introduce with a bare
    address): the transport resolves ``addrs``."""

    to: str
    addrs: tuple[str, ...]
    payload: bytes


@dataclass(frozen=True)
class MemberChanged:
    node_id: str
    old: MemberState | None  # None: a member we had not known
    new: MemberState
    view: MemberView


@dataclass(frozen=True)
class UserMessage:
    """A user broadcast (see Membership.broadcast) that reached this node."""

    sender: str  # the node that broadcast it (not the relay)
    key: str
    payload: bytes


Action = Send | MemberChanged | UserMessage

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class _Member:
    __slots__ = (
        "node_id", "name", "addrs", "state", "incarnation", "record", "record_version",
        "state_since", "wire_version", "_entry", "_view", "_h8", "_dirty",
    )

    def __init__(self, node_id: str, name: str, addrs: tuple[str, ...], state: MemberState,
                 incarnation: int, now: float, dirty: list[bool]) -> None:
        self.node_id = node_id
        self.name = name
        self.addrs = addrs
        self.state = state
        self.incarnation = incarnation
        self.record: Mapping[str, Any] = _EMPTY
        self.record_version = 0
        self.state_since = now
        self.wire_version = 0  # of the last frame it sent us; 0: none yet
        self._entry: bytes | None = None
        self._view: MemberView | None = None
        self._h8: bytes | None = None
        self._dirty = dirty  # shared with Membership: the digest needs rebuilding
        dirty[0] = True

    def changed(self) -> None:
        self._entry = None
        self._view = None
        self._h8 = None
        self._dirty[0] = True

    def h8(self) -> bytes:
        """BLAKE2b-64 of the entry; digest-sync fingerprints are slices of it."""
        if self._h8 is None:
            self._h8 = hashlib.blake2b(self.entry(), digest_size=8).digest()
        return self._h8

    def entry(self) -> bytes:
        if self._entry is None:
            self._entry = wire.encode_entry(wire.StateEntry(
                self.node_id, self.name, self.addrs, _TO_WIRE[self.state], self.incarnation,
                self.record_version))
        return self._entry

    def view(self) -> MemberView:
        if self._view is None:
            self._view = MemberView(self.node_id, self.name, self.addrs, self.state,
                                    self.incarnation, self.record, self.record_version,
                                    self.state_since)
        return self._view


class _Probe:
    __slots__ = ("target", "seq", "timeout_at", "end_at", "acked", "nacks", "expected_nacks",
                 "indirect_sent")

    def __init__(self, target: str, seq: int, timeout_at: float, end_at: float) -> None:
        self.target = target
        self.seq = seq
        self.timeout_at = timeout_at
        self.end_at = end_at
        self.acked = False
        self.nacks = 0
        self.expected_nacks = 0
        self.indirect_sent = False


class _Relay:
    __slots__ = ("requester", "seq", "deadline", "nack")

    def __init__(self, requester: str, seq: int, deadline: float, nack: bool) -> None:
        self.requester = requester
        self.seq = seq
        self.deadline = deadline
        self.nack = nack


_STAT_KEYS = (
    "msgs_in", "msgs_out", "bytes_in", "bytes_out", "dropped_malformed", "dropped_unknown",
    "dropped_misdirected", "probes", "probe_failures", "indirect_probes", "relayed_pings",
    "nacks_sent", "suspicions", "deaths", "refutations", "push_pulls", "record_pulls",
    "records_applied", "user_in", "gossip_frames", "reaped", "syncs", "probe_hints",
    "compressed_frames", "compress_saved_bytes",
    "record_bytes_out",
)



class Membership:
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

    # ------------------------------------------------------------------ API

    def introduce(self, node_id: str | None, addrs: Sequence[str], now: float) -> None:
        """Join through a peer (seed, mDNS, reconnect): a push-pull with it."""
        if node_id == self.node_id or self._left:
            return
        key = node_id or "|".join(addrs)
        # Retried (twice, 2 probe intervals apart) until a push-pull reply comes.
        self._joins[key] = (node_id or "", tuple(addrs), 2, now + 2 * self.config.probe_interval)
        self._send_push_pull(node_id or "", tuple(addrs), wire.PP_JOIN)

    def receive(self, sender: str, payload: bytes, now: float) -> None:
        self.stats["msgs_in"] += 1
        self.stats["bytes_in"] += len(payload)
        try:
            frame = wire.decode_frame(payload)
        except wire.DecodeError:
            self.stats["dropped_malformed"] += 1
            return
        self.stats["dropped_unknown"] += frame.unknown
        if not sender or sender == self.node_id:
            self.stats["dropped_unknown"] += len(frame.messages)
            return
        sm = self._members.get(sender)
        if sm is not None:
            sm.wire_version = frame.version
        # A joiner is not a member until its PUSH_PULL is handled, and the
        # reply goes out while handling it: remember who is speaking which
        # version for the length of this frame.
        self._rx = (sender, frame.version)
        try:
            for msg in frame.messages:
                self._handle(sender, msg, now)
        finally:
            self._rx = ("", 0)
        if sm is None and (sm := self._members.get(sender)) is not None:
            sm.wire_version = frame.version

    def _version_of(self, node: str) -> int:
        """Wire version ``node`` was last seen writing (0: not heard from yet)."""
        m = self._members.get(node)
        if m is not None and m.wire_version:
            return m.wire_version
        return self._rx[1] if self._rx[0] == node else 0

    def tick(self, now: float) -> None:
        c = self.config
        # Probes.
        for p in self._in_flight():
            if not p.acked and not p.indirect_sent and now >= p.timeout_at:
                self._send_indirect(p)
            if now >= p.end_at:
                self._finish_probe(p, now)
        if now >= self._next_probe:
            interval = self._awareness.scale(c.probe_interval)
            if not self._left:
                self._start_probe(now, now + interval)
            self._next_probe = now + interval
        # Relayed pings that got no ack.
        if self._relays:
            for seq in [s for s, r in self._relays.items() if now >= r.deadline]:
                r = self._relays.pop(seq)
                if r.nack:
                    self.stats["nacks_sent"] += 1
                    self._send(r.requester, [wire.encode_message(wire.Nack(r.seq))])
        # Suspicion timers.
        if self._suspicions:
            for node in [n for n, s in self._suspicions.items() if now >= s.deadline]:
                m = self._members.get(node)
                self._suspicions.pop(node, None)
                if m is not None and m.state is MemberState.SUSPECT:
                    self._on_dead(wire.Dead(node, m.incarnation, self.node_id), now)
        # Join push-pulls that got no reply.
        if self._joins:
            for key, (to, addrs, left, at) in list(self._joins.items()):
                if now >= at:
                    if left <= 0:
                        del self._joins[key]
                        continue
                    self._joins[key] = (to, addrs, left - 1, now + 2 * c.probe_interval)
                    self._send_push_pull(to, addrs, wire.PP_JOIN)
        # Own record, rate-limited.
        if self._rec_pending and now >= self._rec_next_at:
            self._broadcast_record(now)
        # Gossip round.
        if now >= self._next_gossip:
            if self._pending_gossip():
                self._gossip(now)
            steps = int((now - self._next_gossip) // c.gossip_interval) + 1
            self._next_gossip += steps * c.gossip_interval
        # Push-pull anti-entropy.
        if now >= self._next_push_pull:
            self._periodic_push_pull()
            n = len(self._members)
            self._next_push_pull = now + push_pull_scale(c.push_pull_interval, n) * (
                0.75 + 0.5 * self._rng.random())
        # Digest syncs while the membership is changing.
        if now >= self._next_sync:
            if now < self._busy_until and not self._left:
                live = self._live.sample(self._rng, 1)
                if live:
                    self._sync_with(live[0])
                self._next_sync = now + c.busy_sync_interval * (0.75 + 0.5 * self._rng.random())
            else:
                self._next_sync = float("inf")
        if now >= self._next_housekeeping:
            self._housekeeping(now)
            self._next_housekeeping = now + self._housekeeping_every

    def next_deadline(self) -> float:
        d = min(self._next_probe, self._next_push_pull, self._next_housekeeping,
                self._next_sync)
        for p in self._in_flight():
            d = min(d, p.end_at)
            if not p.acked and not p.indirect_sent:
                d = min(d, p.timeout_at)
        if self._pending_gossip():
            d = min(d, self._next_gossip)
        if self._rec_pending:
            d = min(d, self._rec_next_at)
        for s in self._suspicions.values():
            d = min(d, s.deadline)
        for r in self._relays.values():
            d = min(d, r.deadline)
        for j in self._joins.values():
            d = min(d, j[3])
        return d

    def drain(self) -> list[Send | MemberChanged | UserMessage]:
        out = self._actions
        self._actions = []
        return out

    def set_record(self, record: Mapping[str, Any], now: float) -> None:
        """Replace our record (bumps its version); gossiped within the rate limit."""
        checked = rec.check_record(record, self.config.max_record_bytes)
        me = self._me
        if checked == dict(me.record):
            return
        me.record = MappingProxyType(checked)
        me.record_version += 1
        me.changed()
        self._rec_pending = True

    def set_addrs(self, addrs: Sequence[str], now: float) -> None:
        me = self._me
        if tuple(addrs) == me.addrs:
            return
        me.addrs = tuple(addrs)
        me.incarnation += 1
        me.changed()
        self._queue_alive(me)

    def hint_unreachable(self, node_id: str, now: float) -> None:
        """The transport lost its connection to ``node_id``: probe it next.

        A crashed process's peers see its connections reset at once; probing
        it now (beside the scheduled probe if one is in flight, else as the
        next one), instead of whenever the shuffled round reaches it (up to
        N-1 intervals), lets every survivor suspect it within one probe
        interval, so confirmations come together and the suspicion timeout
        shrinks to its minimum.  Only when it is probed changes: a member is
        still declared dead only after failed direct and indirect probes and
        the suspicion timeout, so a spurious disconnect costs one probe.  At
        most one hint per member per ``probe_interval``.
        """
        if self._left or node_id not in self._live:
            return
        last = self._hinted.get(node_id)
        if last is not None and now - last < self.config.probe_interval:
            return
        self._hinted[node_id] = now
        self.stats["probe_hints"] += 1
        if any(q.target == node_id for q in self._in_flight()):
            return
        p = self._probe
        if p is not None and self._urgent is None:
            # A scheduled probe of another member is in flight: probe this
            # one beside it now rather than after it (up to an interval).
            interval = self._awareness.scale(self.config.probe_interval)
            self._urgent = self._launch_probe(node_id, now, now + interval)
            return
        rest = self._probe_list[self._probe_idx:]
        if node_id in rest:
            del self._probe_list[self._probe_idx + rest.index(node_id)]
        self._probe_list.insert(self._probe_idx, node_id)
        if p is None:
            self._next_probe = min(self._next_probe, now)

    def broadcast(self, key: str, payload: bytes, lazy: bool = False) -> None:
        """Gossip ``payload`` to every node; replaces our queued one with the same key.

        ``lazy``: piggyback only -- the message (and every relay of it) rides
        on probes, acks and gossip rounds that other news starts, and never
        starts a round itself.  For periodic news whose next copy is never
        far behind (lease renewals): in an idle swarm it costs no frames,
        and reaches everyone in O(log N) probe intervals instead of gossip
        rounds.
        """
        msg_id = self._rng.getrandbits(63)
        flags = wire.USER_LAZY if lazy else 0
        data = wire.encode_message(wire.User(self.node_id, key, msg_id, bytes(payload), flags))
        self._queue_user(("u", self.node_id, key), data, lazy)

    def _queue_user(self, key: tuple[str, str, str], data: bytes, lazy: bool) -> None:
        put, drop = (self._lqueue, self._uqueue) if lazy else (self._uqueue, self._lqueue)
        drop.remove(key)
        put.put(key, data)

    def leave(self, now: float) -> None:
        """Gossip ``left`` for ourselves; keep ticking for :attr:`leave_grace`."""
        if self._left:
            return
        self._left = True
        self._leave_at = now
        me = self._me
        me.incarnation += 1
        self._set_state(me, MemberState.LEFT, now)
        self._queue.put(("m", me.node_id),
                        wire.encode_message(wire.Left(me.node_id, me.incarnation)))
        self._probe = self._urgent = None

    @property
    def leave_grace(self) -> float:
        """Seconds to keep ticking after leave() so gossip carries ``left``."""
        limit = retransmit_limit(self.config.retransmit_mult, len(self._members))
        return min(10.0, self.config.gossip_interval * (limit + 2))

    def leave_done(self, now: float) -> bool:
        """True once our ``left`` was sent its share of times, or the grace passed."""
        return self._left and (
            ("m", self.node_id) not in self._queue or now >= self._leave_at + self.leave_grace
        )

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

    def record_interval(self) -> float:
        """Least seconds between our record broadcasts at the current swarm size."""
        size = len(wire.encode_message(wire.Record(self.node_id, self._me.record_version,
                                                   self._me.record, True)))
        return rec.min_record_interval(len(self._members), size, self.config.retransmit_mult,
                                       self.config.record_budget_bytes_per_s)

    # ------------------------------------------------------------ sending

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

    def _gossip(self, now: float) -> None:
        c = self.config
        targets = self._live.sample(self._rng, c.gossip_nodes)
        if self._recent_dead and self._rng.random() < len(self._recent_dead) / (
            len(self._live) + len(self._recent_dead)
        ):
            dead = self._rng.choice(list(self._recent_dead))
            if len(targets) >= c.gossip_nodes and targets:
                targets[-1] = dead
            else:
                targets.append(dead)
        limit = self._limit()
        budget = c.gossip_packet_bytes - wire.FRAME_OVERHEAD
        for t in targets:
            msgs = self._take(budget, limit)
            if not msgs:
                break
            self.stats["gossip_frames"] += 1
            self._send(t, msgs)

    def _send_push_pull(self, to: str, addrs: tuple[str, ...], flags: int) -> None:
        self.stats["push_pulls"] += 1
        self._send_entries(to, addrs, flags, list(self._members.values()),
                           with_records=bool(flags & wire.PP_REPLY))

    def _send_entries(self, to: str, addrs: tuple[str, ...], flags: int,
                      members: list[_Member], with_records: bool = False) -> None:
        """Entries of ``members`` in PUSH_PULL frames of at most max_message_bytes.

        ``with_records`` (a reply to a member seen writing version >= 3):
        each member's record rides in the same frame right after the
        PUSH_PULL (flag PP_RECORDS), saving the receiver a RECORD_REQ round
        trip per member it did not know -- most of a join's traffic.
        """
        if with_records and self._version_of(to) < wire.RECORDS_FOLLOW_VERSION:
            with_records = False
        budget = self.config.max_message_bytes - wire.FRAME_OVERHEAD - wire.PUSH_PULL_OVERHEAD
        parts: list[tuple[list[bytes], list[bytes]]] = [([], [])]
        used = 0
        for m in members:
            e = m.entry()
            r = self._record_reply(m) if with_records and m.record_version > 0 else b""
            if used + len(e) + len(r) > budget and parts[-1][0]:
                parts.append(([], []))
                used = 0
            parts[-1][0].append(e)
            if r:
                parts[-1][1].append(r)
                self.stats["record_bytes_out"] += len(r)
            used += len(e) + len(r)
        if with_records:
            flags |= wire.PP_RECORDS
        if not addrs:
            addrs = self._addrs_of(to)
        for i, (ents, recs) in enumerate(parts):
            f = flags | (wire.PP_LAST if i == len(parts) - 1 else 0)
            self._emit_msgs(to, addrs, [wire.push_pull_messages(f, ents), *recs])

    def _periodic_push_pull(self) -> None:
        if self._left:
            return
        live = self._live.sample(self._rng, 1)
        if live:
            self._sync_with(live[0])
        dead = [n for n, m in self._members.items() if m.state is MemberState.DEAD]
        if dead:
            # Serf-style reconnect: the only way two halves of a healed
            # partition learn about each other without an outside introduction.
            self._send_push_pull(self._rng.choice(dead), (), 0)

    # ------------------------------------------------------- digest sync

    def _busy(self, now: float) -> None:
        """The membership changed: sync every busy_sync_interval for a while."""
        every = self.config.busy_sync_interval
        self._busy_until = now + 10 * every
        if self._next_sync == float("inf"):
            self._next_sync = now + every * (0.25 + 0.5 * self._rng.random())

    def _fingerprints(self, seed: int) -> bytes:
        """Bytes ``2w, 2w+1`` (w = seed % 4) of every entry's BLAKE2b-64,
        concatenated: a fresh window per sync makes false matches (~N/65536)
        independent from one sync to the next."""
        if self._dirty[0]:
            self._dirty[0] = False
            self._digests.clear()
            self._digest_members = list(self._members.values())
        w = seed % 4
        fps = self._digests.get(w)
        if fps is None:
            blob = b"".join([m.h8() for m in self._digest_members])
            ba = bytearray(2 * len(self._digest_members))
            ba[0::2] = blob[2 * w::8]
            ba[1::2] = blob[2 * w + 1::8]
            fps = self._digests[w] = bytes(ba)
        return fps

    def _digest(self) -> tuple[int, bytes]:
        seed = self._rng.randrange(4)
        return seed, self._fingerprints(seed)

    def _sync_with(self, to: str) -> None:
        """Anti-entropy with one peer: full state to a version-1 peer (it
        ignores SYNC), else our digest (its reply carries what we lack and
        its own digest, which we answer with what it lacks)."""
        m = self._members.get(to)
        if m is not None and m.wire_version == 1 or len(self._members) > wire.MAX_SYNC_FPS:
            self._send_push_pull(to, (), 0)
            return
        self.stats["syncs"] += 1
        seed, fps = self._digest()
        self._send(to, [wire.encode_message(wire.Sync(0, seed, fps))])

    def _on_sync(self, sender: str, s: wire.Sync) -> None:
        # Both sides in the same byte order: native 16-bit compare is fine.
        theirs = array("H")
        theirs.frombytes(s.fps)
        mine = array("H")
        mine.frombytes(self._fingerprints(s.seed))
        missing = set(mine).difference(theirs)
        lack = [self._digest_members[i] for i, f in enumerate(mine)
                if f in missing] if missing else []
        if not s.reply:
            my_seed, fps = self._digest()
            self._send(sender, [wire.encode_message(wire.Sync(wire.SYNC_REPLY, my_seed, fps))])
        if lack:
            self._send_entries(sender, (), wire.PP_REPLY, lack, with_records=True)

    def _send_batched(self, to: str, msgs: list[bytes]) -> None:
        budget = self.config.max_message_bytes - wire.FRAME_OVERHEAD
        batch: list[bytes] = []
        used = 0
        for m in msgs:
            if batch and used + len(m) > budget:
                self._send(to, batch)
                batch, used = [], 0
            batch.append(m)
            used += len(m)
        if batch:
            self._send(to, batch)

    # -------------------------------------------------------------- probes

    def _pick_target(self) -> str | None:
        for _ in range(2):
            while self._probe_idx < len(self._probe_list):
                node = self._probe_list[self._probe_idx]
                self._probe_idx += 1
                m = self._members.get(node)
                if m is not None and m.state in (MemberState.ALIVE, MemberState.SUSPECT):
                    return node
            self._probe_list = [n for n in self._live]
            self._rng.shuffle(self._probe_list)
            self._probe_idx = 0
        return None

    def _start_probe(self, now: float, end_at: float) -> None:
        target = self._pick_target()
        if target is None:
            return
        self._probe = self._launch_probe(target, now, end_at)

    def _in_flight(self) -> list[_Probe]:
        """The scheduled probe and the hinted one, those that are running."""
        return [p for p in (self._probe, self._urgent) if p is not None]

    def _launch_probe(self, target: str, now: float, end_at: float) -> _Probe:
        seq = self._next_seq()
        probe = _Probe(target, seq, now + self.config.probe_timeout, end_at)
        self.stats["probes"] += 1
        msgs = [wire.encode_message(wire.Ping(seq, target))]
        m = self._members[target]
        if m.state is MemberState.SUSPECT:
            # memberlist: tell a suspect it is suspected, so it can refute even
            # if the gossip about it ran out while it was unreachable.
            msgs.append(wire.encode_message(wire.Suspect(target, m.incarnation, self.node_id)))
        self._send(target, msgs, piggyback=True)
        return probe

    def _send_indirect(self, p: _Probe) -> None:
        p.indirect_sent = True
        peers = self._live.sample(self._rng, self.config.indirect_checks,
                                  exclude=frozenset((p.target,)))
        m = self._members.get(p.target)
        if not peers or m is None:
            return
        self.stats["indirect_probes"] += 1
        p.expected_nacks = len(peers)
        msg = wire.encode_message(wire.PingReq(p.seq, p.target, m.addrs, True))
        for peer in peers:
            self._send(peer, [msg])

    def _finish_probe(self, p: _Probe, now: float) -> None:
        if self._probe is p:
            self._probe = None
        if self._urgent is p:
            self._urgent = None
        if p.acked:
            return
        if p.expected_nacks > 0:
            self._awareness.apply(max(0, p.expected_nacks - p.nacks))
        else:
            self._awareness.apply(1)
        self.stats["probe_failures"] += 1
        m = self._members.get(p.target)
        if m is not None and m.state in (MemberState.ALIVE, MemberState.SUSPECT):
            # On a suspect this is an independent confirmation (memberlist
            # probeNode -> suspectNode): it shortens the Lifeguard timeout.
            self._on_suspect(wire.Suspect(p.target, m.incarnation, self.node_id), now)

    # ------------------------------------------------------------ handlers

    def _handle(self, sender: str, msg: wire.Message, now: float) -> None:
        if isinstance(msg, wire.Ping):
            if msg.target != self.node_id:
                self.stats["dropped_misdirected"] += 1
                return
            self._send(sender, [wire.encode_message(wire.Ack(msg.seq))], piggyback=True)
        elif isinstance(msg, wire.Ack):
            for p in self._in_flight():
                if msg.seq == p.seq:
                    p.acked = True
                    self._awareness.apply(-1)
                    return
            r = self._relays.pop(msg.seq, None)
            if r is not None:
                self._send(r.requester, [wire.encode_message(wire.Ack(r.seq))])
        elif isinstance(msg, wire.Nack):
            for p in self._in_flight():
                if msg.seq == p.seq:
                    p.nacks += 1
        elif isinstance(msg, wire.PingReq):
            if msg.target == self.node_id:
                self._send(sender, [wire.encode_message(wire.Ack(msg.seq))])
                return
            seq = self._next_seq()
            self._relays[seq] = _Relay(sender, msg.seq, now + relay_timeout(self.config),
                                       msg.nack)
            self.stats["relayed_pings"] += 1
            addrs = msg.addrs or self._addrs_of(msg.target)
            self._send(msg.target, [wire.encode_message(wire.Ping(seq, msg.target))],
                       addrs=addrs)
        elif isinstance(msg, wire.Alive):
            self._on_alive(msg, now)
        elif isinstance(msg, wire.Suspect):
            self._on_suspect(msg, now)
        elif isinstance(msg, wire.Dead):
            self._on_dead(msg, now)
        elif isinstance(msg, wire.Left):
            self._on_dead(wire.Dead(msg.node, msg.inc, msg.node), now)
        elif isinstance(msg, wire.Record):
            self._on_record(sender, msg, now)
        elif isinstance(msg, wire.RecordDelta):
            self._on_delta(sender, msg, now)
        elif isinstance(msg, wire.RecordReq):
            self._on_record_req(sender, msg)
        elif isinstance(msg, wire.PushPull):
            self._on_push_pull(sender, msg, now)
        elif isinstance(msg, wire.User):
            self._on_user(msg, now)
        elif isinstance(msg, wire.Sync):
            self._on_sync(sender, msg)

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

    # ------------------------------------------------------------- records

    def _bump_own_record(self, seen_version: int, force: bool = False) -> None:
        """Someone holds a record of ours at least as new as ours: an earlier
        instance of this node.  Jump above it and re-gossip the full record."""
        me = self._me
        if seen_version <= me.record_version and not force:
            return
        me.record_version = max(seen_version, me.record_version) + 1
        me.changed()
        self._rec_sent = {}
        self._rec_sent_version = 0
        self._rec_pending = True

    def _broadcast_record(self, now: float) -> None:
        me = self._me
        self._rec_pending = False
        cur = dict(me.record)
        full = wire.encode_message(wire.Record(me.node_id, me.record_version, cur, True))
        data = full
        meta: wire.Record | wire.RecordDelta = wire.Record(
            me.node_id, me.record_version, cur, True)
        if self._rec_sent_version:
            set_, unset = rec.delta(self._rec_sent, cur)
            d = wire.RecordDelta(me.node_id, me.record_version, self._rec_sent_version, set_,
                                 unset)
            ddata = wire.encode_message(d)
            if len(ddata) < len(full):
                data, meta = ddata, d
        self._queue_record(me.node_id, data, meta)
        self._rec_sent = cur
        self._rec_sent_version = me.record_version
        interval = rec.min_record_interval(len(self._members), len(data),
                                           self.config.retransmit_mult,
                                           self.config.record_budget_bytes_per_s)
        self._rec_next_at = now + interval

    def _queue_record(self, node: str, data: bytes,
                      meta: wire.Record | wire.RecordDelta) -> None:
        key = ("r", node)
        old = self._rqueue.meta(key)
        if isinstance(meta, wire.RecordDelta) and old is not None and old.version == meta.base:
            # Compose with the queued, not yet fully spread, older update so
            # that receivers who missed it can still apply this one.
            if isinstance(old, wire.Record):
                full = rec.apply_delta(old.record, meta.set, meta.unset)
                meta = wire.Record(node, meta.version, full, True)
            else:
                set_, unset = rec.compose((old.set, old.unset), (meta.set, meta.unset))
                meta = wire.RecordDelta(node, meta.version, old.base, set_, unset)
            data = wire.encode_message(meta)
        self._rqueue.put(key, data, meta)

    def _on_record(self, sender: str, r: wire.Record, now: float) -> None:
        if r.node == self.node_id:
            # Same version but other content: a past life of this node.
            same = r.version == self._me.record_version
            self._bump_own_record(r.version, force=same and dict(r.record) != dict(self._me.record))
            return
        m = self._members.get(r.node)
        if m is None or r.version <= m.record_version:
            return
        m.record = MappingProxyType(dict(r.record))
        m.record_version = r.version
        m.changed()
        self.stats["records_applied"] += 1
        self._pulling.pop(r.node, None)
        if r.relay:
            self._queue_record(r.node, wire.encode_message(r), r)

    def _on_delta(self, sender: str, d: wire.RecordDelta, now: float) -> None:
        if d.node == self.node_id:
            self._bump_own_record(d.version)
            return
        m = self._members.get(d.node)
        if m is None or d.version <= m.record_version:
            return
        if m.record_version != d.base:
            last = self._pulling.get(d.node)
            if last is None or now - last >= self.config.probe_interval:
                self._pulling[d.node] = now
                self.stats["record_pulls"] += 1
                self._send(sender, [wire.encode_message(
                    wire.RecordReq(((d.node, m.record_version),)))])
            return
        m.record = MappingProxyType(rec.apply_delta(m.record, d.set, d.unset))
        m.record_version = d.version
        m.changed()
        self.stats["records_applied"] += 1
        self._queue_record(d.node, wire.encode_message(d), d)

    @staticmethod
    def _record_reply(m: _Member) -> bytes:
        """``m``'s record as a pull reply (RECORD, relay=false)."""
        return wire.encode_message(wire.Record(m.node_id, m.record_version, dict(m.record), False))

    def _on_record_req(self, sender: str, req: wire.RecordReq) -> None:
        out = []
        for node, have in req.wants:
            m = self._members.get(node)
            if m is not None and m.record_version > have:
                out.append(self._record_reply(m))
        if out:
            self.stats["record_bytes_out"] += sum(len(m) for m in out)
            self._send_batched(sender, out)

    # ---------------------------------------------------------- push-pull

    def _on_push_pull(self, sender: str, pp: wire.PushPull, now: float) -> None:
        wants: list[tuple[str, int]] = []
        if pp.reply and self._joins:
            self._joins.pop(sender, None)
            for key in [k for k, j in self._joins.items() if not j[0]]:
                del self._joins[key]  # an address-only join: any reply will do
        for e in pp.states:
            if e.node == self.node_id:
                if e.state is not wire.WireState.ALIVE:
                    # Told we are suspect/dead/left: refute (a restart lands here).
                    self._on_suspect(wire.Suspect(e.node, e.inc, sender), now)
                else:
                    self._on_alive(wire.Alive(e.node, e.inc, e.name, e.addrs), now)
                # The first time a peer tells us our record version, equal
                # counts too: a restarted node starts again at version 1.
                self._bump_own_record(e.record_version, force=not self._rec_synced
                                      and e.record_version == self._me.record_version
                                      and e.record_version > 0)
                self._rec_synced = True
                continue
            if e.state is wire.WireState.ALIVE:
                m = self._members.get(e.node)
                if m is not None and m.state is MemberState.DEAD and e.inc == m.incarnation:
                    # The peer sees it alive, we hold it dead at the same
                    # incarnation (a healed partition): tell the node directly
                    # so that it refutes and its new alive reaches everyone.
                    self._send(e.node, [wire.encode_message(
                        wire.Suspect(e.node, e.inc, self.node_id))])
                # Third-party alive state from a push-pull is anti-entropy,
                # not news: gossiping it would make every join cost every
                # node N broadcasts.  The peer's own entry is news (a join).
                self._on_alive(wire.Alive(e.node, e.inc, e.name, e.addrs), now,
                               relay=pp.join and e.node == sender)
            elif e.state is wire.WireState.LEFT:
                self._on_dead(wire.Dead(e.node, e.inc, e.node), now)
            else:
                # memberlist: a remote "dead" is only a suspicion here.
                self._on_suspect(wire.Suspect(e.node, e.inc, sender), now)
            m = self._members.get(e.node)
            if m is not None and e.record_version > m.record_version and not pp.records:
                wants.append((e.node, m.record_version))
        if not pp.reply and pp.last:
            self._send_push_pull(sender, (), wire.PP_REPLY)
        if wants:
            per = 64
            for i in range(0, len(wants), per):
                self._send(sender, [wire.encode_message(wire.RecordReq(tuple(wants[i:i + per])))])
            self.stats["record_pulls"] += len(wants)

    # --------------------------------------------------------------- user

    def _on_user(self, u: wire.User, now: float) -> None:
        if u.msg_id in self._user_seen:
            return
        self._user_seen[u.msg_id] = now + self.config.user_seen_ttl
        if u.origin == self.node_id:
            return
        self.stats["user_in"] += 1
        self._actions.append(UserMessage(u.origin, u.key, u.payload))
        self._queue_user(("u", u.origin, u.key), wire.encode_message(u), u.lazy)

    # -------------------------------------------------------- housekeeping

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
