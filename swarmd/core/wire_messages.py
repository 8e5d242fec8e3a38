"""Membership wire messages: their types, fields, flags and size limits (pure data).

One frozen dataclass per message type (numbered by :class:`MsgType`,
append-only), the member states as written on the wire, the push-pull and
sync flag bits, and the limits the decoder enforces.  The codec is
:mod:`swarmd.core.wire` (encoding, and the facade callers import) and
:mod:`swarmd.core.wire_decode` (strict decoding of untrusted frames); the
byte layouts are in protocol/membership.md.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Wire version written by this implementation.  2: understands SYNC
#: (digest push-pull); a peer seen writing version 1 gets full-state
#: push-pulls instead.  3: understands COMPRESSED; only peers seen writing
#: version >= 3 are sent compressed frames.
WIRE_VERSION = 3
#: The first version whose readers understand COMPRESSED.
COMPRESS_VERSION = 3
#: The first version whose readers take records from a PP_RECORDS reply
#: (older ones would request them again anyway).
RECORDS_FOLLOW_VERSION = 3
#: COMPRESSED algorithms (append-only).  1: zlib/deflate (RFC 1950).
ALGO_DEFLATE = 1
#: Default largest frame in bytes (libp2p frames allow more; 60 KB keeps one
#: frame within a few TCP segments' worth of buffering and bounds memory).
MAX_FRAME_BYTES = 60_000
#: Limits enforced on decode (bytes / items).
MAX_ID_LEN = 256
MAX_NAME_LEN = 256
MAX_ADDR_LEN = 512
MAX_ADDRS = 32
MAX_KEY_LEN = 256
_U64 = 1 << 64


class DecodeError(ValueError):
    """The bytes are not a valid membership frame."""


class MsgType(enum.IntEnum):
    """Message type numbers.  Append-only: never renumber or reuse."""

    PING = 1
    ACK = 2
    PING_REQ = 3
    NACK = 4
    ALIVE = 5
    SUSPECT = 6
    DEAD = 7
    LEFT = 8
    RECORD = 9
    RECORD_DELTA = 10
    RECORD_REQ = 11
    PUSH_PULL = 12
    USER = 13
    SYNC = 14
    COMPRESSED = 15  # unwrapped by the decoder, never a Message


class WireState(enum.IntEnum):
    """Member state codes inside push-pull entries."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


# Push-pull flag bits.
PP_JOIN = 1
PP_REPLY = 2
PP_LAST = 4
#: Each member's record (RECORD, relay=false) follows its entry in the same
#: frame, so the receiver does not request it (version 3).
PP_RECORDS = 8

# Sync flag bits.
SYNC_REPLY = 2
#: Largest digest accepted (fingerprints; 2 bytes each).
MAX_SYNC_FPS = 100_000


@dataclass(frozen=True)
class Ping:
    seq: int
    target: str  # node id the pinger means; a misdirected ping is dropped


@dataclass(frozen=True)
class Ack:
    seq: int


@dataclass(frozen=True)
class PingReq:
    seq: int
    target: str
    addrs: tuple[str, ...]
    nack: bool  # answer with Nack if the target does not ack in time


@dataclass(frozen=True)
class Nack:
    seq: int


@dataclass(frozen=True)
class Alive:
    node: str
    inc: int
    name: str
    addrs: tuple[str, ...]


@dataclass(frozen=True)
class Suspect:
    node: str
    inc: int
    frm: str


@dataclass(frozen=True)
class Dead:
    node: str
    inc: int
    frm: str


@dataclass(frozen=True)
class Left:
    node: str
    inc: int


@dataclass(frozen=True)
class Record:
    node: str
    version: int
    record: Mapping[str, Any]
    relay: bool  # True: gossip (re-broadcast); False: a pull reply


@dataclass(frozen=True)
class RecordDelta:
    node: str
    version: int
    base: int  # applies only on top of exactly this version
    set: Mapping[str, Any]  # top-level keys set
    unset: tuple[str, ...]  # top-level keys removed


@dataclass(frozen=True)
class RecordReq:
    wants: tuple[tuple[str, int], ...]  # (node, version we have)


@dataclass(frozen=True)
class StateEntry:
    node: str
    name: str
    addrs: tuple[str, ...]
    state: WireState
    inc: int
    record_version: int


@dataclass(frozen=True)
class PushPull:
    flags: int
    states: tuple[StateEntry, ...]

    @property
    def join(self) -> bool:
        return bool(self.flags & PP_JOIN)

    @property
    def reply(self) -> bool:
        return bool(self.flags & PP_REPLY)

    @property
    def last(self) -> bool:
        return bool(self.flags & PP_LAST)

    @property
    def records(self) -> bool:
        return bool(self.flags & PP_RECORDS)


#: USER flag: piggyback only.  Relays carry the message on frames they send
#: anyway (probes, acks, gossip rounds started by other news) and never start
#: a gossip round for it: periodic, non-urgent news such as lease renewals.
USER_LAZY = 1
#: Sent to one member by :meth:`Membership.send_user`; the receiver never relays it.
USER_DIRECT = 2


@dataclass(frozen=True)
class User:
    origin: str
    key: str
    msg_id: int
    payload: bytes
    #: USER_LAZY or 0.  An optional trailing field: written only when
    #: non-zero, so a flag-less message encodes as before and older readers
    #: ignore it (they relay the message eagerly).
    flags: int = 0

    @property
    def lazy(self) -> bool:
        return bool(self.flags & USER_LAZY)


@dataclass(frozen=True)
class Sync:
    """Digest push-pull: 16-bit fingerprints (big-endian, 2 bytes each) of
    the sender's entries under ``seed`` (see membership_sync)."""

    flags: int
    seed: int
    fps: bytes

    @property
    def reply(self) -> bool:
        return bool(self.flags & SYNC_REPLY)


Message = (
    Ping | Ack | PingReq | Nack | Alive | Suspect | Dead | Left | Record | RecordDelta
    | RecordReq | PushPull | User | Sync
)


@dataclass(frozen=True)
class Frame:
    version: int
    messages: tuple[Message, ...]
    unknown: int  # messages of types this decoder does not know (skipped)
