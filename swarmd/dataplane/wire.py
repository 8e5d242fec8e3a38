"""The data-plane HTTP wire, sans-IO: request heads, error answers, byte ranges.

Theory of operation
-------------------
The data plane is HTTP/1.1 over mutually authenticated TLS (see
:mod:`swarmd.dataplane.tls`).  This module only turns values into HTTP
heads and back, with strict validation; it does no I/O.  Spec:
protocol/dataplane.md; golden vectors: protocol/vectors/dataplane/.

Forwarded request: ``POST /dp/1/forward<route>`` (the OpenAI route, e.g.
``/dp/1/forward/v1/chat/completions``) with ``Swarmd-*`` headers naming the
engine, the model, the request id and the three relative deadlines
(seconds, ``0`` = the server's default), followed by the caller's forwarded
headers unchanged; the body is the OpenAI request body.  The answer is the
engine's own status, headers (hop-by-hop removed) and body, byte for byte,
unless the data plane itself failed: then the answer carries
``Swarmd-Error: <kind>`` and a small JSON body, and nothing of it came from
an engine.  Clients tell the two apart by that header alone.

Blob read: ``GET /dp/1/blobs/<sha256 hex>`` with ``Range: bytes=a-b``;
answers 206 with ``Content-Range`` (or 404/409/416 with ``Swarmd-Error``).
A node still pulling a blob serves the chunks it has verified; a range that
touches another chunk is ``409 incomplete``.  ``GET /dp/1/have/<sha256 hex>``
says which chunks a node holds (a bitmap, :func:`encode_have`) and which other
members asked it about that blob lately (so pullers find each other).
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

VERSION = 1
PREFIX = f"/dp/{VERSION}"
FORWARD_PREFIX = PREFIX + "/forward"
BLOB_PREFIX = PREFIX + "/blobs/"
#: ``GET``: which chunks of a blob the node holds, and who else asked (JSON, :func:`encode_have`).
HAVE_PREFIX = PREFIX + "/have/"
PING_PATH = PREFIX + "/ping"
#: ``POST`` ``{"name": NAME}``: remove a model from the serving node's store
#: (``swarmctl rm --node/--everywhere``); answers ``{"status": int, ...}`` JSON.
MODEL_RM_PATH = PREFIX + "/models/rm"

H_ENGINE = "Swarmd-Engine"
H_MODEL = "Swarmd-Model"
H_RID = "Swarmd-Request-Id"
H_TIMEOUT = "Swarmd-Timeout"
H_FIRST_BYTE = "Swarmd-First-Byte"
H_IDLE = "Swarmd-Idle"
H_ERROR = "Swarmd-Error"
H_NODE = "Swarmd-Node"  # the server's peer id, on every answer

#: Headers never forwarded in either direction (hop-by-hop, framing, or set by HTTP itself).
HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
    "accept-encoding", "server", "date",
})
#: Relayed answer headers dropped (framing is the data plane's own; the engine's
#: Content-Length is kept, since the body is relayed unchanged).
RESPONSE_DROP = HOP - {"content-length"}
MAX_ROUTE = 256
MAX_FIELD = 1024
MAX_HEADERS = 64
#: Largest deadline accepted (seconds; about 115 days).
MAX_SECONDS = 1e7
MAX_ERROR_BODY = 64 * 1024
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ROUTE = re.compile(r"^/[A-Za-z0-9._~/-]*$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d{1,19})-(\d{1,19})/(\d{1,19})$")

#: Error kinds of the data plane and their HTTP statuses.
ERROR_STATUS = {
    "saturated": 429,  # the engine is full (Retry-After may say when)
    "unavailable": 503,  # the engine is down, unhealthy or not on this node
    "connect": 502,  # the server could not reach its engine
    "timeout": 504,  # a deadline passed before the engine answered
    "upstream": 502,  # the engine broke the exchange
    "bad_request": 400,  # the forwarded request head was malformed
    "refused": 403,  # the peer is not an admitted member (or not the one named)
    "not_found": 404,  # no such route or blob
    "range": 416,  # the byte range is not inside the blob
    "internal": 500,  # anything else
    "incomplete": 409,  # the node holds the blob in part; the range touches a chunk it lacks
}
#: How a client maps them to the proxy's UpstreamError kinds (retry rules).
CLIENT_KIND = {
    "saturated": "saturated", "unavailable": "unavailable", "connect": "connect",
    "timeout": "timeout", "upstream": "upstream", "refused": "unavailable",
    "not_found": "unavailable", "bad_request": "upstream", "range": "upstream",
    "internal": "upstream", "incomplete": "unavailable",
}


class WireError(ValueError):
    """A malformed data-plane head; the message says what is wrong."""


@dataclass(frozen=True)
class ForwardHead:
    """What a forwarded request names besides its body."""

    route: str
    engine: str
    model: str = ""
    request_id: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 0.0  # seconds left for the whole request (0: server default)
    first_byte: float = 0.0  # seconds until the engine's answer head (0: default)
    idle: float = 0.0  # seconds between two body chunks (0: default)
    method: str = "POST"


def fmt_seconds(v: float) -> str:
    """Deadline on the wire: milliseconds precision, no exponent."""
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"bad deadline {v!r}")
    return f"{min(v, MAX_SECONDS):.3f}"


def _seconds(raw: str | None, name: str) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        v = float(raw)
    except ValueError:
        raise WireError(f"{name}: not a number") from None
    if not math.isfinite(v) or v < 0 or v > MAX_SECONDS:
        raise WireError(f"{name}: must be 0..{MAX_SECONDS:g} seconds")
    return v


def _field(value: str, name: str) -> str:
    if len(value) > MAX_FIELD or any(c in value for c in "\r\n\0"):
        raise WireError(f"{name}: too long or has control characters")
    return value


def encode_forward(head: ForwardHead) -> tuple[str, str, list[tuple[str, str]]]:
    """(method, path, headers) of a forwarded request, headers in spec order."""
    if not _ROUTE.match(head.route) or len(head.route) > MAX_ROUTE:
        raise ValueError(f"bad route {head.route!r}")
    out = [
        (H_ENGINE, _field(head.engine, H_ENGINE)),
        (H_MODEL, _field(head.model, H_MODEL)),
        (H_RID, _field(head.request_id, H_RID)),
        (H_TIMEOUT, fmt_seconds(head.timeout)),
        (H_FIRST_BYTE, fmt_seconds(head.first_byte)),
        (H_IDLE, fmt_seconds(head.idle)),
    ]
    for k, v in head.headers:
        lk = k.lower()
        if lk in HOP or lk.startswith("swarmd-") or not _TOKEN.match(k):
            continue
        out.append((k, _field(v, k)))
    return head.method, FORWARD_PREFIX + head.route, out


def decode_forward(method: str, path: str,
                   headers: Iterable[tuple[str, str]]) -> ForwardHead:
    """A forwarded request's head; WireError if malformed."""
    if method not in ("POST", "GET"):
        raise WireError(f"method {method!r} not forwarded")
    if not path.startswith(FORWARD_PREFIX + "/"):
        raise WireError("not a forward path")
    route = path[len(FORWARD_PREFIX):]
    if len(route) > MAX_ROUTE or not _ROUTE.match(route):
        raise WireError("bad route")
    mine: dict[str, str] = {}
    passed: list[tuple[str, str]] = []
    for k, v in headers:
        lk = k.lower()
        if lk.startswith("swarmd-"):
            mine[lk] = _field(v, k)
        elif lk not in HOP:
            passed.append((k, _field(v, k)))
    if len(passed) > MAX_HEADERS:
        raise WireError(f"more than {MAX_HEADERS} forwarded headers")
    engine = mine.get(H_ENGINE.lower())
    if engine is None:
        raise WireError(f"{H_ENGINE} missing")
    return ForwardHead(
        route=route, engine=engine, model=mine.get(H_MODEL.lower(), ""),
        request_id=mine.get(H_RID.lower(), ""), headers=tuple(passed),
        timeout=_seconds(mine.get(H_TIMEOUT.lower()), H_TIMEOUT),
        first_byte=_seconds(mine.get(H_FIRST_BYTE.lower()), H_FIRST_BYTE),
        idle=_seconds(mine.get(H_IDLE.lower()), H_IDLE), method=method,
    )


def relayed_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """An engine's answer headers as the data plane relays them (either side)."""
    return [(k, v) for k, v in headers
            if k.lower() not in RESPONSE_DROP and not k.lower().startswith("swarmd-")]


# -- errors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlaneError:
    kind: str
    message: str = ""
    retry_after: float | None = None
    status: int | None = None  # the engine's HTTP status, when it gave one


def encode_error(err: PlaneError) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of a data-plane error answer."""
    kind = err.kind if err.kind in ERROR_STATUS else "internal"
    headers = [(H_ERROR, kind), ("Content-Type", "application/json")]
    if err.retry_after is not None:
        headers.append(("Retry-After", str(math.ceil(min(max(err.retry_after, 0.0), 3600.0)))))
    body = json.dumps({"kind": kind, "message": err.message[:4096],
                       "retry_after": err.retry_after, "status": err.status},
                      separators=(",", ":")).encode()
    return ERROR_STATUS[kind], headers, body


def decode_error(headers: Mapping[str, str], body: bytes) -> PlaneError:
    """The error an answer with ``Swarmd-Error`` carries (lenient: never raises)."""
    kind = headers.get(H_ERROR, "internal")
    if kind not in ERROR_STATUS:
        kind = "internal"
    message, ra, status = "", None, None
    try:
        doc = json.loads(body[:MAX_ERROR_BODY])
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        m = doc.get("message")
        message = m if isinstance(m, str) else ""
        r = doc.get("retry_after")
        if isinstance(r, int | float) and not isinstance(r, bool) and 0 <= r <= 3600:
            ra = float(r)
        s = doc.get("status")
        if isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599:
            status = s
    return PlaneError(kind, message or f"data plane error {kind}", ra, status)


# -- blobs and ranges ----------------------------------------------------------------------


def blob_path(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise ValueError("a blob digest is 64 lowercase hex digits (sha256)")
    return BLOB_PREFIX + digest


def parse_blob_path(path: str) -> str:
    digest = path[len(BLOB_PREFIX):] if path.startswith(BLOB_PREFIX) else ""
    if not _DIGEST.match(digest):
        raise WireError("a blob digest is 64 lowercase hex digits (sha256)")
    return digest


def range_header(start: int, end: int) -> str:
    """``Range`` value for bytes ``[start, end)`` (end exclusive, as in Python)."""
    if not 0 <= start < end:
        raise ValueError("a range needs 0 <= start < end")
    return f"bytes={start}-{end - 1}"


def parse_content_range(value: str) -> tuple[int, int, int]:
    """``Content-Range: bytes a-b/total`` -> (start, end exclusive, total); WireError."""
    m = _CONTENT_RANGE.match(value.strip())
    if not m:
        raise WireError(f"bad Content-Range {value!r}")
    a, b, total = (int(x) for x in m.groups())
    if not a <= b < total:
        raise WireError(f"Content-Range {value!r} out of order")
    return a, b + 1, total


def have_path(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise ValueError("a blob digest is 64 lowercase hex digits (sha256)")
    return HAVE_PREFIX + digest


def parse_have_path(path: str) -> str:
    digest = path[len(HAVE_PREFIX):] if path.startswith(HAVE_PREFIX) else ""
    if not _DIGEST.match(digest):
        raise WireError("a blob digest is 64 lowercase hex digits (sha256)")
    return digest


# -- which chunks a node holds ---------------------------------------------------------------

#: The chunk size a node names for a complete blob (the model store's CHUNK_SIZE).
HAVE_CHUNK = 16 * 1024 * 1024
#: Most chunks a ``have`` answer describes (a 4 TiB blob in 16 MiB chunks: a 32 KiB bitmap).
MAX_HAVE_CHUNKS = 1 << 18
#: Most peer ids in a ``have`` answer.
MAX_HAVE_PEERS = 16
_PEER_ID = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{1,128}$")


def bitmap_of(chunks: Iterable[int], count: int) -> bytes:
    """Chunk ``i`` is bit ``0x80 >> (i % 8)`` of byte ``i // 8``; ``ceil(count / 8)`` bytes."""
    out = bytearray((count + 7) // 8)
    for i in chunks:
        if 0 <= i < count:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def chunks_of(bitmap: bytes, count: int) -> frozenset[int]:
    """The chunk indices set in ``bitmap``; WireError unless it is exactly
    ``ceil(count / 8)`` bytes with no bit set past ``count``."""
    if len(bitmap) != (count + 7) // 8:
        raise WireError(f"a bitmap of {count} chunks is {(count + 7) // 8} bytes, "
                        f"not {len(bitmap)}")
    got = frozenset(i for i in range(len(bitmap) * 8) if bitmap[i >> 3] & (0x80 >> (i & 7)))
    if got and max(got) >= count:
        raise WireError(f"bitmap sets a chunk past the {count} chunks")
    return got


@dataclass(frozen=True)
class Have:
    """A node's answer about one blob: its size, chunk size, which chunks it holds
    (``chunks`` None: the whole blob), other members that asked about it, and
    (a node still pulling it) the chunks it is reading now, ``coming``."""

    size: int
    chunk_size: int
    chunks: frozenset[int] | None
    peers: tuple[str, ...] = ()
    coming: frozenset[int] = frozenset()

    @property
    def count(self) -> int:
        return (self.size + self.chunk_size - 1) // self.chunk_size


def encode_have(have: Have) -> bytes:
    """Compact JSON, keys ``size``, ``chunk_size``, ``complete``, ``chunks``
    (base64 bitmap, only when not complete), ``coming`` (the same, only when
    not complete and not empty), ``peers``."""
    doc: dict[str, object] = {"size": have.size, "chunk_size": have.chunk_size,
                              "complete": have.chunks is None}
    if have.chunks is not None:
        doc["chunks"] = base64.b64encode(bitmap_of(have.chunks, have.count)).decode()
        coming = have.coming - have.chunks
        if coming:
            doc["coming"] = base64.b64encode(bitmap_of(coming, have.count)).decode()
    doc["peers"] = list(have.peers[:MAX_HAVE_PEERS])
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_have(raw: bytes) -> Have:
    """Strict reading of a ``have`` answer (untrusted); WireError if malformed.
    Peer ids that are not base58 strings are dropped, and past 16 ignored."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise WireError("have answer is not JSON") from None
    if not isinstance(doc, dict):
        raise WireError("have answer is not an object")
    size, cs, complete = doc.get("size"), doc.get("chunk_size"), doc.get("complete")
    for name, v in (("size", size), ("chunk_size", cs)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "chunk_size" else 0):
            raise WireError(f"have: bad {name}")
    assert isinstance(size, int) and isinstance(cs, int)
    if (size + cs - 1) // cs > MAX_HAVE_CHUNKS:
        raise WireError(f"have: more than {MAX_HAVE_CHUNKS} chunks")
    if not isinstance(complete, bool):
        raise WireError("have: bad complete")
    chunks: frozenset[int] | None = None
    coming: frozenset[int] = frozenset()
    if not complete:
        chunks = _bitmap_key(doc, "chunks", size, cs)
        if "coming" in doc:
            coming = _bitmap_key(doc, "coming", size, cs) - chunks
    elif "coming" in doc:
        raise WireError("have: coming on a complete blob")
    peers = doc.get("peers", [])
    good = tuple(p for p in (peers if isinstance(peers, list) else [])[:MAX_HAVE_PEERS]
                 if isinstance(p, str) and _PEER_ID.match(p))
    return Have(size, cs, chunks, good, coming)


def _bitmap_key(doc: dict[str, Any], key: str, size: int, cs: int) -> frozenset[int]:
    text = doc.get(key)
    if not isinstance(text, str):
        raise WireError(f"have: {key} missing")
    try:
        bitmap = base64.b64decode(text, validate=True)
    except ValueError:
        raise WireError(f"have: {key} is not base64") from None
    return chunks_of(bitmap, (size + cs - 1) // cs)
