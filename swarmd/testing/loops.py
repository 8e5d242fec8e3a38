"""A trio run on the calling thread plus an asyncio loop in a second thread,
the daemon's threading model in small, with a :class:`Bridge` between them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from swarmd.runtime.bridge import Bridge


class AsyncioThread:
    """An asyncio loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="test-asyncio", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> AsyncioThread:
        self._thread.start()
        return self

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run ``coro`` in the loop from another thread and wait for it (blocking)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(_cancel_all(), 5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def run_with_bridge(main: Callable[[Bridge, AsyncioThread], Awaitable[None]],
                    timeout: float = 20.0) -> None:
    """trio.run(main(bridge, aio)) with an asyncio thread alongside."""
    aio = AsyncioThread().start()

    async def _main() -> None:
        bridge = Bridge(trio.lowlevel.current_trio_token(), aio.loop)
        with trio.fail_after(timeout):
            await main(bridge, aio)

    try:
        trio.run(_main)
    finally:
        aio.stop()


async def in_asyncio(aio: AsyncioThread, coro: Any) -> Any:
    """From trio: run ``coro`` in the asyncio thread and await its result
    without the Bridge under test (a worker thread blocks on it)."""
    fut = asyncio.run_coroutine_threadsafe(coro, aio.loop)
    return await trio.to_thread.run_sync(  # type: ignore[call-arg]
        fut.result, abandon_on_cancel=True)
