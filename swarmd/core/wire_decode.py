"""Membership frame decoding: strict, bounded, never raising anything but DecodeError.

Theory of operation
-------------------
:func:`decode_frame` reads one frame from an untrusted peer.  It accepts any
wire version >= 1, skips (and counts) message types it does not know and
ignores trailing fields, and rejects everything else: wrong types, negative
or oversized integers, strings and lists past the limits in
:mod:`swarmd.core.wire_messages`, msgpack extension types, trailing bytes,
and compressed bodies that inflate past ``max_bytes``.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgpack

from swarmd.core.wire_messages import (
    _U64,
    ALGO_DEFLATE,
    MAX_ADDR_LEN,
    MAX_ADDRS,
    MAX_FRAME_BYTES,
    MAX_ID_LEN,
    MAX_KEY_LEN,
    MAX_NAME_LEN,
    MAX_SYNC_FPS,
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
