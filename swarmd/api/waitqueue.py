"""Per-model FIFO queues for requests that find every engine at capacity.

Theory of operation
-------------------
When the router says every candidate for a model is full (``saturated``), the
request does not fail: it waits here, on the node that received it, in a FIFO
per model, for at most ``[routing] queue_timeout`` seconds and with at most
``[routing] queue_max`` waiting per model (then 429 with Retry-After).

Only the head of a queue tries to dispatch.  It tries again when something
may have freed a slot -- :meth:`WaitQueues.notify` is called when a request
on any engine of that model ends here (this node's own traffic, local or
remote) -- and every ``recheck`` seconds regardless, since a slot freed by
another node's traffic is only learnt from gossip.  A head that dispatched
wakes the next one at once, so several freed slots fill in one pass.
Newcomers join the tail while anyone waits, so nobody overtakes.

A waiter whose client goes away is cancelled (aiohttp cancels the handler);
it leaves the queue at once and, if it was the head, wakes the next.

``on_depth`` (optional) hears ``(model, depth)`` after each change; the
daemon gossips depths as load and exports them as metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The model's queue holds ``queue_max`` requests already."""


class QueueTimeout(Exception):
    """The request waited ``queue_timeout`` seconds without a free slot."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"waited {waited:.1f} s")
        self.waited = waited


@dataclass(eq=False)
class _Waiter:
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class QueueStats:
    queued: int = 0  # requests that had to wait
    timeouts: int = 0
    rejected_full: int = 0
    cancelled: int = 0


class WaitQueues(Generic[T]):
    def __init__(self, *, timeout: float, max_waiting: int, recheck: float = 0.25,
                 on_depth: Callable[[str, int], None] | None = None,
                 on_wait: Callable[[float], None] | None = None) -> None:
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.recheck = recheck
        self.on_depth = on_depth
        self.on_wait = on_wait  # seconds each dispatched waiter waited
        self.stats = QueueStats()
        self._queues: dict[str, deque[_Waiter]] = {}

    def depth(self, model: str) -> int:
        q = self._queues.get(model)
        return len(q) if q else 0

    def depths(self) -> dict[str, int]:
        return {m: len(q) for m, q in self._queues.items() if q}

    def notify(self, model: str) -> None:
        """A slot may have freed for ``model``: the head tries again."""
        q = self._queues.get(model)
        if q:
            q[0].wake.set()

    async def dispatch(self, model: str, attempt: Callable[[], Awaitable[T | None]]) -> T:
        """``attempt()`` until it gives a result, queueing while it gives None.

        ``attempt`` returns None when every candidate is full; anything it
        raises propagates (after leaving the queue).  Raises QueueFull or
        QueueTimeout.
        """
        q = self._queues.get(model)
        if not q:
            got = await attempt()
            if got is not None:
                return got
        q = self._queues.setdefault(model, deque())
        if self.max_waiting <= 0 or len(q) >= self.max_waiting:
            self.stats.rejected_full += 1
            raise QueueFull(model)
        me = _Waiter()
        q.append(me)
        self.stats.queued += 1
        self._depth(model)
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        try:
            while True:
                if q and q[0] is me:
                    got = await attempt()
                    if got is not None:
                        if self.on_wait is not None:
                            self.on_wait(time.monotonic() - t0)
                        return got
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stats.timeouts += 1
                    raise QueueTimeout(time.monotonic() - t0)
                me.wake.clear()
                try:
                    async with asyncio.timeout(min(left, self.recheck)):
                        await me.wake.wait()
                except TimeoutError:
                    pass
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise
        finally:
            was_head = bool(q) and q[0] is me
            try:
                q.remove(me)
            except ValueError:
                pass
            if not q:
                self._queues.pop(model, None)
            elif was_head:
                q[0].wake.set()
            self._depth(model)

    def _depth(self, model: str) -> None:
        if self.on_depth is not None:
            self.on_depth(model, self.depth(model))
