"""A set with O(1) add, remove and uniform random sampling (gossip targets)."""

from __future__ import annotations

import random
from collections.abc import Iterator


class IndexedSet:
    __slots__ = ("_items", "_pos")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._pos: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, x: object) -> bool:
        return x in self._pos

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def add(self, x: str) -> None:
        if x not in self._pos:
            self._pos[x] = len(self._items)
            self._items.append(x)

    def discard(self, x: str) -> None:
        i = self._pos.pop(x, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._pos[last] = i

    def sample(self, rng: random.Random, k: int, exclude: frozenset[str] = frozenset()) -> list[str]:
        """Up to ``k`` distinct random members not in ``exclude``."""
        n = len(self._items)
        if n == 0 or k <= 0:
            return []
        if n <= k + len(exclude):
            pool = [x for x in self._items if x not in exclude]
            rng.shuffle(pool)
            return pool[:k]
        out: list[str] = []
        seen: set[int] = set()
        while len(out) < k and len(seen) < n:
            i = rng.randrange(n)
            if i in seen:
                continue
            seen.add(i)
            x = self._items[i]
            if x not in exclude:
                out.append(x)
        return out
