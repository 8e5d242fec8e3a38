"""The asyncio thread: control socket, OpenAI port and local engines.

Theory of operation
-------------------
aiohttp needs asyncio; py-libp2p needs trio (measured: two threads beat
trio-asyncio by about 2x on HTTP).  This thread runs one asyncio loop with
what :func:`swarmd.runtime.services.start_services` starts:

- the control API on the unix socket (``swarmd.control.server``), answering
  from the latest :class:`~swarmd.core.snapshot.Snapshot` with no crossing;
- the engine manager, polling this node's engines and pushing their record
  into the node's gossiped state when it changes (one crossing per change);
- the OpenAI-compatible API (``swarmd.api``), which calls local engines
  directly and crosses into trio only to forward to another node.

:class:`HttpSide` knows nothing of what it runs: the composition root
(:mod:`swarmd.runtime.assembly`) passes ``start``, called in the new loop
with the :class:`~swarmd.runtime.bridge.Bridge` between the trio run and
this loop.  :meth:`HttpSide.start` returns what ``start`` returned once
every listener is bound (or raises the error that stopped it); :meth:`stop`
shuts the loop down from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from swarmd.log import kv
from swarmd.runtime.bridge import Bridge

log = logging.getLogger("swarmd.http")


class HasCleanups(Protocol):
    cleanups: list[Callable[[], Any]]


class HttpSide:
    def __init__(self, trio_token: trio.lowlevel.TrioToken,
                 start: Callable[[Bridge], Awaitable[HasCleanups]], *, label: str = "",
                 event_loop: str = "asyncio") -> None:
        self.trio_token = trio_token
        self._start = start
        self._label = label
        self._loop_kind = event_loop
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._bridge: Bridge | None = None
        self._started: HasCleanups | None = None

    def start(self) -> HasCleanups:
        """Start the thread; blocks until its services are up (call off the trio thread)."""
        self._thread = threading.Thread(target=self._run, name="swarmd-http", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._started is not None
        return self._started

    def stop(self) -> None:
        """Stop the services and the thread; safe from any thread."""
        if self._bridge is not None and self._stop is not None:
            self._bridge.call_asyncio_soon(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop] | None:
        """uvloop's loop for ``event_loop`` ``"uvloop"``/``"auto"`` (when installed)."""
        if self._loop_kind == "asyncio":
            return None
        try:
            import uvloop
        except ImportError:
            if self._loop_kind == "uvloop":
                raise RuntimeError("[api] event_loop = \"uvloop\" but uvloop is not "
                                   "installed (pip install uvloop)") from None
            return None
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=self._loop_factory()) as runner:
                runner.run(self._main())
        except BaseException as exc:  # reported to start() or logged
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("http side crashed")

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        log.debug("http side event loop", extra=kv(loop=type(self.loop).__module__))
        try:
            self._bridge = Bridge(self.trio_token, self.loop)
            started = await self._start(self._bridge)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._started = started
        self._ready.set()
        log.info("http side ready", extra=kv(api=self._label))
        await self._stop.wait()
        for cleanup in reversed(started.cleanups):
            try:
                res = cleanup()
                if asyncio.iscoroutine(res):
                    await asyncio.wait_for(res, 5)
            except Exception:
                log.exception("cleanup failed")
