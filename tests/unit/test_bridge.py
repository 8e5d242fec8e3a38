"""trio <-> asyncio bridge: calls both ways, cancellation both ways, channels."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from swarmd.runtime.bridge import Bridge, ChannelClosed
from swarmd.testing.loops import AsyncioThread, in_asyncio, run_with_bridge

pytestmark = pytest.mark.timeout(30)


def test_to_trio_returns_and_raises() -> None:
    trio_thread = threading.get_ident()

    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        async def add(a: int, b: int) -> tuple[int, int]:
            await trio.lowlevel.checkpoint()
            return a + b, threading.get_ident()

        async def boom() -> None:
            raise KeyError("nope")

        async def caller() -> tuple[int, int]:
            assert threading.get_ident() != trio_thread
            with pytest.raises(KeyError):
                await bridge.to_trio(boom)
            return await bridge.to_trio(add, 2, 3)

        total, where = await in_asyncio(aio, caller())
        assert total == 5 and where == trio_thread

    run_with_bridge(main)


def test_to_asyncio_returns_and_raises() -> None:
    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        async def work(x: int) -> tuple[int, int]:
            await asyncio.sleep(0)
            return x * 2, threading.get_ident()

        async def boom() -> None:
            raise ValueError("bad")

        val, where = await bridge.to_asyncio(work(21))
        assert val == 42 and where != threading.get_ident()
        with pytest.raises(ValueError):
            await bridge.to_asyncio(boom())

    run_with_bridge(main)


def test_cancel_in_asyncio_cancels_trio_side() -> None:
    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        started = trio.Event()
        unwound: list[str] = []

        async def forever() -> None:
            started.set()
            try:
                await trio.sleep_forever()
            finally:
                unwound.append("trio")

        async def caller() -> str:
            task = asyncio.ensure_future(bridge.to_trio(forever))
            await asyncio.sleep(0.05)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # The trio side has unwound before the cancellation completes.
                return "cancelled" if unwound == ["trio"] else f"early {unwound}"
            return "not cancelled"

        assert await in_asyncio(aio, caller()) == "cancelled"
        assert started.is_set()

    run_with_bridge(main)


def test_cancel_in_trio_cancels_asyncio_side() -> None:
    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        unwound: list[str] = []

        async def forever() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                unwound.append("asyncio")

        with trio.move_on_after(0.05) as cs:
            await bridge.to_asyncio(forever())
        assert cs.cancelled_caught
        assert unwound == ["asyncio"]

    run_with_bridge(main)


def test_channel_trio_to_asyncio_backpressure_and_batching() -> None:
    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        chan = bridge.channel_to_asyncio(max_items=4)
        sent = 0

        async def producer() -> None:
            nonlocal sent
            for i in range(40):
                await chan.send(i)
                sent += 1
            chan.close()

        async with trio.open_nursery() as n:
            n.start_soon(producer)
            await trio.sleep(0.1)
            # Nobody receives: the sender is parked after max_items.
            assert sent == 4 and len(chan) == 4

            async def consumer() -> tuple[list[int], int]:
                got: list[int] = []
                batches = 0
                while True:
                    try:
                        batch = await chan.receive_batch()
                    except ChannelClosed:
                        return got, batches
                    assert len(batch) <= 4
                    batches += 1
                    got.extend(batch)
                    await asyncio.sleep(0.001)  # a slow HTTP client

            got, batches = await in_asyncio(aio, consumer())
        assert got == list(range(40))
        assert batches < 40  # bursts cross in batches
        assert chan.wakeups <= batches

    run_with_bridge(main)


def test_channel_asyncio_to_trio_abort_reaches_sender() -> None:
    async def main(bridge: Bridge, aio: AsyncioThread) -> None:
        chan = bridge.channel_to_trio(max_items=2)

        async def producer() -> str:
            try:
                for i in range(1000):
                    await chan.send(i)
            except ConnectionResetError:
                return "aborted"
            return "finished"

        fut = asyncio.run_coroutine_threadsafe(producer(), aio.loop)
        first = await chan.receive_batch()
        assert first[0] == 0
        chan.abort(ConnectionResetError("client went away"))
        res = await trio.to_thread.run_sync(fut.result, 5)
        assert res == "aborted"
        with pytest.raises(ConnectionResetError):
            await chan.receive_batch()

    run_with_bridge(main)


def test_bridge_closed_when_trio_finished() -> None:
    aio = AsyncioThread().start()
    holder: list[Bridge] = []

    async def grab() -> None:
        holder.append(Bridge(trio.lowlevel.current_trio_token(), aio.loop))

    trio.run(grab)

    async def noop() -> None:
        return None

    async def call() -> str:
        try:
            await holder[0].to_trio(noop)
        except RuntimeError as exc:
            return type(exc).__name__
        return "ran"

    try:
        assert aio.run(call()) == "BridgeClosed"
    finally:
        aio.stop()
