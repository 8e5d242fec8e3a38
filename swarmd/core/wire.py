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

Layout: the message types and limits are :mod:`swarmd.core.wire_messages`,
decoding is :mod:`swarmd.core.wire_decode`; this module encodes and is the
facade every caller imports (``from swarmd.core import wire``).
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from swarmd.core.wire_decode import (
    decode_frame,
)
from swarmd.core.wire_messages import (
    ALGO_DEFLATE,
    COMPRESS_VERSION,
    MAX_ADDR_LEN,
    MAX_ADDRS,
    MAX_FRAME_BYTES,
    MAX_ID_LEN,
    MAX_KEY_LEN,
    MAX_NAME_LEN,
    MAX_SYNC_FPS,
    PP_JOIN,
    PP_LAST,
    PP_RECORDS,
    PP_REPLY,
    RECORDS_FOLLOW_VERSION,
    SYNC_REPLY,
    USER_DIRECT,
    USER_LAZY,
    WIRE_VERSION,
    Ack,
    Alive,
    Dead,
    DecodeError,
    Frame,
    Left,
    Message,
    MsgType,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Record,
    RecordDelta,
    RecordReq,
    StateEntry,
    Suspect,
    Sync,
    User,
    WireState,
)

__all__ = [
    "ALGO_DEFLATE",
    "Ack",
    "Alive",
    "COMPRESS_VERSION",
    "Dead",
    "DecodeError",
    "FRAME_OVERHEAD",
    "Frame",
    "Left",
    "MAX_ADDRS",
    "MAX_ADDR_LEN",
    "MAX_FRAME_BYTES",
    "MAX_ID_LEN",
    "MAX_KEY_LEN",
    "MAX_NAME_LEN",
    "MAX_SYNC_FPS",
    "Message",
    "MsgType",
    "Nack",
    "PP_JOIN",
    "PP_LAST",
    "PP_RECORDS",
    "PP_REPLY",
    "PUSH_PULL_OVERHEAD",
    "Ping",
    "PingReq",
    "PushPull",
    "RECORDS_FOLLOW_VERSION",
    "Record",
    "RecordDelta",
    "RecordReq",
    "SYNC_REPLY",
    "StateEntry",
    "Suspect",
    "Sync",
    "USER_DIRECT",
    "USER_LAZY",
    "User",
    "WIRE_VERSION",
    "WireState",
    "compressed_frame",
    "decode_frame",
    "decode_message",
    "describe",
    "encode_entry",
    "encode_frame",
    "encode_message",
    "frame",
    "frame_header",
    "push_pull_messages",
    "to_list",
]

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
