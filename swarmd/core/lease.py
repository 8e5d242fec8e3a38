"""Coordinator lease over gossip (client-go leader election, without a store).

Theory of operation
-------------------
There is no shared lease object; the lease is what the claims gossiped by
:meth:`swarmd.core.membership.Membership.broadcast` say.  A claim is
``(epoch, holder, seq)``: the epoch identifies one tenure and only ever
increases; ``seq`` counts the holder's renewals within it.

* Holder: re-broadcasts its claim (seq + 1) every ``retry_period``.  It
  counts itself holder only while its last *successful* renewal is younger
  than ``renew_deadline``; a renewal succeeds unless the caller passed
  ``known_members`` and fewer than a strict majority of them are alive in
  this node's view (then it steps down: a holder cut off from most of the
  swarm yields).  Without ``known_members`` every renewal succeeds.
* Everyone: on a claim newer than what it holds (higher epoch; same epoch
  and a lower holder id -- the deterministic tie-break; same holder and
  epoch and a higher seq), it records the holder and sets its *local* expiry
  to ``now + duration``.  Only local monotonic clocks are compared; no clock
  sync.  Renewals arrive every ``retry_period`` plus gossip delay, far inside
  ``duration``.
* Acquisition: when the local expiry has passed, the alive members are
  ranked by preference -- oldest ``started`` first, then lowest node id --
  and the node of rank r claims at ``expiry + r * retry_period`` with epoch
  = highest epoch ever seen + 1.  Rank 0 normally wins; the stagger covers a
  rank-0 node that is dead but not yet detected.  A live holder is never
  displaced by a more preferred newcomer (no duelling).
* A new node waits one ``duration`` before it may claim, to hear a holder.
* Partition: with ``known_members`` only a side seeing a strict majority
  alive elects; the minority holder steps down after ``renew_deadline``.
  Without it (or once a side has reaped the others) each side may elect
  its own holder (two holders).  On heal the
  claims meet; the higher epoch (then the lower holder id) wins and the other
  holder steps down on hearing it.
* :meth:`check` accepts an epoch only if it is >= the highest epoch this node
  has seen: actions stamped by a deposed coordinator are rejectable.

Not guaranteed: a single holder at every instant (no fencing; gossip delay,
partitions and paused processes allow overlap).  Guaranteed: epochs only
increase, and once a node has heard of epoch e it rejects every action of
an epoch < e.  See protocol/lease.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

CLAIM_VERSION = 1
_U64 = 1 << 64


@dataclass(frozen=True)
class LeaseConfig:
    #: Seconds a lease lasts at a follower without hearing a renewal
    #: (client-go LeaseDuration, 15 s).
    duration: float = 15.0
    #: Seconds within which the holder must renew successfully or step down
    #: (client-go RenewDeadline, 10 s); < duration so a holder stops acting
    #: before followers consider the lease vacant.
    renew_deadline: float = 10.0
    #: Seconds between renewals and between acquisition attempts (client-go
    #: RetryPeriod, 2 s); also the stagger between preference ranks.
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not (self.duration > self.renew_deadline > self.retry_period > 0):
            raise ValueError("lease: need duration > renew_deadline > retry_period > 0")


@dataclass(frozen=True)
class Claim:
    epoch: int
    holder: str
    seq: int


class ClaimDecodeError(ValueError):
    pass


def encode_claim(c: Claim) -> bytes:
    return msgpack.packb([CLAIM_VERSION, c.epoch, c.holder, c.seq], use_bin_type=True)  # type: ignore[no-any-return]


def decode_claim(data: bytes) -> Claim:
    """Strict: [version >= 1, epoch, holder, seq, ...]; ClaimDecodeError otherwise."""
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
    except Exception as exc:
        raise ClaimDecodeError(f"not msgpack: {exc}") from None
    if type(obj) is not list or len(obj) < 4:
        raise ClaimDecodeError("claim must be an array of 4")
    v, epoch, holder, seq = obj[:4]
    for x in (v, epoch, seq):
        if type(x) is not int or x < 0 or x >= _U64:
            raise ClaimDecodeError("claim: version/epoch/seq must be unsigned ints")
    if v < 1 or type(holder) is not str or not holder or len(holder) > 256:
        raise ClaimDecodeError("claim: bad version or holder")
    return Claim(epoch, holder, seq)


def _beats(a: Claim, b: Claim) -> bool:
    """Does claim ``a`` supersede ``b``?"""
    if a.epoch != b.epoch:
        return a.epoch > b.epoch
    if a.holder != b.holder:
        return a.holder < b.holder
    return a.seq > b.seq


class CoordinatorLease:
    def __init__(self, node_id: str, config: LeaseConfig, now: float) -> None:
        self.node_id = node_id
        self.config = config
        self._now = now
        self._claim: Claim | None = None  # newest claim we accept
        self._expiry = now + config.duration  # local time the lease becomes vacant
        self._highest = 0
        self._holding = False
        self._last_ok = -math.inf
        self._next_renew = math.inf
        self._next_poll = now + config.duration
        self.stats: dict[str, int] = {"claims_in": 0, "claims_bad": 0, "acquired": 0,
                                      "stepped_down": 0}

    # -- inputs -----------------------------------------------------------

    def receive(self, payload: bytes, sender: str, now: float) -> None:
        self._now = max(self._now, now)
        try:
            c = decode_claim(payload)
        except ClaimDecodeError:
            self.stats["claims_bad"] += 1
            return
        self.stats["claims_in"] += 1
        self._highest = max(self._highest, c.epoch)
        if c.holder == self.node_id:
            return  # our own echo, or a claim of a past life of ours: let it expire
        cur = self._claim
        if cur is not None and not _beats(c, cur):
            return
        if self._holding:
            self._holding = False
            self.stats["stepped_down"] += 1
        self._claim = c
        self._expiry = now + self.config.duration

    def tick(
        self,
        now: float,
        alive_members: Sequence[tuple[str, float]],
        known_members: int | None = None,
    ) -> list[bytes]:
        """Advance; returns encoded claims to broadcast (see :meth:`tick_claims`)."""
        return [encode_claim(c) for c in self.tick_claims(now, alive_members, known_members)]

    def tick_claims(
        self,
        now: float,
        alive_members: Sequence[tuple[str, float]],
        known_members: int | None = None,
    ) -> list[Claim]:
        """Advance; returns claims to broadcast (seq 0: a new tenure, else a
        renewal).  ``alive_members``: (node id, record["started"]) of ALIVE
        members, self included.  ``known_members``: optional count of non-left
        members (alive, suspect, dead) -- if given, holding needs a strict
        majority of them alive in our view."""
        self._now = max(self._now, now)
        cfg = self.config
        quorum = known_members is None or 2 * len(alive_members) > known_members
        out: list[Claim] = []
        if self._holding:
            assert self._claim is not None
            if now >= self._next_renew:
                self._next_renew = now + cfg.retry_period
                if quorum:
                    c = Claim(self._claim.epoch, self.node_id, self._claim.seq + 1)
                    self._claim = c
                    self._last_ok = now
                    self._expiry = now + cfg.duration
                    out.append(c)
            if now - self._last_ok >= cfg.renew_deadline:
                self._holding = False
                self.stats["stepped_down"] += 1
            return out
        if now < self._expiry:
            return out
        if now >= self._next_poll:
            ranked = sorted(alive_members, key=lambda m: (m[1], m[0]))
            ids = [m[0] for m in ranked]
            rank = ids.index(self.node_id) if self.node_id in ids else len(ids)
            if quorum and now >= self._expiry + rank * cfg.retry_period:
                epoch = self._highest + 1
                self._highest = epoch
                c = Claim(epoch, self.node_id, 0)
                self._claim = c
                self._holding = True
                self._last_ok = now
                self._expiry = now + cfg.duration
                self._next_renew = now + cfg.retry_period
                self.stats["acquired"] += 1
                out.append(c)
            else:
                self._next_poll = now + cfg.retry_period
        return out

    # -- queries ----------------------------------------------------------

    def current(self) -> tuple[str, int] | None:
        """(holder, epoch) as this node believes it, None while vacant."""
        if self.is_holder():
            assert self._claim is not None
            return (self.node_id, self._claim.epoch)
        c = self._claim
        if c is None or self._now >= self._expiry or (c.holder == self.node_id):
            return None
        return (c.holder, c.epoch)

    def is_holder(self) -> bool:
        return self._holding and self._now - self._last_ok < self.config.renew_deadline

    @property
    def epoch(self) -> int:
        """Highest epoch this node has seen (its own claims included)."""
        return self._highest

    def check(self, epoch: int) -> bool:
        """True if an action stamped with ``epoch`` is not stale here."""
        return epoch >= self._highest

    def next_deadline(self) -> float:
        if self._holding:
            return min(self._next_renew, self._last_ok + self.config.renew_deadline)
        if self._now < self._expiry:
            return self._expiry
        return max(self._next_poll, self._now)
