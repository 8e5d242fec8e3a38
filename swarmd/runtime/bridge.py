"""Calls and chunk streams between the trio thread and the asyncio thread.

Theory of operation
-------------------
The daemon runs trio (libp2p) on the main thread and asyncio (aiohttp) on a
second one.  Neither loop may block, so every crossing is a callback queued
on the other loop: ``TrioToken.run_sync_soon`` into trio and
``loop.call_soon_threadsafe`` into asyncio.  Both are thread-safe and never
block; each crossing costs about 0.3 ms of latency (measured: README, "The
OpenAI port"), so hot streams cross in batches.

:meth:`Bridge.to_trio` (await it in asyncio) runs a trio coroutine function
as a trio system task under its own cancel scope and hands back its result or
exception.  Cancelling the awaiting asyncio task cancels that scope; the
asyncio side then waits for the trio task to finish unwinding, so resources
it held are released before the cancellation completes.

:meth:`Bridge.call_trio_soon` and :meth:`Bridge.call_asyncio_soon` queue a
plain call on the other loop and return at once (fire and forget: record
changes, stop).

:meth:`Bridge.to_asyncio` (await it in trio) runs a coroutine as an asyncio
task.  Cancelling the trio caller cancels the asyncio task and waits for it
to finish unwinding, the same way round.

:class:`Channel` is a bounded single-producer single-consumer queue whose
two ends live in different loops (:meth:`Bridge.channel_to_asyncio`,
:meth:`Bridge.channel_to_trio`).  ``send`` waits while ``max_items`` are
queued (backpressure: a slow HTTP client slows the libp2p reader, and the
other way round).  ``receive_batch`` returns *everything* queued at once, and
a sender wakes the receiver only if it is parked, so a burst of chunks costs
one crossing, not one per chunk.  ``close()`` ends the stream after what is
queued; ``abort(exc)`` from either end drops what is queued and makes both
ends raise ``exc``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

import trio

__all__ = ["Bridge", "BridgeClosed", "Channel", "ChannelClosed"]

T = TypeVar("T")

#: Seconds a cancelled crossing waits for the other side to unwind.
UNWIND_TIMEOUT = 5.0


class BridgeClosed(RuntimeError):
    """The other loop is gone (shutting down)."""


class ChannelClosed(Exception):
    """The channel ended: closed by the sender after its last item."""


class _Side:
    """How one loop parks a task and how another thread wakes it."""

    def new_waiter(self) -> Any:
        raise NotImplementedError

    async def wait(self, waiter: Any) -> None:
        raise NotImplementedError

    def wake(self, waiter: Any) -> None:
        """Thread-safe: release ``waiter`` (idempotent)."""
        raise NotImplementedError


class _AsyncioSide(_Side):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def new_waiter(self) -> asyncio.Future[None]:
        return self.loop.create_future()

    async def wait(self, waiter: asyncio.Future[None]) -> None:
        await waiter

    def wake(self, waiter: asyncio.Future[None]) -> None:
        def _set() -> None:
            if not waiter.done():
                waiter.set_result(None)

        try:
            self.loop.call_soon_threadsafe(_set)
        except RuntimeError:  # loop closed: nobody is waiting any more
            pass


class _TrioSide(_Side):
    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token

    def new_waiter(self) -> trio.Event:
        return trio.Event()

    async def wait(self, waiter: trio.Event) -> None:
        await waiter.wait()

    def wake(self, waiter: trio.Event) -> None:
        try:
            self.token.run_sync_soon(waiter.set)
        except trio.RunFinishedError:
            pass


class Channel(Generic[T]):
    """Bounded cross-loop queue; one end sends in one loop, the other receives."""

    def __init__(self, send_side: _Side, recv_side: _Side, max_items: int = 32) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self._send_side = send_side
        self._recv_side = recv_side
        self._max = max_items
        self._lock = threading.Lock()
        self._items: deque[T] = deque()
        self._closed = False
        self._error: BaseException | None = None
        self._send_waiter: Any = None
        self._recv_waiter: Any = None
        #: Crossings made to wake the receiver (tests and stats).
        self.wakeups = 0

    # -- sending end ---------------------------------------------------------------

    async def send(self, item: T) -> None:
        """Queue one item; waits while the channel is full."""
        while True:
            with self._lock:
                if self._error is not None:
                    raise self._error
                if self._closed:
                    raise ChannelClosed("send on a closed channel")
                if len(self._items) < self._max:
                    self._items.append(item)
                    rw, self._recv_waiter = self._recv_waiter, None
                    break
                waiter = self._send_waiter = self._send_side.new_waiter()
            await self._send_side.wait(waiter)
        if rw is not None:
            self.wakeups += 1
            self._recv_side.wake(rw)

    def close(self) -> None:
        """End of stream after the queued items (sender; any thread)."""
        with self._lock:
            self._closed = True
            rw, self._recv_waiter = self._recv_waiter, None
        if rw is not None:
            self._recv_side.wake(rw)

    # -- receiving end ------------------------------------------------------------------

    async def receive_batch(self) -> list[T]:
        """Every queued item (at least one); waits for one if empty.

        Raises ChannelClosed after close() once drained, or the abort error."""
        while True:
            with self._lock:
                if self._error is not None:
                    raise self._error
                if self._items:
                    batch = list(self._items)
                    self._items.clear()
                    sw, self._send_waiter = self._send_waiter, None
                    break
                if self._closed:
                    raise ChannelClosed()
                waiter = self._recv_waiter = self._recv_side.new_waiter()
            await self._recv_side.wait(waiter)
        if sw is not None:
            self._send_side.wake(sw)
        return batch

    # -- either end --------------------------------------------------------------------

    def abort(self, exc: BaseException) -> None:
        """Drop what is queued; both ends raise ``exc`` from now on (any thread)."""
        with self._lock:
            if self._error is None:
                self._error = exc
            self._items.clear()
            sw, self._send_waiter = self._send_waiter, None
            rw, self._recv_waiter = self._recv_waiter, None
        if sw is not None:
            self._send_side.wake(sw)
        if rw is not None:
            self._recv_side.wake(rw)

    @property
    def closed(self) -> bool:
        return self._closed or self._error is not None

    def __len__(self) -> int:
        return len(self._items)


class Bridge:
    """Crossings between one trio run (token) and one asyncio loop."""

    def __init__(self, trio_token: trio.lowlevel.TrioToken,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.trio_token = trio_token
        self.loop = loop
        self._asyncio = _AsyncioSide(loop)
        self._trio = _TrioSide(trio_token)

    # -- asyncio -> trio ----------------------------------------------------------------

    async def to_trio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` in trio; call from the asyncio loop."""
        fut: asyncio.Future[T] = self.loop.create_future()
        scope = trio.CancelScope()

        def deliver(ok: bool, value: Any) -> None:
            if fut.done():
                return
            if ok:
                fut.set_result(value)
            elif value is None:
                fut.cancel()
            else:
                fut.set_exception(value)

        async def runner() -> None:
            try:
                with scope:
                    result = await fn(*args)
                    self._call_asyncio(deliver, True, result)
                    return
                # Only our own scope's cancel (asked by the asyncio side) lands here.
                self._call_asyncio(deliver, False, None)
            except Exception as exc:  # handed to the asyncio side, never lost
                self._call_asyncio(deliver, False, exc)
            except BaseException as exc:  # the trio run is ending
                self._call_asyncio(deliver, False, BridgeClosed(f"trio side stopped: {exc!r}"))
                raise

        def spawn() -> None:
            trio.lowlevel.spawn_system_task(runner, name=f"bridge:{getattr(fn, '__name__', fn)}")

        try:
            self.trio_token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            raise BridgeClosed("the trio loop has finished") from None
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if fut.done():
                raise
            try:
                self.trio_token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                raise asyncio.CancelledError() from None
            # Wait (bounded) for the trio task to unwind before we report cancelled.
            try:
                await asyncio.wait_for(asyncio.shield(fut), UNWIND_TIMEOUT)
            except BaseException:
                pass
            raise

    def call_trio_soon(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue ``fn(*args)`` in trio and return at once (fire and forget).

        For rare commands with no answer (record changes, stop); safe from
        any thread.  Silently dropped once the trio run has finished.
        """
        try:
            self.trio_token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    def _call_asyncio(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # asyncio loop closed
            pass

    def call_asyncio_soon(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue ``fn(*args)`` in asyncio and return at once; safe from any thread."""
        self._call_asyncio(fn, *args)

    # -- trio -> asyncio ----------------------------------------------------------------

    async def to_asyncio(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``await coro`` as an asyncio task; call from trio."""
        done = trio.Event()
        token = self.trio_token
        holder: dict[str, Any] = {}

        def on_done(task: asyncio.Task[T]) -> None:  # asyncio thread
            if task.cancelled():
                holder["out"] = (False, None)
            elif (exc := task.exception()) is not None:
                holder["out"] = (False, exc)
            else:
                holder["out"] = (True, task.result())
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        def start() -> None:  # asyncio thread
            task = self.loop.create_task(coro)
            holder["task"] = task
            task.add_done_callback(on_done)

        def cancel() -> None:  # asyncio thread, always after start()
            task = holder.get("task")
            if task is not None:
                task.cancel()

        try:
            self.loop.call_soon_threadsafe(start)
        except RuntimeError:
            coro.close()
            raise BridgeClosed("the asyncio loop is closed") from None
        try:
            await done.wait()
        except trio.Cancelled:
            try:
                self.loop.call_soon_threadsafe(cancel)
            except RuntimeError:
                raise
            with trio.CancelScope(shield=True), trio.move_on_after(UNWIND_TIMEOUT):
                await done.wait()
            raise
        ok, value = holder["out"]
        if ok:
            return value  # type: ignore[no-any-return]
        if value is None:
            raise BridgeClosed("the asyncio task was cancelled")
        raise value

    # -- channels -------------------------------------------------------------------------

    def channel_to_asyncio(self, max_items: int = 32) -> Channel[Any]:
        """Trio sends, asyncio receives."""
        return Channel(self._trio, self._asyncio, max_items)

    def channel_to_trio(self, max_items: int = 32) -> Channel[Any]:
        """Asyncio sends, trio receives."""
        return Channel(self._asyncio, self._trio, max_items)
