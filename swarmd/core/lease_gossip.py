"""The coordinator lease carried by membership gossip (sans-IO glue).

One place says how :class:`~swarmd.core.lease.CoordinatorLease` and
:class:`~swarmd.core.membership.Membership` meet, so the daemon
(:mod:`swarmd.runtime.node`) and the simulator (``swarmd/testing/simnet.py``)
run the same wiring (both through :class:`swarmd.core.node.NodeMachine`):

* The lease sees the ALIVE members with their ``record["started"]`` (its
  preference order, read as untrusted input by :func:`swarmd.core.record.started_of`) and the count of non-left members (its majority check).
* Its claims go out as user messages under :data:`LEASE_KEY`.  A new tenure
  (seq 0) is gossiped at once; a renewal (seq > 0) is *lazy*: it rides on
  the probes and acks every node sends anyway, so an idle swarm spends no
  frames of its own on the lease (protocol/lease.md).
"""

from __future__ import annotations

from swarmd.core.lease import CoordinatorLease, encode_claim
from swarmd.core.membership import Membership, MemberState, UserMessage
from swarmd.core.record import started_of

LEASE_KEY = "lease"


def tick_lease(lease: CoordinatorLease, membership: Membership, now: float) -> None:
    """Advance ``lease`` and queue its claims on ``membership``."""
    alive: list[tuple[str, float]] = []
    known = 0
    for m in membership.members():
        if m.state is MemberState.ALIVE:
            alive.append((m.node_id, started_of(m.record)))
        if m.state is not MemberState.LEFT:
            known += 1
    for claim in lease.tick_claims(now, alive, known_members=known):
        membership.broadcast(LEASE_KEY, encode_claim(claim), lazy=claim.seq > 0)


def deliver_claim(lease: CoordinatorLease, msg: UserMessage, now: float) -> bool:
    """Hand a lease user message to ``lease``; False if ``msg`` is something else."""
    if msg.key != LEASE_KEY:
        return False
    lease.receive(msg.payload, msg.sender, now)
    return True
