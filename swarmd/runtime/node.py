"""The node: wires the sans-IO core to libp2p, discovery, and the HTTP side.

Theory of operation
-------------------
The main thread runs trio.  It owns the libp2p host (:class:`P2PNode`), the
SWIM membership state machine and the coordinator lease, both sans-IO: the
node feeds them frames and the time, and carries out what they ask
(``Send`` -> ``P2PNode.send``; member changes -> log + new snapshot).  One
driver task sleeps until the earliest deadline of either machine or until a
frame arrives, then ticks them.

A second thread runs asyncio with aiohttp: the control API on the unix
socket, the OpenAI-compatible port and the engine manager
(:mod:`swarmd.runtime.http_side`).  It reads the swarm through
:class:`SnapshotBox` (no locks, no crossing) and calls into trio only for
rare commands (leave, record changes) and remote forwarding, through
:class:`swarmd.runtime.bridge.Bridge`.

Shutdown: SIGTERM/SIGINT or ``swarmctl leave`` -> gossip ``left`` for a grace
period so peers record a leave, not a failure -> stop the HTTP side -> close
the host.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import trio

from swarmd.config import Config, membership_config
from swarmd.core import load_change
from swarmd.core.lease import CoordinatorLease, LeaseConfig
from swarmd.core.lease_gossip import deliver_claim, tick_lease
from swarmd.core.membership import MemberChanged, Membership, MemberState, Send, UserMessage
from swarmd.hw import capabilities as hw_caps
from swarmd.hw import load as hw_load
from swarmd.identity import Identity, load_or_create_identity
from swarmd.log import kv
from swarmd.runtime.forward import PROTOCOL_ID
from swarmd.runtime.p2p import P2PNode, parse_seed
from swarmd.runtime.snapshot import NodeInfo, Snapshot, SnapshotBox
from swarmd.swarm_secret import load_secret

log = logging.getLogger("swarmd.node")

#: Seconds between snapshot refreshes when nothing changed (ages, load).
SNAPSHOT_INTERVAL = 1.0
#: Mean seconds between reconnect attempts to one dead member.
RECONNECT_INTERVAL = 5.0


class Node:
    def __init__(self, cfg: Config, identity: Identity, secret: bytes) -> None:
        self.cfg = cfg
        self.identity = identity
        self.secret = secret
        self.started_wall = time.time()
        self.p2p = P2PNode(
            identity=identity,
            listen=list(cfg.p2p.listen),
            secret=secret,
            on_frame=self._on_frame,
            on_lost=self._on_peer_lost,
        )
        self.membership: Membership | None = None
        self.lease: CoordinatorLease | None = None
        self._wake = trio.Event()
        self._stop = trio.Event()
        self._snap_seq = 0
        self._record: dict[str, Any] = {}
        self.box = SnapshotBox(
            Snapshot(
                node_id=identity.peer_id,
                name=cfg.node.name,
                addrs=(),
                coordinator=None,
                nodes=(),
                joined=False,
            )
        )
        self.trio_token: trio.lowlevel.TrioToken | None = None
        #: Set by the HTTP side once the API is up (swarmd.runtime.services).
        self.forward_server: Any = None
        self.p2p.set_handler(PROTOCOL_ID, self._on_forward_stream)

    async def _on_forward_stream(self, peer_id: str, stream: Any) -> None:
        server = self.forward_server
        if server is None:  # API not up yet (start-up) or shutting down
            await stream.reset()
            return
        await server.handle(peer_id, stream)

    # -- thread-safe entry points (called from the asyncio side) -------------

    def request_stop(self) -> None:
        """Ask the node to leave and exit; safe from any thread."""
        if self.trio_token is not None:
            self.trio_token.run_sync_soon(self._stop.set)

    def update_record(self, changes: Mapping[str, Any]) -> None:
        """Merge ``changes`` into our gossiped record; safe from any thread."""
        if self.trio_token is not None:
            self.trio_token.run_sync_soon(self._apply_record, dict(changes))

    # -- trio side ------------------------------------------------------------

    def _now(self) -> float:
        return trio.current_time()

    def _apply_record(self, changes: dict[str, Any]) -> None:
        self._record.update(changes)
        if self.membership is not None:
            self.membership.set_record(dict(self._record), self._now())
            self._after_input()

    def _on_frame(self, sender: str, frame: bytes) -> None:
        if self.membership is None:
            return
        self.membership.receive(sender, frame, self._now())
        self._after_input()

    def _on_peer_lost(self, peer_id: str) -> None:
        if self.membership is None or self._stop.is_set():
            return
        self.membership.hint_unreachable(peer_id, self._now())
        self._after_input()

    def _after_input(self) -> None:
        self._flush()
        self._wake.set()

    def _flush(self) -> None:
        assert self.membership is not None and self.lease is not None
        changed = False
        for action in self.membership.drain():
            if isinstance(action, Send):
                if action.to:
                    self.p2p.send(action.to, action.addrs, action.payload)
                else:
                    self.p2p.send_unknown(action.addrs, action.payload)
            elif isinstance(action, MemberChanged):
                changed = True
                log.info(
                    "member %s",
                    action.new.value,
                    extra=kv(
                        node=action.view.name,
                        id=action.node_id[-8:],
                        was=action.old.value if action.old else None,
                        inc=action.view.incarnation,
                    ),
                )
                if action.new in (MemberState.DEAD, MemberState.LEFT):
                    self.p2p.disconnect(action.node_id)
            else:
                self._on_user_action(action)
        if changed:
            self._publish()

    def _on_user_action(self, action: UserMessage) -> None:
        """User messages carried by membership: lease claims."""
        assert self.lease is not None
        before = self.lease.current()
        if deliver_claim(self.lease, action, self._now()) and self.lease.current() != before:
            self._log_lease(before)
            self._publish()

    def _log_lease(self, before: tuple[str, int] | None) -> None:
        assert self.lease is not None
        cur = self.lease.current()
        log.info(
            "coordinator %s",
            "acquired" if self.lease.is_holder() else "changed",
            extra=kv(holder=cur[0][-8:] if cur else None, epoch=cur[1] if cur else None,
                     previous=before[0][-8:] if before else None),
        )

    def _tick(self) -> None:
        assert self.membership is not None and self.lease is not None
        now = self._now()
        self.membership.tick(now)
        before = self.lease.current()
        tick_lease(self.lease, self.membership, now)
        if self.lease.current() != before:
            self._log_lease(before)
            self._publish()
        self._flush()

    async def _drive(self) -> None:
        assert self.membership is not None and self.lease is not None
        while True:
            self._tick()
            deadline = min(self.membership.next_deadline(), self.lease.next_deadline())
            self._wake = trio.Event()
            with trio.move_on_at(max(deadline, self._now() + 0.001)):
                await self._wake.wait()

    async def _refresh(self) -> None:
        """Publish snapshots for ages, and refresh our load in the record."""
        next_load = 0.0
        sent: dict[str, Any] | None = None
        sent_at = 0.0
        while True:
            now = self._now()
            if now >= next_load:
                load = await trio.to_thread.run_sync(hw_load)
                if (sent is None or now - sent_at >= self.cfg.membership.load_heartbeat
                        or load_change.significant(sent, load)):
                    self._apply_record({"load": load})
                    sent, sent_at = load, now
                next_load = now + self.cfg.membership.load_interval
            self._publish()
            await trio.sleep(SNAPSHOT_INTERVAL)

    async def _seeds(self) -> None:
        seeds = [parse_seed(s) for s in self.cfg.p2p.seeds]
        if not seeds:
            return
        while True:
            assert self.membership is not None
            known = {
                m.node_id for m in self.membership.members() if m.state is MemberState.ALIVE
            }
            for addrs, peer_id in seeds:
                # A host:port seed's id is learnt on first contact; once that
                # id is an alive member, re-joining through it every few
                # seconds would only make it send us the full state again.
                pid = peer_id or self.p2p.resolved_peer(addrs)
                if pid is None or pid not in known:
                    self.membership.introduce(peer_id, addrs, self._now())
            self._after_input()
            # Keep trying seeds that are not members; once one is, push-pull
            # and gossip take over, so a slower pace is enough.
            wait = self.cfg.p2p.seed_retry_interval
            if len(known) > 1:
                wait *= 6
            await trio.sleep(wait)

    async def _reconnect(self) -> None:
        """Serf-style reconnect: now and then, push-pull with a dead member.

        SWIM never probes dead members, so two sides of a healed partition
        (or a host whose link came back) would stay apart until a seed or
        mDNS introduced them again.  A dead member's addresses are still
        known until it is reaped; one introduction heals the split.
        """
        rng = random.Random()
        while True:
            await trio.sleep(RECONNECT_INTERVAL * (0.5 + rng.random()))
            assert self.membership is not None
            dead = [m for m in self.membership.members() if m.state is MemberState.DEAD]
            if dead:
                m = rng.choice(dead)
                self.membership.introduce(m.node_id, m.addrs, self._now())
                self._after_input()

    async def _discovery(self) -> None:
        from swarmd.runtime.discovery import MdnsDiscovery

        def found(peer_id: str, addrs: tuple[str, ...]) -> None:
            if self.membership is None or peer_id == self.identity.peer_id:
                return
            known = {m.node_id: m.state for m in self.membership.members()}
            if known.get(peer_id) in (None, MemberState.DEAD, MemberState.LEFT):
                self.membership.introduce(peer_id, addrs, self._now())
                self._after_input()

        disc = MdnsDiscovery(
            peer_id=self.identity.peer_id,
            addrs=self.p2p.addrs(),
            secret=self.secret,
            interfaces=list(self.cfg.p2p.mdns_interfaces),
            on_found=found,
        )
        await disc.run()

    def _publish(self) -> None:
        if self.membership is None:
            return
        now = self._now()
        nodes = []
        for m in self.membership.members():
            nodes.append(
                NodeInfo(
                    node_id=m.node_id,
                    name=m.name,
                    state=m.state.value,
                    addrs=tuple(m.addrs),
                    incarnation=m.incarnation,
                    state_since=max(0.0, now - m.state_since),
                    record=m.record,
                    record_version=m.record_version,
                    is_self=m.node_id == self.identity.peer_id,
                )
            )
        nodes.sort(key=lambda n: (not n.is_self, n.name, n.node_id))
        self._snap_seq += 1
        stats = {**{f"p2p_{k}": v for k, v in self.p2p.stats.items()},
                 **{f"membership_{k}": v for k, v in self.membership.stats.items()}}
        self.box.put(
            Snapshot(
                node_id=self.identity.peer_id,
                name=self.cfg.node.name,
                addrs=tuple(self.p2p.addrs()),
                coordinator=self.lease.current() if self.lease else None,
                nodes=tuple(nodes),
                joined=len(nodes) > 1 or not (self.cfg.p2p.seeds or self.cfg.p2p.mdns),
                stats=stats,
                seq=self._snap_seq,
                health_score=self.membership.health,
            )
        )

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
            async for sig in sigs:
                log.info("signal received, leaving", extra=kv(signal=signal.Signals(sig).name))
                self._stop.set()
                return

    async def main(self) -> None:
        from swarmd.runtime.http_side import HttpSide

        self.trio_token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.p2p.run)
            now = self._now()
            addrs = self.p2p.addrs()
            caps = await trio.to_thread.run_sync(hw_caps, self.cfg.node.data_dir)
            self._record = {
                "name": self.cfg.node.name,
                "addrs": list(addrs),
                "started": self.started_wall,
                "api": self.cfg.api.listen,
                "caps": caps,
                "load": {},
                "engines": [],
                "draining": False,
            }
            self.membership = Membership(
                node_id=self.identity.peer_id,
                name=self.cfg.node.name,
                addrs=addrs,
                config=membership_config(self.cfg),
                now=now,
                rng=random.Random(),
                record=dict(self._record),
            )
            lc = self.cfg.lease
            self.lease = CoordinatorLease(
                self.identity.peer_id,
                LeaseConfig(
                    duration=lc.duration,
                    renew_deadline=lc.renew_deadline,
                    retry_period=lc.retry_period,
                ),
                now,
            )
            self._publish()
            http = HttpSide(self.cfg, self)
            # Blocks until every listener is bound; run off the trio thread so
            # libp2p keeps answering meanwhile.
            await trio.to_thread.run_sync(http.start)
            log.info(
                "swarmd started",
                extra=kv(name=self.cfg.node.name, id=self.identity.peer_id,
                         addrs=",".join(addrs), api=self.cfg.api.listen,
                         control=str(self.cfg.control.socket)),
            )
            nursery.start_soon(self._drive)
            nursery.start_soon(self._refresh)
            nursery.start_soon(self._seeds)
            nursery.start_soon(self._signals)
            nursery.start_soon(self._reconnect)
            if self.cfg.p2p.mdns:
                nursery.start_soon(self._discovery)
            await self._stop.wait()
            _arm_stop_watchdog(self.cfg.node.stop_timeout)
            await self._leave()
            await trio.to_thread.run_sync(http.stop)
            nursery.cancel_scope.cancel()

    async def _leave(self) -> None:
        assert self.membership is not None
        self.membership.leave(self._now())
        self._after_input()
        # Give gossip a few rounds to carry the leave (peers see `left`).
        grace = getattr(self.membership, "leave_grace", None)
        wait = float(grace) if isinstance(grace, int | float) else 1.0
        with trio.move_on_after(wait):
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


def run_node(cfg: Config) -> int:
    identity = load_or_create_identity(cfg.node.data_dir)
    secret, source = load_secret(cfg)
    log.info("swarm secret loaded", extra=kv(source=source))
    node = Node(cfg, identity, secret)
    trio.run(node.main)
    return 0
