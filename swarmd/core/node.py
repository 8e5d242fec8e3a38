"""The node machine: one sans-IO object holding everything a node decides.

Theory of operation
-------------------
:class:`NodeMachine` owns this node's :class:`~swarmd.core.membership.Membership`
(SWIM + Lifeguard), its :class:`~swarmd.core.lease.CoordinatorLease`, this
node's gossiped record, and the rules that glue them (lease claims ride on
membership user messages, :mod:`swarmd.core.lease_gossip`; when a load reading
is worth gossiping, :mod:`swarmd.core.load_change`; which seeds and dead
members to re-introduce).  It never reads a clock and never does I/O:

* inputs: :meth:`receive` (a frame from a peer), :meth:`tick` (time passed),
  :meth:`hint_unreachable`, :meth:`introduce`, :meth:`update_record`,
  :meth:`offer_load`, :meth:`leave`, each with ``now``;
* outputs: :meth:`drain` hands back the outbox -- :class:`Send` (put these
  bytes on the wire), :class:`MemberChanged`, :class:`UserMessage` (every user
  message, lease claims included, after the machine consumed the lease's) and
  :class:`CoordinatorChanged`; :meth:`next_deadline` says when to call
  :meth:`tick` next; :meth:`snapshot` builds the immutable picture the HTTP
  side reads.

The daemon (:mod:`swarmd.runtime.node`, a trio shell: sockets, timers,
logging) and the simulator (``swarmd/testing/simnet.py``, a virtual clock and a
lossy network) both drive this one class, so a simulated swarm runs exactly
the daemon's rules.  A new replicated table (model inventories, placements,
budget shares...) plugs in here: its state next to the lease, its rules in a
``core`` module, its messages as another user-message key routed in
:meth:`_collect`, its view in :meth:`snapshot`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from swarmd.core import load_change
from swarmd.core.hlc import Hlc
from swarmd.core.lease import CoordinatorLease, LeaseConfig
from swarmd.core.lease_gossip import deliver_claim, tick_lease
from swarmd.core.membership import (
    MemberChanged,
    Membership,
    MembershipConfig,
    MemberState,
    Send,
    UserMessage,
)
from swarmd.core.replica import (
    TABLE_USER_KEY,
    Broadcast,
    Changed,
    Direct,
    Entry,
    Replicas,
    TableSpec,
)
from swarmd.core.snapshot import NodeInfo, Snapshot

__all__ = ["Action", "CoordinatorChanged", "NodeMachine", "MemberChanged", "Send",
           "TableChanged", "UserMessage"]

#: Record key holding this node's digest of each replicated table.
TABLES_KEY = "tables"


@dataclass(frozen=True)
class CoordinatorChanged:
    """The lease's view changed: ``before``/``after`` are ``(holder, epoch)`` or None."""

    before: tuple[str, int] | None
    after: tuple[str, int] | None
    is_holder: bool


@dataclass(frozen=True)
class TableChanged:
    """Entries of replicated table ``table`` changed here.

    ``local``: written by this node (or loaded from its disk) rather than
    learnt from a peer.  The shell persists them and refreshes its views.
    """

    table: str
    entries: tuple[Entry, ...]
    local: bool


Action = Send | MemberChanged | UserMessage | CoordinatorChanged | TableChanged


class NodeMachine:
    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        addrs: Sequence[str],
        membership: MembershipConfig,
        lease: LeaseConfig | None,
        now: float,
        rng: random.Random,
        record: Mapping[str, Any] | None = None,
        load_heartbeat: float = math.inf,
        tables: Sequence[TableSpec] = (),
        wall_offset: float = 0.0,
        table_sync_interval: float = 3.0,
    ) -> None:
        self.node_id = node_id
        self.name = name
        self.record: dict[str, Any] = dict(record or {})
        self.membership = Membership(node_id=node_id, name=name, addrs=list(addrs),
                                     config=membership, now=now, rng=rng,
                                     record=dict(self.record) if record is not None else None)
        self.lease = CoordinatorLease(node_id, lease, now) if lease is not None else None
        #: Seconds after which a load reading is gossiped even if unchanged.
        self.load_heartbeat = load_heartbeat
        self._outbox: list[Action] = []
        self._load_sent: Mapping[str, Any] | None = None
        self._load_sent_at = 0.0
        self._snap_seq = 0
        self._rng = rng
        #: Wall-clock seconds minus ``now`` (the shell keeps it current); the
        #: replicated tables' hybrid logical clock reads wall time through it.
        self.wall_offset = wall_offset
        self.replicas = Replicas(node_id, tables, Hlc(node_id), table_sync_interval)
        self._views: dict[str, Mapping[str, Entry]] = {}
        if tables:
            self.record[TABLES_KEY] = self.replicas.digests()
            self.membership.set_record(dict(self.record), now)

    # -- inputs -----------------------------------------------------------

    def receive(self, sender: str, frame: bytes, now: float) -> None:
        self.membership.receive(sender, frame, now)
        self._collect(now)

    def tick(self, now: float) -> None:
        self.membership.tick(now)
        if self.lease is not None:
            before = self.lease.current()
            tick_lease(self.lease, self.membership, now)
            self._lease_moved(before)
        if self.replicas.tables:
            self.replicas.tick(now, self._peer_digests(), self._rng.choice, self._wall_ms(now))
            self._replica_actions(now)
        self._collect(now)

    def write_table(self, table: str, key: str, value: Any, now: float) -> Entry:
        """Write (``value=None``: delete) an entry of a replicated table and spread it."""
        e = self.replicas.write(table, key, value, self._wall_ms(now))
        self._replica_actions(now)
        self._collect(now)
        return e

    def write_table_many(self, table: str, items: Iterable[tuple[str, Any]],
                         now: float) -> None:
        """Write several entries of one table as a single delta."""
        self.replicas.write_many(table, items, self._wall_ms(now))
        self._replica_actions(now)
        self._collect(now)

    def load_table(self, table: str, raw_entries: Iterable[Any], now: float) -> int:
        """Merge entries this node persisted earlier (anti-entropy spreads them)."""
        n = self.replicas.load(table, raw_entries, self._wall_ms(now))
        self._replica_actions(now)
        self._collect(now)
        return n

    def table(self, name: str) -> Mapping[str, Entry]:
        """A read-only copy of a table's entries (tombstones included), cached until it changes."""
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = MappingProxyType(
                {e.key: e for e in self.replicas.tables[name].entries()})
        return view

    def hint_unreachable(self, peer_id: str, now: float) -> None:
        """The transport lost its connection to ``peer_id`` (probe it now)."""
        self.membership.hint_unreachable(peer_id, now)
        self._collect(now)

    def introduce(self, node_id: str | None, addrs: Sequence[str], now: float) -> None:
        self.membership.introduce(node_id, addrs, now)
        self._collect(now)

    def update_record(self, changes: Mapping[str, Any], now: float) -> None:
        """Merge ``changes`` into this node's gossiped record."""
        self.record.update(changes)
        self.membership.set_record(dict(self.record), now)
        self._collect(now)

    def offer_load(self, load: Mapping[str, Any], now: float) -> bool:
        """A fresh load reading; gossiped if it moved enough or the heartbeat is due."""
        sent = self._load_sent
        if (sent is not None and now - self._load_sent_at < self.load_heartbeat
                and not load_change.significant(sent, load)):
            return False
        self._load_sent, self._load_sent_at = dict(load), now
        self.update_record({"load": dict(load)}, now)
        return True

    def join_seeds(self, seeds: Iterable[tuple[Sequence[str], str | None]],
                   resolved: Callable[[Sequence[str]], str | None], now: float) -> int:
        """Introduce every seed that is not an alive member; returns alive members.

        A host:port seed's id is learnt on first contact (``resolved``); once
        that id is an alive member, re-joining through it would only make it
        send us the full state again.
        """
        known = self.alive_ids()
        for addrs, peer_id in seeds:
            pid = peer_id or resolved(addrs)
            if pid is None or pid not in known:
                self.membership.introduce(peer_id, addrs, now)
        self._collect(now)
        return len(known)

    def reconnect_one(self, rng: random.Random, now: float) -> str | None:
        """Serf-style reconnect: push-pull with one random dead member.

        SWIM never probes dead members, so two sides of a healed partition
        would stay apart until a seed or mDNS introduced them again; a dead
        member's addresses are known until it is reaped.
        """
        dead = [m for m in self.membership.members() if m.state is MemberState.DEAD]
        if not dead:
            return None
        m = rng.choice(dead)
        self.introduce(m.node_id, m.addrs, now)
        return m.node_id

    def discovered(self, peer_id: str, addrs: Sequence[str], now: float) -> bool:
        """Discovery (mDNS) found ``peer_id``: introduce it unless it is a live member."""
        if peer_id == self.node_id:
            return False
        m = self.membership.member(peer_id)
        if m is not None and m.state not in (MemberState.DEAD, MemberState.LEFT):
            return False
        self.introduce(peer_id, addrs, now)
        return True

    def leave(self, now: float) -> None:
        self.membership.leave(now)
        self._collect(now)

    # -- outputs ----------------------------------------------------------

    def drain(self) -> list[Action]:
        out, self._outbox = self._outbox, []
        return out

    def next_deadline(self) -> float:
        d = self.membership.next_deadline()
        if self.lease is not None:
            d = min(d, self.lease.next_deadline())
        if self.replicas.tables:
            d = min(d, self.replicas.next_deadline())
        return d

    @property
    def leave_grace(self) -> float:
        return float(self.membership.leave_grace)

    def alive_ids(self) -> set[str]:
        return {m.node_id for m in self.membership.members() if m.state is MemberState.ALIVE}

    def coordinator(self) -> tuple[str, int] | None:
        return self.lease.current() if self.lease is not None else None

    def snapshot(self, now: float, *, addrs: Sequence[str], alone_ok: bool,
                 stats: Mapping[str, int] | None = None) -> Snapshot:
        """The immutable picture of the swarm for readers on other threads.

        ``alone_ok``: running without seeds and discovery on purpose, so a
        single-member view already counts as joined.
        """
        nodes = [
            NodeInfo(
                node_id=m.node_id,
                name=m.name,
                state=m.state.value,
                addrs=tuple(m.addrs),
                incarnation=m.incarnation,
                state_since=max(0.0, now - m.state_since),
                record=m.record,
                record_version=m.record_version,
                is_self=m.node_id == self.node_id,
            )
            for m in self.membership.members()
        ]
        nodes.sort(key=lambda n: (not n.is_self, n.name, n.node_id))
        self._snap_seq += 1
        all_stats = {**(stats or {}),
                     **{f"membership_{k}": v for k, v in self.membership.stats.items()}}
        return Snapshot(
            node_id=self.node_id,
            name=self.name,
            addrs=tuple(addrs),
            coordinator=self.coordinator(),
            nodes=tuple(nodes),
            joined=len(nodes) > 1 or alone_ok,
            stats=all_stats,
            seq=self._snap_seq,
            health_score=self.membership.health,
            tables={name: self.table(name) for name in self.replicas.tables},
        )

    # -- internals --------------------------------------------------------

    def _lease_moved(self, before: tuple[str, int] | None) -> None:
        assert self.lease is not None
        after = self.lease.current()
        if after != before:
            self._outbox.append(CoordinatorChanged(before, after, self.lease.is_holder()))

    def _collect(self, now: float) -> None:
        """Move membership's actions to the outbox, consuming lease and table messages."""
        table_msgs = False
        for action in self.membership.drain():
            if isinstance(action, UserMessage):
                if action.key == TABLE_USER_KEY or action.key.startswith(TABLE_USER_KEY + ":"):
                    if self.replicas.tables:
                        self.replicas.receive(action.sender, action.payload, self._wall_ms(now))
                        table_msgs = True
                    continue
                if self.lease is not None:
                    before = self.lease.current()
                    if deliver_claim(self.lease, action, now):
                        self._lease_moved(before)
            self._outbox.append(action)
        if table_msgs:
            self._replica_actions(now)
            self._collect(now)

    def _wall_ms(self, now: float) -> int:
        return int((now + self.wall_offset) * 1000)

    def _peer_digests(self) -> dict[str, Mapping[str, Any]]:
        out: dict[str, Mapping[str, Any]] = {}
        for m in self.membership.members():
            if m.state is MemberState.ALIVE and m.node_id != self.node_id:
                d = m.record.get(TABLES_KEY)
                if isinstance(d, Mapping):
                    out[m.node_id] = d
        return out

    def _replica_actions(self, now: float) -> None:
        """Carry the tables' actions into membership and the outbox."""
        changed = False
        for a in self.replicas.drain():
            if isinstance(a, Broadcast):
                self.membership.broadcast(a.key, a.payload)
            elif isinstance(a, Direct):
                self.membership.send_user(a.to, TABLE_USER_KEY, a.payload)
            elif isinstance(a, Changed):
                changed = True
                self._views.pop(a.table, None)
                self._outbox.append(TableChanged(a.table, a.entries, a.local))
        if changed:
            digests = self.replicas.digests()
            if self.record.get(TABLES_KEY) != digests:
                self.record[TABLES_KEY] = digests
                self.membership.set_record(dict(self.record), now)
