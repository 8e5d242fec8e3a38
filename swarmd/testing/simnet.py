"""Simulated network + virtual clock driving the daemon's sans-IO node machine.

Theory of operation
-------------------
Each simulated node is a :class:`swarmd.core.node.NodeMachine`, the same
object the daemon's trio shell (:mod:`swarmd.runtime.node`) drives, so the
simulator runs the daemon's membership, lease and record wiring, not a copy
of it (tests/unit/test_node_machine.py fails if the two stop sharing it).
One event heap holds two kinds of events: frame deliveries and node wake-ups
(at each machine's ``next_deadline``, the minimum of its membership and lease
deadlines).  :meth:`SimNet.run_until` pops events in time order, sets the
virtual clock, and feeds the node: ``receive`` for a delivery, ``tick`` for a
wake-up.  The actions a node drains are carried out at once: a ``Send``
becomes a delivery after ``delay + U(0, jitter)`` seconds unless the link
drops it (per-link loss probability, partitions, or a killed end).  Wake-up
entries are lazily invalidated: a node keeps its scheduled time and stale
heap entries are skipped, so rescheduling is O(log n).

Everything is deterministic for a given seed.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from swarmd.core.lease import CoordinatorLease, LeaseConfig
from swarmd.core.membership import (
    MemberChanged,
    Membership,
    MembershipConfig,
    MemberState,
    Send,
    UserMessage,
)
from swarmd.core.node import NodeMachine
from swarmd.core.replica import TableSpec

_DELIVER = 0
_WAKE = 1


class SimNode:
    def __init__(self, net: SimNet, node_id: str, machine: NodeMachine) -> None:
        self.net = net
        self.node_id = node_id
        self.machine = machine
        self.up = True
        self.sched = math.inf
        self.changes: list[MemberChanged] = []
        self.user: list[UserMessage] = []

    @property
    def m(self) -> Membership:
        return self.machine.membership

    @property
    def lease(self) -> CoordinatorLease | None:
        return self.machine.lease

    def deadline(self) -> float:
        return self.machine.next_deadline()

    def state_of(self, other: str) -> MemberState | None:
        v = self.m.member(other)
        return None if v is None else v.state


class SimNet:
    def __init__(self, seed: int = 0, *, delay: float = 0.002, jitter: float = 0.002,
                 loss: float = 0.0, keep_changes: bool = True) -> None:
        self.now = 0.0
        #: Wall-clock seconds at virtual time 0 (the tables' clocks read now + this).
        self.wall_offset = 1_800_000_000.0
        self.rng = random.Random(seed)
        self.delay = delay
        self.jitter = jitter
        self.loss = loss
        self.keep_changes = keep_changes
        self.nodes: dict[str, SimNode] = {}
        self.addr_of: dict[str, str] = {}  # addr -> node id
        self.link_loss: dict[frozenset[str], float] = {}
        self.group: dict[str, int] | None = None
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self.delivered = 0
        self.dropped = 0
        self.events = 0
        self.on_change: Callable[[SimNode, MemberChanged], None] | None = None

    # -- building ---------------------------------------------------------

    def add(self, node_id: str, config: MembershipConfig, *,
            record: Mapping[str, Any] | None = None,
            lease: LeaseConfig | None = None, name: str | None = None,
            addr: str | None = None, tables: Sequence[TableSpec] = ()) -> SimNode:
        addr = addr or f"/sim/{node_id}"
        machine = NodeMachine(node_id=node_id, name=name or node_id, addrs=[addr],
                              membership=config, lease=lease, now=self.now,
                              rng=random.Random(self.rng.getrandbits(64)), record=record,
                              tables=tables, wall_offset=self.wall_offset)
        node = SimNode(self, node_id, machine)
        self.nodes[node_id] = node
        self.addr_of[addr] = node_id
        self._after(node)
        return node

    def join(self, node_id: str, seed: str, *, by_addr: bool = False) -> None:
        node = self.nodes[node_id]
        addrs = list(self.nodes[seed].m.member(seed).addrs)  # type: ignore[union-attr]
        node.machine.introduce(None if by_addr else seed, addrs, self.now)
        self._after(node)

    def kill(self, node_id: str) -> None:
        """The node goes silent: no ticks, every frame to or from it is lost."""
        self.nodes[node_id].up = False

    def connection_lost(self, node_id: str, peer: str) -> None:
        """The transport tells ``node_id`` its connection to ``peer`` closed."""
        node = self.nodes[node_id]
        node.machine.hint_unreachable(peer, self.now)
        self._after(node)

    def restart(self, node_id: str, config: MembershipConfig, *,
                record: Mapping[str, Any] | None = None,
                lease: LeaseConfig | None = None,
                tables: Sequence[TableSpec] = ()) -> SimNode:
        """A fresh instance with the same id (incarnation 0, empty view)."""
        old = self.nodes.pop(node_id)
        old.up = False
        return self.add(node_id, config, record=record, lease=lease, tables=tables)

    def partition(self, *groups: Iterable[str]) -> None:
        self.group = {}
        for i, g in enumerate(groups):
            for n in g:
                self.group[n] = i

    def heal(self) -> None:
        self.group = None

    def set_link_loss(self, a: str, b: str, p: float) -> None:
        self.link_loss[frozenset((a, b))] = p

    # -- running ----------------------------------------------------------

    def _push(self, t: float, kind: int, data: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, data))

    def _after(self, node: SimNode) -> None:
        """Carry out a node's actions and (re)schedule its wake-up."""
        for a in node.machine.drain():
            if isinstance(a, Send):
                self._route(node.node_id, a)
            elif isinstance(a, MemberChanged):
                if self.keep_changes:
                    node.changes.append(a)
                if self.on_change is not None:
                    self.on_change(node, a)
            elif isinstance(a, UserMessage):
                if self.keep_changes:
                    node.user.append(a)
        if not node.up:
            return
        d = node.deadline()
        if d <= self.now:
            d = self.now + 1e-6
        if d != node.sched:
            node.sched = d
            self._push(d, _WAKE, node)

    def _route(self, src: str, s: Send) -> None:
        dst = s.to or (self.addr_of.get(s.addrs[0], "") if s.addrs else "")
        if not dst:
            self.dropped += 1
            return
        if self.group is not None and self.group.get(src, -1) != self.group.get(dst, -2):
            self.dropped += 1
            return
        p = self.link_loss.get(frozenset((src, dst)), self.loss)
        if p and self.rng.random() < p:
            self.dropped += 1
            return
        t = self.now + self.delay + self.rng.random() * self.jitter
        self._push(t, _DELIVER, (src, dst, s.payload))

    def _wake(self, node: SimNode) -> None:
        node.sched = math.inf
        node.machine.tick(self.now)
        self._after(node)

    def step(self) -> bool:
        while self._heap:
            t, _, kind, data = heapq.heappop(self._heap)
            if kind == _WAKE:
                woken: SimNode = data
                if not woken.up or woken.sched != t or self.nodes.get(woken.node_id) is not woken:
                    continue
                self.now = t
                self.events += 1
                self._wake(woken)
                return True
            src, dst, payload = data
            node = self.nodes.get(dst)
            sender = self.nodes.get(src)
            if node is None or not node.up or sender is None or not sender.up:
                self.dropped += 1
                continue
            if self.group is not None and self.group.get(src, -1) != self.group.get(dst, -2):
                self.dropped += 1
                continue
            self.now = t
            self.events += 1
            self.delivered += 1
            node.machine.receive(src, payload, t)
            self._after(node)
            return True
        return False

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            if not self.step():
                break
        self.now = max(self.now, t)

    def run_for(self, d: float) -> None:
        self.run_until(self.now + d)

    def wait_for(self, pred: Callable[[], bool], timeout: float, every: float = 0.05) -> float:
        """Run until ``pred()`` holds (checked every ``every`` s); returns the
        virtual time it took, or raises AssertionError after ``timeout``."""
        start = self.now
        while not pred():
            if self.now - start >= timeout:
                raise AssertionError(f"condition not met within {timeout} s of virtual time")
            self.run_for(every)
        return self.now - start

    # -- views ------------------------------------------------------------

    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def all_see(self, target: str, state: MemberState,
                among: Iterable[str] | None = None) -> bool:
        ids = among if among is not None else [n.node_id for n in self.up_nodes()]
        return all(
            self.nodes[i].state_of(target) is state for i in ids if i != target
        )

    def converged(self, among: Iterable[str] | None = None) -> bool:
        """Every node in ``among`` (default: up nodes) sees all of them alive."""
        ids = list(among) if among is not None else [n.node_id for n in self.up_nodes()]
        n = len(ids)
        for i in ids:
            c = self.nodes[i].m.counts()
            if c[MemberState.ALIVE] < n:
                return False
            for j in ids:
                if self.nodes[i].state_of(j) is not MemberState.ALIVE:
                    return False
        return True
