"""Membership's dissemination: gossip rounds, push-pull, digest sync, user messages.

Theory of operation
-------------------
Dissemination.  State changes are queued in a transmit-limited broadcast
queue and piggybacked on probes and acks, and sent by a gossip round every
``gossip_interval`` to ``gossip_nodes`` random peers (each broadcast sent
``retransmit_mult * ceil(log10(N+1))`` times per node, newest first, one
packet of ``gossip_packet_bytes`` per peer per round).  A periodic full-state
push-pull with one random peer (and, Serf-style, with one dead member to
heal partitions) repairs whatever gossip lost; a join is a push-pull with a
seed (:meth:`Membership.introduce`).

Digest sync: while the membership is changing, nodes exchange fingerprints of
their member tables (windows of the entry hashes) with one random peer and
send each other only the entries that differ, so a burst of joins spreads
without O(N^2) full-state transfers.

User messages.  :meth:`Membership.broadcast` gossips an opaque payload to
every node (epidemic re-broadcast, duplicates dropped by message id); other
nodes get it from drain() as :class:`UserMessage`.  A newer broadcast with
the same key replaces an older one still queued.
"""

from __future__ import annotations

from array import array

from swarmd.core import wire
from swarmd.core.membership_state import MembershipState
from swarmd.core.membership_types import (
    MemberState,
    UserMessage,
    _Member,
)


class Dissemination(MembershipState):
    """Getting news to every member."""

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

    def send_user(self, to: str, key: str, payload: bytes) -> None:
        """Send a user message to member ``to`` alone: delivered, never relayed.

        For point-to-point exchanges that ride on membership's admitted,
        authenticated links (replicated-table sync).  Best effort, like
        every frame: the caller's protocol must tolerate loss.
        """
        msg_id = self._rng.getrandbits(63)
        data = wire.encode_message(
            wire.User(self.node_id, key, msg_id, bytes(payload), wire.USER_DIRECT))
        self.stats["user_direct_out"] += 1
        self._send(to, [data])

    def _queue_user(self, key: tuple[str, str, str], data: bytes, lazy: bool) -> None:
        put, drop = (self._lqueue, self._uqueue) if lazy else (self._uqueue, self._lqueue)
        drop.remove(key)
        put.put(key, data)

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

    def _on_user(self, u: wire.User, now: float) -> None:
        if u.msg_id in self._user_seen:
            return
        self._user_seen[u.msg_id] = now + self.config.user_seen_ttl
        if u.origin == self.node_id:
            return
        self.stats["user_in"] += 1
        self._actions.append(UserMessage(u.origin, u.key, u.payload))
        if u.flags & wire.USER_DIRECT:
            return
        self._queue_user(("u", u.origin, u.key), wire.encode_message(u), u.lazy)
