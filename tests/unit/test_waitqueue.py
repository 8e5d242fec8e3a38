"""swarmd.api.waitqueue: FIFO per model, timeout, bound, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from swarmd.api.waitqueue import QueueFull, QueueTimeout, WaitQueues

pytestmark = pytest.mark.timeout(20)


class Slots:
    """A pool of ``n`` slots; attempt() takes one or says None (full)."""

    def __init__(self, n: int) -> None:
        self.free = n
        self.order: list[int] = []

    def attempt(self, who: int):  # type: ignore[no-untyped-def]
        async def go() -> int | None:
            if self.free <= 0:
                return None
            self.free -= 1
            self.order.append(who)
            return who
        return go


def test_waiters_are_served_in_arrival_order_when_slots_free() -> None:
    async def t() -> None:
        depths: list[int] = []
        q: WaitQueues[int] = WaitQueues(timeout=5, max_waiting=10, recheck=10,
                                        on_depth=lambda m, d: depths.append(d))
        slots = Slots(1)
        assert await q.dispatch("m", slots.attempt(0)) == 0
        tasks = [asyncio.create_task(q.dispatch("m", slots.attempt(i))) for i in range(1, 6)]
        await asyncio.sleep(0.01)
        assert q.depth("m") == 5
        for _ in range(5):
            slots.free += 1
            q.notify("m")  # a request ended: the head tries at once
            await asyncio.sleep(0.01)
        assert [await x for x in tasks] == [1, 2, 3, 4, 5]
        assert slots.order == [0, 1, 2, 3, 4, 5]
        assert q.depth("m") == 0 and max(depths) == 5 and depths[-1] == 0

    asyncio.run(t())


def test_a_freed_slot_found_by_recheck_without_notify() -> None:
    async def t() -> None:
        q: WaitQueues[int] = WaitQueues(timeout=5, max_waiting=10, recheck=0.05)
        slots = Slots(0)
        task = asyncio.create_task(q.dispatch("m", slots.attempt(1)))
        await asyncio.sleep(0.1)
        slots.free = 1  # freed elsewhere (learnt from gossip): no notify
        assert await asyncio.wait_for(task, 1) == 1

    asyncio.run(t())


def test_timeout_and_full_queue() -> None:
    async def t() -> None:
        q: WaitQueues[int] = WaitQueues(timeout=0.2, max_waiting=2, recheck=0.05)
        slots = Slots(0)
        a = asyncio.create_task(q.dispatch("m", slots.attempt(1)))
        b = asyncio.create_task(q.dispatch("m", slots.attempt(2)))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await q.dispatch("m", slots.attempt(3))
        with pytest.raises(QueueTimeout):
            await a
        with pytest.raises(QueueTimeout):
            await b
        assert q.stats.timeouts == 2 and q.stats.rejected_full == 1
        # Another model's queue is independent.
        slots.free = 1
        assert await q.dispatch("other", slots.attempt(4)) == 4

    asyncio.run(t())


def test_cancelled_waiter_leaves_at_once_and_wakes_the_next() -> None:
    async def t() -> None:
        q: WaitQueues[int] = WaitQueues(timeout=5, max_waiting=10, recheck=10)
        slots = Slots(0)
        a = asyncio.create_task(q.dispatch("m", slots.attempt(1)))
        await asyncio.sleep(0.01)
        b = asyncio.create_task(q.dispatch("m", slots.attempt(2)))
        await asyncio.sleep(0.01)
        slots.free = 1
        a.cancel()  # the head's client went away: the next one takes the slot
        assert await asyncio.wait_for(b, 1) == 2
        assert q.depth("m") == 0 and q.stats.cancelled == 1

    asyncio.run(t())


def test_newcomer_does_not_overtake_a_waiter() -> None:
    async def t() -> None:
        q: WaitQueues[int] = WaitQueues(timeout=5, max_waiting=10, recheck=10)
        slots = Slots(0)
        a = asyncio.create_task(q.dispatch("m", slots.attempt(1)))
        await asyncio.sleep(0.01)
        slots.free = 1  # free, but not notified yet
        b = asyncio.create_task(q.dispatch("m", slots.attempt(2)))
        await asyncio.sleep(0.01)
        assert not b.done()  # joined the tail
        q.notify("m")
        assert await asyncio.wait_for(a, 1) == 1
        slots.free = 1
        q.notify("m")
        assert await asyncio.wait_for(b, 1) == 2

    asyncio.run(t())
