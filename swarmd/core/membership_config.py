"""Membership timing configuration and the named profiles.

All durations are seconds of the caller's monotonic clock; all sizes bytes.
The formulas that turn these into timeouts live in
:mod:`swarmd.core.lifeguard` and are quoted on each field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class MembershipConfig:
    #: Seconds between two probes started by this node (memberlist
    #: ProbeInterval).  Scaled by the local health: the effective interval is
    #: ``probe_interval * (awareness + 1)``.  Each member is probed by someone
    #: about once per interval, so detection starts within ~1 interval.
    probe_interval: float = 1.0
    #: Seconds to wait for a direct ack before asking ``indirect_checks``
    #: peers to probe for us (memberlist ProbeTimeout; not scaled: waiting
    #: longer does not get a lost datagram through).  Around the 99th
    #: percentile of a round trip; must be < probe_interval.
    probe_timeout: float = 0.5
    #: Peers asked to ping the target (ping-req) when the direct probe times
    #: out (memberlist IndirectChecks).  Routes around a single bad link.
    indirect_checks: int = 3
    #: Suspicion multiplier (memberlist SuspicionMult): the minimum suspicion
    #: timeout is ``suspicion_mult * max(1, log10(N)) * probe_interval``;
    #: confirmations expected: ``suspicion_mult - 2``.  3, one below
    #: memberlist's 4: a swarm of <= 10 LAN machines declares a dead node
    #: in ~4.5 s (median, simulated) instead of ~5.5 s, and Lifeguard's
    #: refutation and local health still gave zero false deaths at 5% loss
    #: (bench/cluster.py, bench/sim_membership.py).
    suspicion_mult: int = 3
    #: The maximum suspicion timeout is this times the minimum (memberlist
    #: SuspicionMaxTimeoutMult); with no independent confirmations a suspect
    #: gets the maximum to refute, which protects against one slow accuser.
    suspicion_max_timeout_mult: int = 6
    #: Seconds between gossip rounds (memberlist GossipInterval).  A round
    #: sends queued broadcasts to ``gossip_nodes`` random peers; idle when the
    #: queue is empty.
    gossip_interval: float = 0.2
    #: Peers per gossip round (memberlist GossipNodes).
    gossip_nodes: int = 3
    #: Seconds a dead member stays a gossip target, so a falsely declared
    #: node hears it and refutes (memberlist GossipToTheDeadTime).
    gossip_to_the_dead: float = 30.0
    #: Each node sends each broadcast ``retransmit_mult * ceil(log10(N + 1))``
    #: times (memberlist RetransmitMult).
    retransmit_mult: int = 4
    #: Seconds between full-state push-pull syncs with one random peer
    #: (memberlist PushPullInterval), stretched above 32 nodes by
    #: ``ceil(log2(N) - 5) + 1``.  Repairs lost gossip, heals partitions.
    push_pull_interval: float = 30.0
    #: Seconds between digest syncs (SYNC: fingerprints, then only the
    #: entries the other lacks) with one random peer while the membership is
    #: changing, i.e. for ``10 * busy_sync_interval`` s after any member was
    #: added or changed state.  This, not gossip, spreads joins in a large
    #: swarm: each node receives each new entry about once.
    busy_sync_interval: float = 1.0
    #: Transmits per node of the alive news of a member we did not know (a
    #: join).  Joins are spread by digest sync; one transmit per node starts
    #: a short relay chain (~sqrt(N) nodes) that seeds the sync epidemic.
    #: Refutations and other state news keep the full retransmit limit.
    join_retransmits: int = 1
    #: Seconds a dead or left member stays listed before it is forgotten.
    #: While listed, a restarted node is told it was dead and refutes with a
    #: higher incarnation, and dead members' addresses stay known for
    #: reconnection after a partition; after it, a returning node simply
    #: joins anew.
    reap_after: float = 300.0
    #: Lifeguard local-health ceiling (memberlist AwarenessMaxMultiplier):
    #: probe interval and indirect-ack wait grow up to this factor.
    awareness_max_multiplier: int = 8
    #: Largest frame sent, bytes.  Push-pull state and record transfers are
    #: split into frames of at most this size.
    max_message_bytes: int = 60_000
    #: Byte budget of one gossip frame (probes carry piggybacked gossip up to
    #: the same size).  memberlist's UDP buffer: 1,400 bytes.  Bounds gossip
    #: output at ``gossip_nodes * gossip_packet_bytes / gossip_interval``.
    gossip_packet_bytes: int = 1400
    #: Frames of at least this many bytes to a member seen writing wire
    #: version >= 3 go out deflate-compressed (memberlist EnableCompression),
    #: if that saves at least an eighth.  Push-pull state and record
    #: transfers shrink to about a third (ids repeat in entries and
    #: addresses; records repeat their keys); small probe and gossip frames
    #: stay as they are.  0 turns compression off.
    compress_min_bytes: int = 1024
    #: Bytes/s per node that record updates of the whole swarm may cost; a
    #: node's own record is gossiped at most every
    #: ``N * S * retransmit_limit(N) / record_budget`` seconds (S = size of
    #: its update; see swarmd.core.records).
    record_budget_bytes_per_s: float = 4096.0
    #: Largest record (msgpack bytes) accepted by set_record; a pull reply
    #: carries at least one whole record, so this stays below
    #: max_message_bytes.
    max_record_bytes: int = 48_000
    #: Seconds a user-message id is remembered to drop duplicates; longer
    #: than a broadcast takes to die out.
    user_seen_ttl: float = 60.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
                raise ValueError(f"membership.{f.name} must be a non-negative number")
        if self.probe_timeout >= self.probe_interval:
            raise ValueError("membership.probe_timeout must be < probe_interval")
        if self.probe_interval <= 0 or self.gossip_interval <= 0:
            raise ValueError("membership intervals must be > 0")
        if self.push_pull_interval <= 0 or self.busy_sync_interval <= 0:
            raise ValueError("membership.push_pull_interval must be > 0")
        if self.suspicion_mult < 1 or self.awareness_max_multiplier < 1:
            raise ValueError("membership multipliers must be >= 1")
        if self.max_record_bytes + 1024 > self.max_message_bytes:
            raise ValueError("membership.max_record_bytes must be < max_message_bytes - 1 KiB")
        if self.gossip_packet_bytes < 256:
            raise ValueError("membership.gossip_packet_bytes must be >= 256")


PROFILES: dict[str, MembershipConfig] = {
    # memberlist DefaultLANConfig, but suspicion_mult 3 (see its doc).
    "lan": MembershipConfig(),
    # memberlist DefaultWANConfig: slower probes, longer suspicion.
    "wan": MembershipConfig(
        probe_interval=5.0,
        probe_timeout=3.0,
        suspicion_mult=6,
        gossip_interval=0.5,
        gossip_nodes=4,
        gossip_to_the_dead=60.0,
        push_pull_interval=60.0,
        busy_sync_interval=5.0,
        reap_after=900.0,
    ),
    # Loopback and tests: everything ~5x faster than LAN.
    "local": MembershipConfig(
        probe_interval=0.2,
        probe_timeout=0.1,
        suspicion_mult=3,
        gossip_interval=0.05,
        gossip_to_the_dead=5.0,
        push_pull_interval=2.0,
        busy_sync_interval=0.2,
        reap_after=30.0,
    ),
}
