"""Membership's data: member states, the actions it emits, and per-member bookkeeping.

Pure data shared by the membership modules (:mod:`swarmd.core.membership`
and its parts): :class:`MemberState`, the public :class:`MemberView`, the
actions a caller drains (:class:`Send`, :class:`MemberChanged`,
:class:`UserMessage`), and the internal member, probe and relay slots.
A member caches its encoded state entry, its view and its digest hash, and
invalidates them (and the shared digest) on every change.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from swarmd.core import wire


class MemberState(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


_TO_WIRE = {
    MemberState.ALIVE: wire.WireState.ALIVE,
    MemberState.SUSPECT: wire.WireState.SUSPECT,
    MemberState.DEAD: wire.WireState.DEAD,
    MemberState.LEFT: wire.WireState.LEFT,
}


@dataclass(frozen=True)
class MemberView:
    node_id: str
    name: str
    addrs: tuple[str, ...]
    state: MemberState
    incarnation: int
    record: Mapping[str, Any]
    record_version: int
    state_since: float  # monotonic time (caller's clock) of the last state change


@dataclass(frozen=True)
class Send:
    """Deliver ``payload`` (one frame) to node ``to`` best-effort.

    ``to`` is "" when the node id is not known yet (introduce with a bare
    address): the transport resolves ``addrs``."""

    to: str
    addrs: tuple[str, ...]
    payload: bytes


@dataclass(frozen=True)
class MemberChanged:
    node_id: str
    old: MemberState | None  # None: a member we had not known
    new: MemberState
    view: MemberView


@dataclass(frozen=True)
class UserMessage:
    """A user broadcast (see Membership.broadcast) that reached this node."""

    sender: str  # the node that broadcast it (not the relay)
    key: str
    payload: bytes


Action = Send | MemberChanged | UserMessage

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class _Member:
    __slots__ = (
        "node_id", "name", "addrs", "state", "incarnation", "record", "record_version",
        "state_since", "wire_version", "_entry", "_view", "_h8", "_dirty",
    )

    def __init__(self, node_id: str, name: str, addrs: tuple[str, ...], state: MemberState,
                 incarnation: int, now: float, dirty: list[bool]) -> None:
        self.node_id = node_id
        self.name = name
        self.addrs = addrs
        self.state = state
        self.incarnation = incarnation
        self.record: Mapping[str, Any] = _EMPTY
        self.record_version = 0
        self.state_since = now
        self.wire_version = 0  # of the last frame it sent us; 0: none yet
        self._entry: bytes | None = None
        self._view: MemberView | None = None
        self._h8: bytes | None = None
        self._dirty = dirty  # shared with Membership: the digest needs rebuilding
        dirty[0] = True

    def changed(self) -> None:
        self._entry = None
        self._view = None
        self._h8 = None
        self._dirty[0] = True

    def h8(self) -> bytes:
        """BLAKE2b-64 of the entry; digest-sync fingerprints are slices of it."""
        if self._h8 is None:
            self._h8 = hashlib.blake2b(self.entry(), digest_size=8).digest()
        return self._h8

    def entry(self) -> bytes:
        if self._entry is None:
            self._entry = wire.encode_entry(wire.StateEntry(
                self.node_id, self.name, self.addrs, _TO_WIRE[self.state], self.incarnation,
                self.record_version))
        return self._entry

    def view(self) -> MemberView:
        if self._view is None:
            self._view = MemberView(self.node_id, self.name, self.addrs, self.state,
                                    self.incarnation, self.record, self.record_version,
                                    self.state_since)
        return self._view


class _Probe:
    __slots__ = ("target", "seq", "timeout_at", "end_at", "acked", "nacks", "expected_nacks",
                 "indirect_sent")

    def __init__(self, target: str, seq: int, timeout_at: float, end_at: float) -> None:
        self.target = target
        self.seq = seq
        self.timeout_at = timeout_at
        self.end_at = end_at
        self.acked = False
        self.nacks = 0
        self.expected_nacks = 0
        self.indirect_sent = False


class _Relay:
    __slots__ = ("requester", "seq", "deadline", "nack")

    def __init__(self, requester: str, seq: int, deadline: float, nack: bool) -> None:
        self.requester = requester
        self.seq = seq
        self.deadline = deadline
        self.nack = nack


_STAT_KEYS = (
    "msgs_in", "msgs_out", "bytes_in", "bytes_out", "dropped_malformed", "dropped_unknown",
    "dropped_misdirected", "probes", "probe_failures", "indirect_probes", "relayed_pings",
    "nacks_sent", "suspicions", "deaths", "refutations", "push_pulls", "record_pulls",
    "records_applied", "user_in", "user_direct_out", "gossip_frames", "reaped", "syncs", "probe_hints",
    "compressed_frames", "compress_saved_bytes",
    "record_bytes_out",
)
