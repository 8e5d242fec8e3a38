"""Hybrid logical clocks (Kulkarni et al., 2014): wall time that never goes back.

A :class:`Stamp` is ``(ms, counter, node)``: milliseconds of wall time, a
counter that breaks ties within one millisecond, and the writer's node id so
two writers never produce equal stamps.  Stamps order lexicographically, and
the clock guarantees that a stamp a node issues is greater than every stamp
it has issued or observed -- so "last writer wins" picks the causally later
write whenever one write could have seen the other, and otherwise the later
wall clock (ties broken by node id).

The clock is pure: the caller passes the wall time in (``wall_ms``), so tests
drive it with any clock.  A peer whose clock runs far ahead can drag ours
ahead with it; :attr:`Hlc.max_drift_ms` bounds how far ahead of our own wall
clock an observed stamp may be before it is refused (:meth:`observe` returns
False and the write carrying it should be dropped and counted).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Hlc", "Stamp", "ZERO"]


class Stamp(NamedTuple):
    ms: int
    counter: int
    node: str

    def encode(self) -> list[object]:
        return [self.ms, self.counter, self.node]

    @staticmethod
    def decode(raw: object) -> Stamp | None:
        """A stamp from its wire form, or None if malformed (untrusted input)."""
        if not isinstance(raw, list | tuple) or len(raw) != 3:
            return None
        ms, counter, node = raw
        if (type(ms) is not int or type(counter) is not int or not isinstance(node, str)
                or not 0 <= ms < 1 << 53 or not 0 <= counter < 1 << 32 or not 0 < len(node) <= 256):
            return None
        return Stamp(ms, counter, node)


ZERO = Stamp(0, 0, "")


class Hlc:
    """One node's hybrid logical clock."""

    def __init__(self, node: str, max_drift_ms: int = 60_000) -> None:
        self.node = node
        #: Largest lead (ms) of an observed stamp over our wall clock that we accept.
        self.max_drift_ms = max_drift_ms
        self.last = ZERO

    def now(self, wall_ms: int) -> Stamp:
        """A fresh stamp, greater than every stamp issued or observed so far."""
        ms = max(wall_ms, self.last.ms)
        counter = self.last.counter + 1 if ms == self.last.ms else 0
        self.last = Stamp(ms, counter, self.node)
        return self.last

    def observe(self, stamp: Stamp, wall_ms: int) -> bool:
        """Advance past a stamp seen from a peer; False if it is too far ahead."""
        if stamp.ms > wall_ms + self.max_drift_ms:
            return False
        if (stamp.ms, stamp.counter) > (self.last.ms, self.last.counter):
            self.last = Stamp(stamp.ms, stamp.counter, self.node)
        return True
