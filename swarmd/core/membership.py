"""SWIM membership with Lifeguard, sans-IO (modelled on hashicorp/memberlist).

Theory of operation
-------------------
The caller feeds frames (:meth:`Membership.receive`) and time
(:meth:`Membership.tick` at :meth:`Membership.next_deadline`), and carries out
the actions from :meth:`Membership.drain`: ``Send`` (deliver best-effort),
``MemberChanged`` (a member's state changed) and ``UserMessage`` (a user
broadcast from another node, e.g. a lease claim).  Nothing here does I/O,
reads a clock or draws unseeded randomness.

Layout (memberlist-style, one concern per module, behind this facade):

* :mod:`swarmd.core.membership_types` -- states, views, actions;
* :mod:`swarmd.core.membership_state` -- the member table and the
  incarnation / suspect / dead / left rules;
* :mod:`swarmd.core.membership_detector` -- SWIM probes and Lifeguard;
* :mod:`swarmd.core.membership_sync` -- gossip, push-pull, digest sync and
  user messages;
* :mod:`swarmd.core.membership_records` -- record deltas and pulls;
* this module -- :class:`Membership`: the inputs (``receive``, ``tick``,
  ``introduce``, ``leave``), the frame dispatcher and the schedule.

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

from collections.abc import Sequence

from swarmd.core import wire
from swarmd.core.lifeguard import (
    push_pull_scale,
    relay_timeout,
    retransmit_limit,
)
from swarmd.core.membership_config import PROFILES, MembershipConfig
from swarmd.core.membership_detector import FailureDetector
from swarmd.core.membership_records import RecordExchange
from swarmd.core.membership_sync import Dissemination
from swarmd.core.membership_types import (
    Action,
    MemberChanged,
    MemberState,
    MemberView,
    Send,
    UserMessage,
    _Relay,
)

__all__ = [
    "PROFILES",
    "Action",
    "MemberChanged",
    "MemberState",
    "MemberView",
    "Membership",
    "MembershipConfig",
    "Send",
    "UserMessage",
]


class Membership(FailureDetector, Dissemination, RecordExchange):
    """SWIM + Lifeguard membership of one node (see the module docstring)."""

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

    def set_addrs(self, addrs: Sequence[str], now: float) -> None:
        me = self._me
        if tuple(addrs) == me.addrs:
            return
        me.addrs = tuple(addrs)
        me.incarnation += 1
        me.changed()
        self._queue_alive(me)

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
