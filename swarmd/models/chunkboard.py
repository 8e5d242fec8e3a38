"""Which chunk of a blob each peer stream reads next (thread-safe; no I/O).

Theory of operation
-------------------
A peer pull reads one blob from several peers at once: full holders (a
complete copy) and partial holders (other nodes still pulling it, serving
the chunks they have verified).  :class:`ChunkBoard` is the shared state of
one such fetch.  A fixed pool of streams (worker threads, a few per fetch,
not per peer) asks :meth:`ChunkBoard.take` for the next (peer, chunk): the
**rarest** wanted chunk -- fewest live peers hold it (a full holder holds
every chunk), ties broken by index while this fetch knows one peer (so the
whole-file hash can follow the transfer, see
:meth:`~swarmd.models.partial.PartialBlob.catch_up`) and by a random order
drawn per fetch once it knows more -- among those
some peer with a free stream holds (at most ``per_peer`` reads in flight
per peer), read from the **least loaded** such peer, a partial holder
before a full one at equal load.  So

* a full holder's upload is the scarce one in a fan-out, so it is asked
  only for chunks no partial holder holds or is reading now (``coming``, from
  their ``have`` answers), one read at a time per fetch once partial holders
  are known: the holder sends each chunk about once and the pullers trade the
  rest.  A fetch with no read in flight at all may still take such a chunk
  from a full holder (so a slow or silent partial holder cannot stall it);
  one that knows no partial holder reads from a full holder with up to
  ``per_peer`` reads -- after :meth:`ramp_up` (the fetch's second poll:
  pullers started together have had time to hear of each other);
* pullers that start together from one holder take chunks in different
  (random) orders once they know of each other (the first ``have`` polls,
  within a second), so they soon have chunks to trade.

:meth:`set_peer` adds a peer or grows what it holds (a partial holder's
chunks only ever grow; ``None`` means the whole blob) and says what it is
reading now; :meth:`failed` puts
a chunk back; :meth:`drop` removes a peer, for good or until a given time
(``until``: a peer that kept failing may come back at a later
:meth:`set_peer`).  :meth:`take` blocks while nothing is available, and
returns ``None`` once the board is closed or every chunk is done.
``version`` grows with every change that can unblock a fetch (a chunk done,
a peer holding more), which the caller uses to detect a stalled fetch.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable


class ChunkBoard:
    def __init__(self, missing: Iterable[int], *, per_peer: int = 3,
                 rng: random.Random | None = None, ramped: bool = True) -> None:
        self.per_peer = per_peer
        todo = sorted(set(missing))
        rng = rng or random.Random()
        order = list(todo)
        rng.shuffle(order)
        self._rank = {c: r for r, c in enumerate(order)}
        self._todo: set[int] = set(todo)  # wanted: not done, not in flight
        self._flight: dict[int, str] = {}  # chunk -> peer reading it
        self._busy: dict[str, int] = {}  # peer -> chunks in flight from it
        self._done: set[int] = set()
        self._have: dict[str, frozenset[int] | None] = {}  # live peers; None = whole blob
        self._dropped: dict[str, float | None] = {}  # peer -> back after (monotonic), None: never
        self._coming: dict[str, frozenset[int]] = {}  # partial peer -> chunks it reads now
        self._ramped = ramped  # False: one read per full holder until ramp_up()
        self._closed = False
        self._cond = threading.Condition()
        self.version = 0

    # -- peers -----------------------------------------------------------------------------

    def set_peer(self, peer: str, have: frozenset[int] | None,
                 coming: frozenset[int] = frozenset()) -> bool:
        """Add ``peer`` or update what it holds and (a partial holder) what it
        reads now; True if it is new (start its streams).  A dropped peer
        stays dropped."""
        with self._cond:
            if peer in self._dropped:
                until = self._dropped[peer]
                if until is None or time.monotonic() < until:
                    return False
                del self._dropped[peer]
            new = peer not in self._have
            old = self._have.get(peer, frozenset())
            if old is None:
                return new  # a full holder stays one
            merged = None if have is None else old | have
            was = self._coming.pop(peer, frozenset())
            if merged is not None and coming:
                self._coming[peer] = coming - merged
            if new or merged != old or self._coming.get(peer, frozenset()) != was:
                self._have[peer] = merged
                self.version += 1
                self._cond.notify_all()
            return new

    def drop(self, peer: str, until: float | None = None) -> None:
        """Remove ``peer``: for good, or until ``until`` (time.monotonic())."""
        with self._cond:
            self._have.pop(peer, None)
            self._coming.pop(peer, None)
            self._dropped[peer] = until
            self._cond.notify_all()

    def benched(self) -> int:
        """Peers dropped for a while (they may come back)."""
        with self._cond:
            return sum(1 for u in self._dropped.values() if u is not None)

    def peers(self) -> list[str]:
        with self._cond:
            return sorted(self._have)

    def holds(self, peer: str, chunk: int) -> bool:
        with self._cond:
            have = self._have.get(peer, frozenset())
            return have is None or chunk in have

    def is_full(self, peer: str) -> bool:
        with self._cond:
            return peer in self._have and self._have[peer] is None

    def dropped(self, peer: str) -> bool:
        with self._cond:
            return peer in self._dropped

    # -- chunks ----------------------------------------------------------------------------

    def _rarity(self, chunk: int) -> int:
        return sum(1 for h in self._have.values() if h is None or chunk in h)

    def ramp_up(self) -> None:
        """Let a full holder take ``per_peer`` reads while no partial holder is known."""
        with self._cond:
            self._ramped = True
            self._cond.notify_all()

    def _limit(self, peer: str, partials: bool) -> int:
        """Reads in flight allowed from ``peer`` now."""
        if self._have[peer] is None and (partials or not self._ramped):
            return 1
        return self.per_peer

    def _choose(self) -> tuple[str, int] | None:
        partials = any(h is not None for h in self._have.values())
        open_peers = [p for p in self._have if self._busy.get(p, 0) < self._limit(p, partials)]
        # Chunks a partial holder holds or is reading: a full holder is not
        # asked for them -- unless this fetch has nothing in flight at all.
        elsewhere: set[int] = set()
        for p, h in self._have.items():
            if h is not None:
                elsewhere |= h | self._coming.get(p, frozenset())
        got = self._best(open_peers, elsewhere)
        if got is None and elsewhere and not self._flight:
            got = self._best(open_peers, set())
        return got

    def _best(self, peers: list[str], elsewhere: set[int]) -> tuple[str, int] | None:
        best: tuple[tuple[int, int], int, list[str]] | None = None
        for c in self._todo:
            free = [p for p in peers if (h := self._have[p]) is None and c not in elsewhere
                    or h is not None and c in h]
            if not free:
                continue
            key = (self._rarity(c), self._rank[c] if len(self._have) > 1 else c)
            if best is None or key < best[0]:
                best = (key, c, free)
        if best is None:
            return None
        _, c, free = best
        # Least loaded first; at equal load a partial holder before a full one.
        peer = min(free, key=lambda p: (self._busy.get(p, 0), self._have[p] is None, p))
        return peer, c

    def pick(self) -> tuple[str, int] | None:
        """The (peer, chunk) :meth:`take` would hand out now (not taken), or None."""
        with self._cond:
            return self._choose()

    def take(self, cancel: threading.Event | None = None) -> tuple[str, int] | None:
        """The next (peer, chunk) to read, now in flight: the rarest wanted chunk
        some peer with a free stream holds, from the least loaded such peer;
        waits while there is none.  None when the fetch is over (all done,
        closed or cancelled)."""
        with self._cond:
            while True:
                if self._closed or self.finished_locked() or (
                        cancel is not None and cancel.is_set()):
                    return None
                got = self._choose()
                if got is not None:
                    peer, c = got
                    self._todo.discard(c)
                    self._flight[c] = peer
                    self._busy[peer] = self._busy.get(peer, 0) + 1
                    return got
                self._cond.wait(0.5)

    def busy(self, peer: str) -> int:
        """Reads in flight from ``peer``."""
        with self._cond:
            return self._busy.get(peer, 0)

    def _release(self, chunk: int) -> None:
        peer = self._flight.pop(chunk, None)
        if peer is not None:
            self._busy[peer] -= 1
            if not self._busy[peer]:
                del self._busy[peer]

    def done(self, chunk: int) -> None:
        with self._cond:
            self._release(chunk)
            self._todo.discard(chunk)
            self._done.add(chunk)
            self.version += 1
            self._cond.notify_all()

    def failed(self, chunk: int) -> None:
        """A read of ``chunk`` failed: it is wanted again."""
        with self._cond:
            self._release(chunk)
            if chunk not in self._done:
                self._todo.add(chunk)
            self._cond.notify_all()

    def finished_locked(self) -> bool:
        return not self._todo and not self._flight

    def finished(self) -> bool:
        with self._cond:
            return self.finished_locked()

    def left(self) -> int:
        """Chunks not done yet (wanted or in flight)."""
        with self._cond:
            return len(self._todo) + len(self._flight)

    def servable(self) -> bool:
        """Whether the fetch can move now: a chunk is in flight, or a live peer
        holds a wanted chunk."""
        with self._cond:
            if self._flight:
                return True
            return any(h is None or (self._todo & h) for h in self._have.values()) \
                and bool(self._todo)

    def wait(self, timeout: float) -> None:
        """Sleep until something changes (a chunk done or failed, a peer added,
        grown or dropped) or ``timeout`` s pass."""
        with self._cond:
            if not self._closed and not self.finished_locked():
                self._cond.wait(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """End every stream (their next :meth:`take` returns None)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
