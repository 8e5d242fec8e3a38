"""Codec of the forwarding stream protocol ``/swarmd/forward/1.0.0`` (sans-IO).

Theory of operation
-------------------
A node that routes an HTTP request to an engine on another node opens (or
reuses) a libp2p stream to it and runs one request at a time on it.  Every
message is a *frame*: a 4-byte big-endian length, then a msgpack map whose
``"t"`` key names the frame type.  The full specification, with the state
machine and examples, is protocol/forward.md; golden byte vectors are in
protocol/vectors/forward*.json.

Client -> server: :class:`Request` (route, engine, headers, deadlines), then
:class:`Body` frames, the last one with ``end=True``; :class:`Cancel` at any
time to abandon the request.  Server -> client: :class:`Head` (status and
headers), :class:`Data` frames (response bytes, in order), then exactly one
terminal frame: :class:`End` (complete; the stream may carry the next
request) or :class:`Error` (failed; ``code`` says how).  An Error before Head
means nothing was produced and the client may retry elsewhere.

This module only turns frames into bytes and bytes into frames.  Decoding is
strict about what it needs (types, ranges) and lenient about what it does not
know (extra keys are ignored, so a 1.x peer may add fields); a malformed
frame raises :class:`ForwardWireError`, and the caller resets the stream.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_ID = "/swarmd/forward/1.0.0"
VERSION = 1
#: Largest frame payload accepted (bytes); bigger data is split by the sender.
MAX_FRAME = 1024 * 1024
#: Largest data chunk a sender puts in one Body/Data frame.
MAX_CHUNK = 256 * 1024
#: Most header pairs in a Request/Head frame, and the longest name/value.
MAX_HEADERS = 64
MAX_HEADER_LEN = 8192
HEADER = struct.Struct(">I")

#: Error codes carried by :class:`Error` frames (protocol/forward.md).
ERROR_CODES = frozenset(
    {
        "no_engine",  # the engine named is unknown / not serving here
        "saturated",  # the engine refused: queue full (retry_after may say when)
        "unavailable",  # the engine is down or unhealthy
        "connect",  # the server could not connect to its engine
        "timeout",  # a deadline passed
        "upstream",  # the engine broke the exchange (reset, bad HTTP)
        "bad_request",  # the request frames were malformed
        "cancelled",  # the client sent Cancel
        "internal",  # anything else
    }
)


class ForwardWireError(ValueError):
    """Bytes that are not a valid forward frame; the stream must be reset."""


@dataclass(frozen=True)
class Request:
    route: str  # e.g. "/v1/chat/completions"
    method: str = "POST"
    engine: str = ""  # engine id on the server node ("" = any serving model)
    model: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 0.0  # seconds left for the whole request (0 = server default)
    first_byte: float = 0.0  # seconds allowed until Head (0 = server default)
    idle: float = 0.0  # seconds allowed between two Data frames (0 = server default)
    request_id: str = ""


@dataclass(frozen=True)
class Body:
    data: bytes
    end: bool = False


@dataclass(frozen=True)
class Head:
    status: int
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Data:
    data: bytes


@dataclass(frozen=True)
class End:
    pass


@dataclass(frozen=True)
class Error:
    code: str
    message: str = ""
    retry_after: float | None = None
    status: int | None = None  # the engine's HTTP status, when it gave one


@dataclass(frozen=True)
class Cancel:
    pass


Frame = Request | Body | Head | Data | End | Error | Cancel


def _pairs(headers: tuple[tuple[str, str], ...]) -> list[list[str]]:
    return [[k, v] for k, v in headers]


def to_map(frame: Frame) -> dict[str, Any]:
    """The msgpack map of a frame, keys in a fixed order (vectors depend on it)."""
    if isinstance(frame, Request):
        return {
            "t": "req",
            "v": VERSION,
            "route": frame.route,
            "method": frame.method,
            "engine": frame.engine,
            "model": frame.model,
            "headers": _pairs(frame.headers),
            "timeout": float(frame.timeout),
            "first_byte": float(frame.first_byte),
            "idle": float(frame.idle),
            "rid": frame.request_id,
        }
    if isinstance(frame, Body):
        return {"t": "body", "d": frame.data, "end": frame.end}
    if isinstance(frame, Head):
        return {"t": "head", "status": frame.status, "headers": _pairs(frame.headers)}
    if isinstance(frame, Data):
        return {"t": "data", "d": frame.data}
    if isinstance(frame, End):
        return {"t": "end"}
    if isinstance(frame, Error):
        out: dict[str, Any] = {"t": "err", "code": frame.code, "msg": frame.message}
        if frame.retry_after is not None:
            out["retry_after"] = float(frame.retry_after)
        if frame.status is not None:
            out["status"] = frame.status
        return out
    if isinstance(frame, Cancel):
        return {"t": "cancel"}
    raise TypeError(f"not a forward frame: {frame!r}")


def encode(frame: Frame) -> bytes:
    """Length-prefixed msgpack bytes of one frame."""
    payload = msgpack.packb(to_map(frame), use_bin_type=True)
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(payload)) + payload


def encode_many(frames: list[Frame]) -> bytes:
    return b"".join(encode(f) for f in frames)


def data_frames(data: bytes, *, body: bool = False, end: bool = False) -> list[Frame]:
    """Split ``data`` into Data (or Body) frames of at most MAX_CHUNK bytes."""
    out: list[Frame] = []
    for i in range(0, max(len(data), 1), MAX_CHUNK):
        part = data[i : i + MAX_CHUNK]
        if body:
            out.append(Body(part, False))
        elif part:
            out.append(Data(part))
    if body and end:
        if out:
            last = out[-1]
            assert isinstance(last, Body)
            out[-1] = Body(last.data, True)
        else:  # pragma: no cover - range() above always yields once
            out.append(Body(b"", True))
    return out


# -- decoding ---------------------------------------------------------------------


def _str(m: Mapping[str, Any], key: str, default: str | None = None, maxlen: int = 4096) -> str:
    v = m.get(key, default)
    if not isinstance(v, str):
        raise ForwardWireError(f"{key!r} must be a string")
    if len(v) > maxlen:
        raise ForwardWireError(f"{key!r} longer than {maxlen}")
    return v


def _num(m: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    v = m.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v or v < 0:
        raise ForwardWireError(f"{key!r} must be a non-negative number")
    return float(v)


def _bytes(m: Mapping[str, Any], key: str) -> bytes:
    v = m.get(key)
    if not isinstance(v, bytes):
        raise ForwardWireError(f"{key!r} must be bytes")
    return v


def _bool(m: Mapping[str, Any], key: str, default: bool = False) -> bool:
    v = m.get(key, default)
    if not isinstance(v, bool):
        raise ForwardWireError(f"{key!r} must be a boolean")
    return v


def _headers(m: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    raw = m.get("headers", [])
    if not isinstance(raw, list) or len(raw) > MAX_HEADERS:
        raise ForwardWireError(f"'headers' must be a list of at most {MAX_HEADERS} pairs")
    out: list[tuple[str, str]] = []
    for pair in raw:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(x, str) and len(x) <= MAX_HEADER_LEN for x in pair)
            or not pair[0]
        ):
            raise ForwardWireError("a header must be [name, value] strings")
        out.append((pair[0], pair[1]))
    return tuple(out)


def from_map(m: Any) -> Frame:
    """A frame from its decoded msgpack map; ForwardWireError if malformed."""
    if not isinstance(m, dict):
        raise ForwardWireError("a frame must be a map")
    t = m.get("t")
    if t == "req":
        v = m.get("v")
        if isinstance(v, bool) or not isinstance(v, int):
            raise ForwardWireError("'v' must be an integer")
        if v != VERSION:
            raise ForwardWireError(f"unsupported version {v}")
        route = _str(m, "route", maxlen=256)
        if not route.startswith("/"):
            raise ForwardWireError("'route' must start with /")
        return Request(
            route=route,
            method=_str(m, "method", "POST", maxlen=16),
            engine=_str(m, "engine", "", maxlen=256),
            model=_str(m, "model", "", maxlen=1024),
            headers=_headers(m),
            timeout=_num(m, "timeout"),
            first_byte=_num(m, "first_byte"),
            idle=_num(m, "idle"),
            request_id=_str(m, "rid", "", maxlen=128),
        )
    if t == "body":
        return Body(_bytes(m, "d"), _bool(m, "end"))
    if t == "head":
        status = m.get("status")
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ForwardWireError("'status' must be an HTTP status 100..599")
        return Head(status, _headers(m))
    if t == "data":
        return Data(_bytes(m, "d"))
    if t == "end":
        return End()
    if t == "err":
        code = _str(m, "code", maxlen=64)
        if code not in ERROR_CODES:
            code = "internal"  # unknown codes from a newer peer: still an error
        ra = m.get("retry_after")
        status = m.get("status")
        if status is not None and (
            isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599
        ):
            raise ForwardWireError("'status' must be an HTTP status 100..599")
        return Error(
            code=code,
            message=_str(m, "msg", "", maxlen=4096),
            retry_after=None if ra is None else _num(m, "retry_after"),
            status=status,
        )
    if t == "cancel":
        return Cancel()
    raise ForwardWireError(f"unknown frame type {t!r}")


def decode_payload(payload: bytes) -> Frame:
    """One frame from its msgpack payload (no length prefix)."""
    try:
        m = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types
        raise ForwardWireError(f"not msgpack: {exc}") from None
    return from_map(m)


@dataclass
class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole frames out."""

    max_frame: int = MAX_FRAME
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        while len(self._buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self._buf)
            if n == 0 or n > self.max_frame:
                raise ForwardWireError(f"frame length {n} out of range 1..{self.max_frame}")
            if len(self._buf) < HEADER.size + n:
                break
            payload = bytes(self._buf[HEADER.size : HEADER.size + n])
            del self._buf[: HEADER.size + n]
            out.append(decode_payload(payload))
        return out

    @property
    def pending(self) -> int:
        """Bytes held that do not make a whole frame yet."""
        return len(self._buf)
