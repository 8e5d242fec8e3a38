"""Per-node records: deltas, size limits and the gossip rate limit.

Theory of operation
-------------------
Every member owns an opaque msgpack-able dict (protocol/records.md) and a
version it bumps on every change.  Records travel apart from the small
alive/suspect/dead messages so that failure detection never waits behind a
large record:

* the owner gossips a change as a *delta* of top-level keys
  (``RecordDelta(version, base, set, unset)``), or the full record when there
  is no earlier broadcast or the delta is not smaller;
* a receiver that holds exactly ``base`` applies the delta; one that is
  behind asks the sender for the full record (``RecordReq``);
* push-pull carries only ``(node, record_version)``; the receiver then pulls
  the records that are newer, in frames of at most ``max_message_bytes``.

Gossip budget.  Epidemic gossip makes every node send every update about
``L = retransmit_limit(N)`` times, so N nodes updating every T seconds with
updates of S bytes cost each node about ``N * S * L / T`` bytes/s.  Holding
that under a budget B (bytes/s per node) needs::

    T >= min_record_interval = N * S * L / B

Example: 1,000 nodes, a 150-byte load delta, L = 16, B = 4 KB/s: T >= 600 s.
Each node receives every other node's updates at least once
(``N * S / T`` bytes/s), so no gossip design does much better than
``N * S / B`` (37 s here); large swarms must refresh load slowly, or route
on stale load.  :class:`swarmd.core.membership.Membership` enforces this
interval on its own record broadcasts (changes in between are coalesced) and
exposes it as ``record_interval()`` so callers can sample load no faster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from swarmd.core.lifeguard import retransmit_limit


class RecordError(ValueError):
    """A record that cannot be gossiped (not msgpack-able, or too large)."""


def encoded_size(record: Mapping[str, Any]) -> int:
    """Bytes the record takes in msgpack; raises RecordError if not encodable."""
    try:
        return len(msgpack.packb(dict(record), use_bin_type=True))
    except Exception as exc:  # TypeError, OverflowError, ValueError from msgpack
        raise RecordError(f"record is not msgpack-encodable: {exc}") from None


def check_record(record: Mapping[str, Any], max_bytes: int) -> dict[str, Any]:
    """A plain-dict copy of ``record`` after checking keys and size."""
    out = dict(record)
    for k in out:
        if not isinstance(k, str):
            raise RecordError(f"record keys must be strings, got {k!r}")
    size = encoded_size(out)
    if size > max_bytes:
        raise RecordError(f"record is {size} bytes; the limit is {max_bytes}")
    return out


def delta(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Top-level keys to set and to remove to turn ``old`` into ``new``."""
    set_ = {k: v for k, v in new.items() if k not in old or old[k] != v}
    unset = tuple(k for k in old if k not in new)
    return set_, unset


def apply_delta(
    old: Mapping[str, Any], set_: Mapping[str, Any], unset: tuple[str, ...]
) -> dict[str, Any]:
    out = {k: v for k, v in old.items() if k not in unset}
    out.update(set_)
    return out


def compose(
    first: tuple[Mapping[str, Any], tuple[str, ...]],
    second: tuple[Mapping[str, Any], tuple[str, ...]],
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """One delta equal to applying ``first`` then ``second``."""
    set1, unset1 = first
    set2, unset2 = second
    set_ = {k: v for k, v in set1.items() if k not in unset2}
    set_.update(set2)
    unset = tuple(sorted((set(unset1) - set(set2)) | set(unset2)))
    return set_, unset


def min_record_interval(
    n: int, update_bytes: int, retransmit_mult: int, budget_bytes_per_s: float
) -> float:
    """Seconds between one node's record broadcasts so that all N nodes'
    updates together cost each node at most ``budget_bytes_per_s``:
    ``N * S * retransmit_limit(N) / B``."""
    if budget_bytes_per_s <= 0:
        return 0.0
    limit = retransmit_limit(retransmit_mult, max(1, n))
    return max(1, n) * max(0, update_bytes) * limit / budget_bytes_per_s
