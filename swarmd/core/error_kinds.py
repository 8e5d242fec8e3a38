"""How an exchange with an engine fails: one table for the whole request path.

Theory of operation
-------------------
A forwarded or local request fails with an *error kind*
(:class:`swarmd.api.upstream.UpstreamError` ``.kind``).  This table is the
one place that says, for each kind, the HTTP status a client finally gets,
whether the proxy may try another engine (only ever before the first byte
reached the client), how long the router leaves the engine alone, and the
code it travels under on the forward protocol (protocol/forward.md
``Error.code``; codes are append-only).  The API (``api/upstream``,
``api/proxy``), the forward client and server (``runtime/forward``) and the
engines' statuses (:func:`kind_of_status`) all read it.  Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    name: str
    #: Status of the final answer when every attempt failed this way.
    status: int
    #: Another engine may be tried (before the first byte only).
    retry: bool
    #: Code on the forward wire.
    wire: str
    #: Seconds the router treats the engine as full after it said so (None:
    #: the failure counts towards its circuit breaker instead).
    refuse_s: float | None = None


KINDS: dict[str, ErrorKind] = {k.name: k for k in (
    ErrorKind("connect", 502, True, "connect"),       # could not reach the engine
    ErrorKind("timeout", 504, True, "timeout"),       # a deadline passed
    ErrorKind("saturated", 429, True, "saturated", refuse_s=1.0),  # full: 429, queue full
    ErrorKind("unavailable", 503, True, "unavailable", refuse_s=5.0),  # down, 503, unknown
    ErrorKind("upstream", 502, True, "upstream"),     # broke, or 500/501/5xx: "cannot"
    ErrorKind("cancelled", 499, False, "cancelled"),  # the client went away
)}

#: Forward-wire codes that map to another kind on receipt.
FROM_WIRE: dict[str, str] = {"no_engine": "unavailable", "bad_request": "upstream",
                             "internal": "upstream"}


def kind_of_status(status: int) -> str | None:
    """The kind of an engine's HTTP status before any byte was relayed, or
    None when the answer is relayed (2xx, and 4xx: the client's problem)."""
    if status == 429:
        return "saturated"
    if status == 503:
        return "unavailable"
    if status >= 500:
        return "upstream"
    return None


def to_wire(kind: str) -> str:
    k = KINDS.get(kind)
    return k.wire if k is not None else "upstream"


def from_wire(code: str) -> str:
    if code in KINDS:
        return code
    return FROM_WIRE.get(code, "upstream")
