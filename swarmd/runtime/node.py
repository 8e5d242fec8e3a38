"""The node's trio shell: clocks, sockets and logs around the sans-IO node machine.

Theory of operation
-------------------
Every decision lives in :class:`swarmd.core.node.NodeMachine` (membership,
lease, this node's record, when load is worth gossiping, which seeds and dead
members to re-introduce).  This shell only carries out its outbox and feeds it:

* frames and lost connections from the transport (:class:`Transport`, the
  libp2p host in the daemon) -> ``machine.receive`` / ``hint_unreachable``;
* one driver task sleeps until ``machine.next_deadline()`` or until an input
  arrives, then calls ``machine.tick``;
* ``Send`` -> ``transport.send``; a member or coordinator change -> a log line
  and a new :class:`~swarmd.core.snapshot.Snapshot` in the box the HTTP side
  reads (also refreshed every second, for ages and load);
* side tasks: hardware load readings (``machine.offer_load``), seeds,
  Serf-style reconnects, mDNS discovery and signals.

The node knows nothing of the HTTP side: the composition root
(:mod:`swarmd.runtime.assembly`) builds both and hands the asyncio thread
the box's reader and the few trio-side calls it may make (through the bridge).
All methods here run in the trio thread.

Shutdown: SIGTERM/SIGINT or ``swarmctl leave`` -> :meth:`request_stop` ->
gossip ``left`` for a grace period so peers record a leave, not a failure.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import trio

from swarmd.config import Config, membership_config
from swarmd.core.addrs import parse_seed
from swarmd.core.lease import LeaseConfig
from swarmd.core.membership import MemberChanged, MemberState, Send
from swarmd.core.node import CoordinatorChanged, NodeMachine, TableChanged
from swarmd.core.record import self_record
from swarmd.core.replica import Entry
from swarmd.core.snapshot import Snapshot, SnapshotBox
from swarmd.core.tables import swarm_tables
from swarmd.hw import capabilities as hw_caps
from swarmd.hw import load as hw_load
from swarmd.log import kv
from swarmd.runtime.table_store import SAVE_DELAY, TableStore

log = logging.getLogger("swarmd.node")

#: Tables whose local writes are saved with peers' changes (SAVE_DELAY), not at once.
DELAYED_SAVE = frozenset({"usage", "escrow"})
#: Seconds between snapshot refreshes when nothing changed (ages, load).
SNAPSHOT_INTERVAL = 1.0
#: Mean seconds between reconnect attempts to one dead member.
RECONNECT_INTERVAL = 5.0


class Transport(Protocol):
    """What the node needs of the libp2p host (:class:`swarmd.runtime.p2p.P2PNode`)."""

    stats: dict[str, int]

    def addrs(self) -> list[str]: ...

    def send(self, peer_id: str, addrs: Sequence[str], frame: bytes) -> None: ...

    def send_unknown(self, addrs: Sequence[str], frame: bytes) -> None: ...

    def disconnect(self, peer_id: str) -> None: ...

    def resolved_peer(self, addrs: Sequence[str]) -> str | None: ...


def empty_snapshot(cfg: Config, node_id: str) -> Snapshot:
    """What the box holds before the node has started."""
    return Snapshot(node_id=node_id, name=cfg.node.name, addrs=(), coordinator=None,
                    nodes=(), joined=False)


class Node:
    def __init__(self, cfg: Config, node_id: str, secret: bytes, transport: Transport,
                 box: SnapshotBox) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.secret = secret
        self.transport = transport
        self.box = box
        self.started_wall = time.time()
        self.machine: NodeMachine | None = None
        self._wake = trio.Event()
        self._stop = trio.Event()
        self.table_store = TableStore(cfg.node.data_dir / "tables")
        self._dirty: set[str] = set()
        self._dirty_local = False
        self._save_wake = trio.Event()

    # -- inputs (trio thread) -------------------------------------------------

    def request_stop(self) -> None:
        """Leave the swarm and stop (trio thread; the HTTP side calls it through the bridge)."""
        self._stop.set()

    def update_record(self, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` into our gossiped record (trio thread; see request_stop)."""
        if self.machine is not None:
            self.machine.update_record(dict(changes), self._now())
            self._after_input()

    async def write_table(self, table: str, key: str, value: Any) -> Entry:
        """Write an entry of a replicated table (trio thread; the API side calls it
        through the bridge).  Returns the entry as stored (a revoked key stays revoked)."""
        assert self.machine is not None
        e = self.machine.write_table(table, key, value, self._now())
        self._after_input()
        return e

    def write_table_many(self, table: str, items: list[tuple[str, Any]]) -> None:
        """Write several entries as one delta (trio thread; counters flushed together)."""
        if self.machine is not None:
            self.machine.write_table_many(table, items, self._now())
            self._after_input()

    def on_frame(self, sender: str, frame: bytes) -> None:
        if self.machine is None:
            return
        self.machine.receive(sender, frame, self._now())
        self._after_input()

    def on_peer_lost(self, peer_id: str) -> None:
        if self.machine is None or self._stop.is_set():
            return
        self.machine.hint_unreachable(peer_id, self._now())
        self._after_input()

    # -- carrying out the machine's actions -------------------------------------

    def _now(self) -> float:
        return trio.current_time()

    def _after_input(self) -> None:
        self._flush()
        self._wake.set()

    def _flush(self) -> None:
        assert self.machine is not None
        changed = False
        for action in self.machine.drain():
            if isinstance(action, Send):
                if action.to:
                    self.transport.send(action.to, action.addrs, action.payload)
                else:
                    self.transport.send_unknown(action.addrs, action.payload)
            elif isinstance(action, MemberChanged):
                changed = True
                log.info("member %s", action.new.value,
                         extra=kv(node=action.view.name, id=action.node_id[-8:],
                                  was=action.old.value if action.old else None,
                                  inc=action.view.incarnation))
                if action.new in (MemberState.DEAD, MemberState.LEFT):
                    self.transport.disconnect(action.node_id)
            elif isinstance(action, TableChanged):
                changed = True
                self._dirty.add(action.table)
                # Our own writes are saved at once, except counters (usage,
                # escrow): those are rebuilt from the usage records at start
                # and refreshed from peers before budgets are spent again
                # ([limits] startup_hold), so a second's delay loses nothing.
                self._dirty_local = self._dirty_local or (
                    action.local and action.table not in DELAYED_SAVE)
                self._save_wake.set()
            elif isinstance(action, CoordinatorChanged):
                changed = True
                cur, before = action.after, action.before
                log.info("coordinator %s", "acquired" if action.is_holder else "changed",
                         extra=kv(holder=cur[0][-8:] if cur else None,
                                  epoch=cur[1] if cur else None,
                                  previous=before[0][-8:] if before else None))
        if changed:
            self._publish()

    def _tick(self) -> None:
        assert self.machine is not None
        self.machine.tick(self._now())
        self._flush()

    def _publish(self) -> None:
        if self.machine is None:
            return
        p2p = self.cfg.p2p
        self.box.put(self.machine.snapshot(
            self._now(), addrs=self.transport.addrs(),
            alone_ok=not (p2p.seeds or p2p.mdns),
            stats={f"p2p_{k}": v for k, v in self.transport.stats.items()}))

    # -- tasks --------------------------------------------------------------------

    async def start(self) -> None:
        """Build the machine with this node's record (call once the transport listens)."""
        now = self._now()
        addrs = self.transport.addrs()
        caps = await trio.to_thread.run_sync(hw_caps, self.cfg.node.data_dir)
        lc = self.cfg.lease
        self.machine = NodeMachine(
            node_id=self.node_id,
            name=self.cfg.node.name,
            addrs=addrs,
            membership=membership_config(self.cfg),
            lease=LeaseConfig(duration=lc.duration, renew_deadline=lc.renew_deadline,
                              retry_period=lc.retry_period),
            now=now,
            rng=random.Random(),
            record=self_record(name=self.cfg.node.name, addrs=addrs,
                               started=self.started_wall, api=self.cfg.api.listen, caps=caps),
            load_heartbeat=self.cfg.membership.load_heartbeat,
            tables=swarm_tables(),
            wall_offset=time.time() - now,
        )
        for name in self.machine.replicas.tables:
            raw = await trio.to_thread.run_sync(self.table_store.load, name)
            if raw:
                n = self.machine.load_table(name, raw, self._now())
                log.info("table loaded", extra=kv(table=name, entries=n))
        self._flush()
        self._dirty.clear()  # what was just loaded is on disk already
        self._dirty_local = False
        self._publish()

    async def run(self) -> None:
        """Drive the machine until asked to stop, then leave gracefully and return."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drive)
            nursery.start_soon(self._refresh)
            nursery.start_soon(self._seeds)
            nursery.start_soon(self._signals)
            nursery.start_soon(self._reconnect)
            nursery.start_soon(self._saver)
            if self.cfg.p2p.mdns:
                nursery.start_soon(self._discovery)
            await self._stop.wait()
            _arm_stop_watchdog(self.cfg.node.stop_timeout)
            await self._leave()
            nursery.cancel_scope.cancel()
        await self._save_tables()

    async def _drive(self) -> None:
        assert self.machine is not None
        while True:
            self._tick()
            deadline = self.machine.next_deadline()
            self._wake = trio.Event()
            with trio.move_on_at(max(deadline, self._now() + 0.001)):
                await self._wake.wait()

    async def _save_tables(self) -> None:
        if self.machine is None or not self._dirty:
            return
        names, self._dirty = set(self._dirty), set()
        self._dirty_local = False
        tables = {n: self.machine.table(n) for n in names}
        await trio.to_thread.run_sync(self.table_store.save_all, tables, names)

    async def _saver(self) -> None:
        """Persist changed tables: our own changes at once, peers' at most every SAVE_DELAY."""
        while True:
            await self._save_wake.wait()
            self._save_wake = trio.Event()
            if not self._dirty_local:
                await trio.sleep(SAVE_DELAY)
            await self._save_tables()

    async def _refresh(self) -> None:
        """Publish snapshots for ages, and offer our load to the machine."""
        assert self.machine is not None
        next_load = 0.0
        while True:
            now = self._now()
            self.machine.wall_offset = time.time() - now
            if now >= next_load:
                load = await trio.to_thread.run_sync(hw_load)
                if self.machine.offer_load(load, self._now()):
                    self._after_input()
                next_load = now + self.cfg.membership.load_interval
            self._publish()
            await trio.sleep(SNAPSHOT_INTERVAL)

    async def _seeds(self) -> None:
        seeds = [parse_seed(s) for s in self.cfg.p2p.seeds]
        if not seeds:
            return
        while True:
            assert self.machine is not None
            alive = self.machine.join_seeds(seeds, self.transport.resolved_peer, self._now())
            self._after_input()
            # Keep trying seeds that are not members; once one is, push-pull
            # and gossip take over, so a slower pace is enough.
            wait = self.cfg.p2p.seed_retry_interval
            if alive > 1:
                wait *= 6
            await trio.sleep(wait)

    async def _reconnect(self) -> None:
        """Now and then, push-pull with a dead member (NodeMachine.reconnect_one)."""
        rng = random.Random()
        while True:
            await trio.sleep(RECONNECT_INTERVAL * (0.5 + rng.random()))
            assert self.machine is not None
            if self.machine.reconnect_one(rng, self._now()) is not None:
                self._after_input()

    async def _discovery(self) -> None:
        from swarmd.runtime.discovery import MdnsDiscovery

        def found(peer_id: str, addrs: tuple[str, ...]) -> None:
            if self.machine is not None and self.machine.discovered(peer_id, addrs,
                                                                    self._now()):
                self._after_input()

        disc = MdnsDiscovery(
            peer_id=self.node_id,
            addrs=self.transport.addrs(),
            secret=self.secret,
            interfaces=list(self.cfg.p2p.mdns_interfaces),
            on_found=found,
        )
        await disc.run()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
            async for sig in sigs:
                log.info("signal received, leaving", extra=kv(signal=signal.Signals(sig).name))
                self._stop.set()
                return

    async def _leave(self) -> None:
        assert self.machine is not None
        self.machine.leave(self._now())
        self._after_input()
        # Give gossip a few rounds to carry the leave (peers see `left`).
        with trio.move_on_after(self.machine.leave_grace):
            while True:
                self._tick()
                await trio.sleep(0.05)
        log.info("left the swarm")


def _arm_stop_watchdog(seconds: float) -> None:
    """Exit the process if a graceful stop has not finished in ``seconds``.

    Defence in depth: a stop that hangs (a library task that ignores
    cancellation, an engine session that never closes) must not leave a
    daemon that ignores SIGTERM.
    """

    def _expire() -> None:
        log.error("graceful stop took longer than node.stop_timeout; exiting",
                  extra=kv(stop_timeout=seconds))
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, _expire)
    timer.daemon = True
    timer.start()
