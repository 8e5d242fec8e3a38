"""Lifeguard refinements of SWIM: local health (awareness) and suspicion timers.

Theory of operation
-------------------
Lifeguard (Dadgar et al., arXiv 1707.00788; hashicorp/memberlist awareness.go,
suspicion.go, util.go) makes SWIM robust to a *slow local node*: a node that
misses its own deadlines (CPU starvation, GC, a saturated link) would otherwise
accuse healthy peers.

* :class:`Awareness` -- a score in ``[0, max_multiplier - 1]``.  A failed probe
  raises it (by the number of missed nacks: an indirect prober that does not
  even nack points at *us*), a refutation raises it (others think we are
  slow), a successful probe lowers it.  Probe interval and the time to wait for
  indirect acks are multiplied by ``score + 1``.
* :class:`Suspicion` -- the time a suspect has to refute before it is declared
  dead starts at ``max`` and shrinks logarithmically towards ``min`` as
  independent peers confirm the suspicion::

      timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1))

  with ``c`` confirmations out of ``k`` expected (memberlist: ``k =
  suspicion_mult - 2``, ``k = 0`` when fewer than ``k + 2`` nodes exist, and
  then the timeout is ``min``).
* :func:`suspicion_timeouts` -- ``min = suspicion_mult * max(1, log10(N)) *
  probe_interval``; ``max = suspicion_max_timeout_mult * min``.
* :func:`retransmit_limit` -- ``retransmit_mult * ceil(log10(N + 1))`` sends
  per broadcast per node.
* :func:`push_pull_scale` -- memberlist's pushPullScale: above 32 nodes the
  push-pull interval grows by ``ceil(log2(N) - log2(32)) + 1`` so full-state
  syncs stay a constant share of the bandwidth.
"""

from __future__ import annotations

import math

from swarmd.core.membership_config import MembershipConfig


def relay_timeout(config: MembershipConfig) -> float:
    """Seconds a PING_REQ helper waits for the target's ack before its NACK.

    ``0.8 * min(probe_timeout, probe_interval - probe_timeout)``.  The asker
    sends PING_REQ ``probe_timeout`` into its probe and stops counting nacks
    at ``probe_interval`` (more when its own health stretches it), so a nack
    must be sent well inside the remaining ``probe_interval -
    probe_timeout``; the 20% margin is for the two network legs.  Waiting a
    full ``probe_timeout`` (memberlist's relay timer) lands the nack just
    after the asker's deadline in the lan profile (0.5 + 0.5 = 1.0 s), and
    every failed probe of a truly dead node then counted all helpers'
    nacks as missing: the survivors raised their own health score and
    slowed their probing, the opposite of Lifeguard's intent.  lan: 0.4 s,
    wan: 1.6 s, local: 0.08 s.
    """
    c = config
    return 0.8 * min(c.probe_timeout, c.probe_interval - c.probe_timeout)


class Awareness:
    """Local health score (0 = healthy)."""

    def __init__(self, max_multiplier: int) -> None:
        self.max = max(1, int(max_multiplier))
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(self.max - 1, max(0, self.score + delta))

    def scale(self, t: float) -> float:
        return t * (self.score + 1)


class Suspicion:
    """One suspicion timer: a deadline that shrinks with confirmations."""

    __slots__ = ("k", "min", "max", "start", "confirmers", "deadline")

    def __init__(self, frm: str, k: int, min_t: float, max_t: float, start: float) -> None:
        self.k = k
        self.min = min_t
        self.max = max_t
        self.start = start
        self.confirmers = {frm}
        self.deadline = start + (min_t if k < 1 else max_t)

    def confirm(self, frm: str) -> bool:
        """Count an independent confirmation; True if it was new (re-gossip it)."""
        if len(self.confirmers) - 1 >= self.k or frm in self.confirmers:
            return False
        self.confirmers.add(frm)
        self.deadline = self.start + remaining_timeout(
            len(self.confirmers) - 1, self.k, self.min, self.max
        )
        return True


def remaining_timeout(c: int, k: int, min_t: float, max_t: float) -> float:
    """Total suspicion timeout after ``c`` of ``k`` confirmations."""
    if k < 1:
        return min_t
    frac = math.log(c + 1.0) / math.log(k + 1.0)
    return max(min_t, max_t - frac * (max_t - min_t))


def suspicion_timeouts(
    suspicion_mult: float, max_mult: float, n: int, probe_interval: float
) -> tuple[float, float]:
    """(min, max) suspicion timeout in seconds for a cluster of ``n`` nodes."""
    scale = max(1.0, math.log10(max(1.0, float(n))))
    lo = suspicion_mult * scale * probe_interval
    return lo, lo * max_mult


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times each node sends each broadcast."""
    return int(retransmit_mult * math.ceil(math.log10(n + 1)))


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist's pushPullScale: stretch the push-pull interval above 32 nodes."""
    if n <= 32:
        return interval
    mult = math.ceil(math.log2(n) - math.log2(32)) + 1
    return interval * mult
