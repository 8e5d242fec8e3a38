"""Transmit-limited broadcast queue (memberlist's TransmitLimitedQueue).

Theory of operation
-------------------
Gossip is carried by a bounded number of sends per node and message: each
queued broadcast is handed out at most ``limit`` times (``limit`` =
retransmit_mult * ceil(log10(N + 1)), passed in on every call because N
changes), then dropped.  Messages that were sent the fewest times go first,
and among those the newest first, so fresh news overtakes stale news.

A broadcast has a *key*; queuing a broadcast with a key already present
replaces the old one (memberlist "invalidates"): a newer alive/suspect/dead
about a node replaces the older one, a newer record of a node replaces the
older.  The replaced item's ``meta`` is returned so the caller can merge
(e.g. compose two record deltas).

Items sit in buckets indexed by transmit count; each bucket is an
insertion-ordered dict, walked newest first.  Taking the few items that fit
one packet touches only those items, so a large queue costs O(1) per packet.
The queue is bounded (``max_items``): past it, the most-sent items go first.
An item may carry its own, lower, transmit cap (news that anti-entropy
spreads anyway, e.g. joins: see membership).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

#: Items looked at and skipped (too big for what is left of a packet) before
#: a packet is considered full.
_MAX_SKIPS = 16


class _Item:
    __slots__ = ("key", "data", "meta", "transmits", "id", "cap")

    def __init__(self, key: Hashable, data: bytes, meta: Any, ident: int, cap: int) -> None:
        self.key = key
        self.data = data
        self.meta = meta
        self.transmits = 0
        self.id = ident
        self.cap = cap


class BroadcastQueue:
    def __init__(self, max_items: int = 8192) -> None:
        self.max_items = max_items
        self._buckets: list[dict[int, _Item]] = [{}]
        self._by_key: dict[Hashable, _Item] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._by_key

    def meta(self, key: Hashable) -> Any:
        item = self._by_key.get(key)
        return None if item is None else item.meta

    def put(self, key: Hashable, data: bytes, meta: Any = None, cap: int = 1 << 30) -> Any:
        """Queue ``data`` under ``key``; returns the replaced item's meta (or None).

        ``cap`` bounds this item's transmits below the queue-wide limit."""
        old = self._by_key.pop(key, None)
        if old is not None:
            del self._buckets[old.transmits][old.id]
        self._next_id += 1
        item = _Item(key, data, meta, self._next_id, cap)
        self._by_key[key] = item
        self._buckets[0][item.id] = item
        if len(self._by_key) > self.max_items:
            self._prune()
        return None if old is None else old.meta

    def remove(self, key: Hashable) -> None:
        old = self._by_key.pop(key, None)
        if old is not None:
            del self._buckets[old.transmits][old.id]

    def _prune(self) -> None:
        for bucket in reversed(self._buckets):
            while bucket and len(self._by_key) > self.max_items:
                ident = next(iter(bucket))  # oldest of the most-sent
                item = bucket.pop(ident)
                del self._by_key[item.key]
            if len(self._by_key) <= self.max_items:
                return

    def get(self, budget: int, limit: int) -> list[bytes]:
        """Broadcasts totalling at most ``budget`` bytes; counts one transmit each."""
        out: list[bytes] = []
        taken: list[_Item] = []
        used = 0
        skips = 0
        for bucket in self._buckets:
            if not bucket:
                continue
            for item in reversed(bucket.values()):
                size = len(item.data)
                if used + size > budget:
                    skips += 1
                    if skips > _MAX_SKIPS:
                        break
                    continue
                used += size
                out.append(item.data)
                taken.append(item)
            if skips > _MAX_SKIPS or budget - used < 16:
                break
        for item in taken:
            del self._buckets[item.transmits][item.id]
            item.transmits += 1
            if item.transmits >= limit or item.transmits >= item.cap:
                del self._by_key[item.key]
                continue
            while len(self._buckets) <= item.transmits:
                self._buckets.append({})
            self._buckets[item.transmits][item.id] = item
        return out
