"""The asyncio thread: control socket, OpenAI port and local engines.

Theory of operation
-------------------
aiohttp needs asyncio; py-libp2p needs trio (FIELD-NOTES measured the
options: two threads beat trio-asyncio by about 2x on HTTP).  This thread runs
one asyncio loop with:

- the control API on the unix socket (``swarmd.control.server``), answering
  from the latest :class:`~swarmd.runtime.snapshot.Snapshot` with no crossing;
- the engine manager, polling this node's engines and pushing their record
  into the node's gossiped state when it changes (one crossing per change);
- the OpenAI-compatible API (``swarmd.api``), which calls local engines
  directly and crosses into trio only to forward to another node.

:meth:`HttpSide.start` returns once every listener is bound (or raises the
error that stopped it); :meth:`stop` shuts the loop down from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from swarmd.log import kv

if TYPE_CHECKING:
    from swarmd.config import Config
    from swarmd.runtime.node import Node

log = logging.getLogger("swarmd.http")


class HttpSide:
    def __init__(self, cfg: Config, node: Node) -> None:
        self.cfg = cfg
        self.node = node
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._cleanups: list[Callable[[], Any]] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="swarmd-http", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start() or logged
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("http side crashed")

    async def _main(self) -> None:
        from swarmd.runtime.services import start_services

        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self._cleanups = await start_services(self.cfg, self.node, self.loop)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        log.info("http side ready", extra=kv(api=self.cfg.api.listen))
        await self._stop.wait()
        for cleanup in reversed(self._cleanups):
            try:
                res = cleanup()
                if asyncio.iscoroutine(res):
                    await asyncio.wait_for(res, 5)
            except Exception:
                log.exception("cleanup failed")
