"""Versioned msgpack codec for membership messages.

Theory of operation
-------------------
Every membership datagram is one *frame*: a msgpack array whose first element
is the wire version and whose other elements are messages::

    frame   = [version, msg, msg, ...]          # a frame is itself the batch
    msg     = [type, field, field, ...]         # type: MsgType (append-only)

A frame is the compound message of memberlist: a probe carries gossip
piggybacked behind the ping in the same frame.  Because a msgpack array is
its header followed by its elements, a frame is assembled by concatenating
already-encoded messages behind a header (:func:`frame`) -- the broadcast
queue keeps messages pre-encoded and never re-packs them.

Evolution is append-only: new message types get new numbers, new fields are
appended to the end of a message.  A decoder therefore accepts any version >=
1, ignores trailing fields it does not know, and skips (and counts) message
types it does not know.  Everything else is strict: wrong types, negative or
oversized integers, non-string keys, msgpack extension types and trailing
bytes all raise :class:`DecodeError`, and no other exception escapes
:func:`decode_frame` for any input.

The byte layouts, field by field, are in protocol/membership.md; golden
vectors in protocol/vectors/membership.json.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

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


# --------------------------------------------------------------------------
# encoding


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _entry_list(e: StateEntry) -> list[Any]:
    return [e.node, e.name, list(e.addrs), int(e.state), e.inc, e.record_version]


def to_list(msg: Message) -> list[Any]:
    """The msgpack array of one message (without the frame)."""
    if isinstance(msg, Ping):
        return [MsgType.PING, msg.seq, msg.target]
    if isinstance(msg, Ack):
        return [MsgType.ACK, msg.seq]
    if isinstance(msg, PingReq):
        return [MsgType.PING_REQ, msg.seq, msg.target, list(msg.addrs), msg.nack]
    if isinstance(msg, Nack):
        return [MsgType.NACK, msg.seq]
    if isinstance(msg, Alive):
        return [MsgType.ALIVE, msg.node, msg.inc, msg.name, list(msg.addrs)]
    if isinstance(msg, Suspect):
        return [MsgType.SUSPECT, msg.node, msg.inc, msg.frm]
    if isinstance(msg, Dead):
        return [MsgType.DEAD, msg.node, msg.inc, msg.frm]
    if isinstance(msg, Left):
        return [MsgType.LEFT, msg.node, msg.inc]
    if isinstance(msg, Record):
        return [MsgType.RECORD, msg.node, msg.version, dict(msg.record), msg.relay]
    if isinstance(msg, RecordDelta):
        return [MsgType.RECORD_DELTA, msg.node, msg.version, msg.base, dict(msg.set),
                list(msg.unset)]
    if isinstance(msg, RecordReq):
        return [MsgType.RECORD_REQ, [[n, v] for n, v in msg.wants]]
    if isinstance(msg, PushPull):
        return [MsgType.PUSH_PULL, msg.flags, [_entry_list(e) for e in msg.states]]
    if isinstance(msg, User):
        user = [MsgType.USER, msg.origin, msg.key, msg.msg_id, msg.payload]
        return user + [msg.flags] if msg.flags else user
    if isinstance(msg, Sync):
        return [MsgType.SYNC, msg.flags, msg.seed, msg.fps]
    raise TypeError(f"not a membership message: {msg!r}")


def encode_message(msg: Message) -> bytes:
    """One message, msgpack-encoded; concatenate behind :func:`frame_header`."""
    return _packb([int(x) if isinstance(x, enum.IntEnum) else x for x in to_list(msg)])


def encode_entry(e: StateEntry) -> bytes:
    return _packb(_entry_list(e))


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def frame_header(count: int) -> bytes:
    """Header for a frame of ``count`` messages (array header + version)."""
    return _array_header(count + 1) + _packb(WIRE_VERSION)


def frame(encoded: Sequence[bytes]) -> bytes:
    """A frame from pre-encoded messages."""
    return frame_header(len(encoded)) + b"".join(encoded)


def compressed_frame(encoded: Sequence[bytes], level: int = 1) -> bytes:
    """A frame of one COMPRESSED message carrying ``encoded`` (deflate).

    Level 1: most of the gain on msgpack membership data (ids repeat in
    entries and addresses) at a fraction of level 6's CPU.
    """
    body = _array_header(len(encoded)) + b"".join(encoded)
    return (frame_header(1) + _array_header(3) + _packb(int(MsgType.COMPRESSED))
            + _packb(ALGO_DEFLATE) + _packb(zlib.compress(body, level)))


#: Bytes a frame header costs at most (array32 header + version int).
FRAME_OVERHEAD = 6


def push_pull_messages(flags: int, entries: Sequence[bytes]) -> bytes:
    """A PUSH_PULL message from pre-encoded entries (see :func:`encode_entry`)."""
    return (
        _array_header(3) + _packb(int(MsgType.PUSH_PULL)) + _packb(flags)
        + _array_header(len(entries)) + b"".join(entries)
    )


#: Bytes a PUSH_PULL message costs besides its entries, at most.
PUSH_PULL_OVERHEAD = 1 + 1 + 1 + 5


def encode_frame(messages: Sequence[Message]) -> bytes:
    return frame([encode_message(m) for m in messages])


# --------------------------------------------------------------------------
# decoding


def _ext_hook(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} not allowed")


def _int(x: Any, what: str) -> int:
    if type(x) is not int or x < 0 or x >= _U64:
        raise DecodeError(f"{what}: expected unsigned int, got {type(x).__name__}")
    return x


def _str(x: Any, what: str, limit: int) -> str:
    if type(x) is not str:
        raise DecodeError(f"{what}: expected str, got {type(x).__name__}")
    if len(x) > limit:
        raise DecodeError(f"{what}: longer than {limit}")
    return x


def _id(x: Any, what: str) -> str:
    s = _str(x, what, MAX_ID_LEN)
    if not s:
        raise DecodeError(f"{what}: empty node id")
    return s


def _bool(x: Any, what: str) -> bool:
    if type(x) is not bool:
        raise DecodeError(f"{what}: expected bool, got {type(x).__name__}")
    return x


def _addrs(x: Any, what: str) -> tuple[str, ...]:
    if type(x) is not list or len(x) > MAX_ADDRS:
        raise DecodeError(f"{what}: expected a list of at most {MAX_ADDRS} addresses")
    return tuple(_str(a, what, MAX_ADDR_LEN) for a in x)


def _map(x: Any, what: str) -> dict[str, Any]:
    if type(x) is not dict:
        raise DecodeError(f"{what}: expected map, got {type(x).__name__}")
    for k in x:
        if type(k) is not str:
            raise DecodeError(f"{what}: keys must be strings")
    return x


def _fields(m: list[Any], n: int, what: str) -> list[Any]:
    # Append-only evolution: extra trailing fields are allowed and ignored.
    if len(m) < n + 1:
        raise DecodeError(f"{what}: expected {n} fields, got {len(m) - 1}")
    return m[1 : n + 1]


def _entry(x: Any) -> StateEntry:
    if type(x) is not list or len(x) < 6:
        raise DecodeError("push-pull entry: expected a list of 6")
    code = _int(x[3], "push-pull entry state")
    if code > WireState.LEFT:
        raise DecodeError(f"push-pull entry: unknown state {code}")
    return StateEntry(
        node=_id(x[0], "entry node"),
        name=_str(x[1], "entry name", MAX_NAME_LEN),
        addrs=_addrs(x[2], "entry addrs"),
        state=WireState(code),
        inc=_int(x[4], "entry incarnation"),
        record_version=_int(x[5], "entry record version"),
    )


def _decode_message(m: list[Any], t: int) -> Message:
    if t == MsgType.PING:
        seq, target = _fields(m, 2, "ping")
        return Ping(_int(seq, "seq"), _id(target, "target"))
    if t == MsgType.ACK:
        (seq,) = _fields(m, 1, "ack")
        return Ack(_int(seq, "seq"))
    if t == MsgType.PING_REQ:
        seq, target, addrs, nack = _fields(m, 4, "ping-req")
        return PingReq(_int(seq, "seq"), _id(target, "target"), _addrs(addrs, "addrs"),
                       _bool(nack, "nack"))
    if t == MsgType.NACK:
        (seq,) = _fields(m, 1, "nack")
        return Nack(_int(seq, "seq"))
    if t == MsgType.ALIVE:
        node, inc, name, addrs = _fields(m, 4, "alive")
        return Alive(_id(node, "node"), _int(inc, "inc"), _str(name, "name", MAX_NAME_LEN),
                     _addrs(addrs, "addrs"))
    if t == MsgType.SUSPECT:
        node, inc, frm = _fields(m, 3, "suspect")
        return Suspect(_id(node, "node"), _int(inc, "inc"), _id(frm, "from"))
    if t == MsgType.DEAD:
        node, inc, frm = _fields(m, 3, "dead")
        return Dead(_id(node, "node"), _int(inc, "inc"), _id(frm, "from"))
    if t == MsgType.LEFT:
        node, inc = _fields(m, 2, "left")
        return Left(_id(node, "node"), _int(inc, "inc"))
    if t == MsgType.RECORD:
        node, version, record, relay = _fields(m, 4, "record")
        return Record(_id(node, "node"), _int(version, "version"), _map(record, "record"),
                      _bool(relay, "relay"))
    if t == MsgType.RECORD_DELTA:
        node, version, base, set_, unset = _fields(m, 5, "record delta")
        if type(unset) is not list:
            raise DecodeError("record delta: unset must be a list")
        return RecordDelta(
            _id(node, "node"), _int(version, "version"), _int(base, "base"),
            _map(set_, "set"), tuple(_str(k, "unset", MAX_KEY_LEN) for k in unset),
        )
    if t == MsgType.RECORD_REQ:
        (wants,) = _fields(m, 1, "record req")
        if type(wants) is not list:
            raise DecodeError("record req: expected a list")
        out = []
        for w in wants:
            if type(w) is not list or len(w) < 2:
                raise DecodeError("record req: expected [node, version] pairs")
            out.append((_id(w[0], "node"), _int(w[1], "version")))
        return RecordReq(tuple(out))
    if t == MsgType.PUSH_PULL:
        flags, states = _fields(m, 2, "push-pull")
        if type(states) is not list:
            raise DecodeError("push-pull: states must be a list")
        return PushPull(_int(flags, "flags"), tuple(_entry(e) for e in states))
    if t == MsgType.USER:
        origin, key, msg_id, payload = _fields(m, 4, "user")
        if type(payload) is not bytes:
            raise DecodeError("user: payload must be bytes")
        flags = _int(m[5], "user flags") if len(m) > 5 else 0
        return User(_id(origin, "origin"), _str(key, "key", MAX_KEY_LEN),
                    _int(msg_id, "msg id"), payload, flags)
    if t == MsgType.SYNC:
        flags, seed, fps = _fields(m, 3, "sync")
        if type(fps) is not bytes or len(fps) % 2 or len(fps) > 2 * MAX_SYNC_FPS:
            raise DecodeError("sync: fingerprints must be bytes of even length")
        return Sync(_int(flags, "flags"), _int(seed, "seed"), fps)
    raise AssertionError("unreachable")  # pragma: no cover


_KNOWN = frozenset(int(t) for t in MsgType)


def decode_frame(data: bytes, max_bytes: int = MAX_FRAME_BYTES * 4) -> Frame:
    """Decode one frame; raises :class:`DecodeError` and nothing else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("frame must be bytes")
    if len(data) > max_bytes:
        raise DecodeError(f"frame of {len(data)} bytes exceeds {max_bytes}")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, use_list=True, strict_map_key=True,
                              ext_hook=_ext_hook)
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, ...)
        raise DecodeError(f"not msgpack: {type(exc).__name__}: {exc}") from None
    if type(obj) is not list or not obj:
        raise DecodeError("frame must be a non-empty array")
    version = obj[0]
    if type(version) is not int or version < 1 or version >= _U64:
        raise DecodeError("frame version must be an int >= 1")
    out: list[Message] = []
    unknown = _decode_messages(obj[1:], out, max_bytes, outer=True)
    return Frame(version, tuple(out), unknown)


def _decode_messages(items: list[Any], out: list[Message], max_bytes: int,
                     outer: bool) -> int:
    """Decode ``items`` into ``out``; returns how many were of unknown type."""
    unknown = 0
    for m in items:
        if type(m) is not list or not m:
            raise DecodeError("message must be a non-empty array")
        t = m[0]
        if type(t) is not int:
            raise DecodeError("message type must be an int")
        if t == MsgType.COMPRESSED:
            if not outer:
                raise DecodeError("compressed: nested compression")
            inner = _inflate(m, max_bytes)
            if inner is None:
                unknown += 1
            else:
                unknown += _decode_messages(inner, out, max_bytes, outer=False)
            continue
        if t not in _KNOWN:
            unknown += 1
            continue
        out.append(_decode_message(m, t))
    return unknown


def _inflate(m: list[Any], max_bytes: int) -> list[Any] | None:
    """The messages inside a COMPRESSED message; None for an unknown algorithm.

    The output is capped at ``max_bytes`` (a deflate bomb is rejected after
    inflating at most that much), must be exactly one msgpack array, and is
    held to the same rules as a frame's messages.
    """
    algo, data = _fields(m, 2, "compressed")
    if type(algo) is not int or algo < 0:
        raise DecodeError("compressed: algorithm must be an int")
    if type(data) is not bytes:
        raise DecodeError("compressed: data must be bytes")
    if algo != ALGO_DEFLATE:
        return None
    d = zlib.decompressobj()
    try:
        body = d.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise DecodeError(f"compressed: {exc}") from None
    if len(body) > max_bytes or d.unconsumed_tail:
        raise DecodeError(f"compressed: inflates past {max_bytes} bytes")
    if not d.eof or d.unused_data:
        raise DecodeError("compressed: truncated or trailing data")
    try:
        inner = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True,
                                ext_hook=_ext_hook)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"compressed: not msgpack: {type(exc).__name__}") from None
    if type(inner) is not list:
        raise DecodeError("compressed: body must be an array of messages")
    return inner


def decode_message(data: bytes) -> Message:
    """Decode one stand-alone message (as made by :func:`encode_message`)."""
    f = decode_frame(frame_header(1) + bytes(data))
    if len(f.messages) != 1:
        raise DecodeError("unknown message type")
    return f.messages[0]


def describe(msg: Message) -> dict[str, Any]:
    """A JSON-friendly description of a message (golden vectors, debugging)."""

    def conv(x: Any) -> Any:
        if isinstance(x, bytes):
            return {"hex": x.hex()}
        if isinstance(x, WireState):
            return x.name.lower()
        if isinstance(x, StateEntry):
            return {k: conv(getattr(x, k)) for k in x.__dataclass_fields__}
        if isinstance(x, tuple | list):
            return [conv(i) for i in x]
        if isinstance(x, Mapping):
            return {k: conv(v) for k, v in x.items()}
        return x

    out: dict[str, Any] = {"type": type(msg).__name__}
    for k in msg.__dataclass_fields__:
        out[k] = conv(getattr(msg, k))
    return out
