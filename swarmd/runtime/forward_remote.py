"""The asyncio side of a forwarded request: :class:`BridgedForwarder`.

The API's ``Forwarder``: each ``open`` runs :class:`~swarmd.runtime.forward.ForwardClient`
in the trio thread through the bridge, and the answer's frames come back
over a bridge channel (:class:`_RemoteResponse`).  Forwards in flight are
checked against membership every :data:`DEATH_POLL` seconds: one whose node
is no longer alive is abandoned (``unavailable``; before the first byte the
proxy retries elsewhere), since a cut link sends no reset and would
otherwise hold the request until a timeout.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from swarmd.api.upstream import Deadlines, ProxyRequest, UpstreamError
from swarmd.core import forward_wire as fw
from swarmd.runtime.bridge import Bridge, Channel, ChannelClosed
from swarmd.runtime.forward import CHANNEL_ITEMS, ForwardClient, _upstream_error


class NodeDead(ConnectionError):
    """The node an exchange runs on was declared dead (membership)."""


#: Seconds between checks of in-flight forwards against membership.
DEATH_POLL = 0.5


class _RemoteResponse:
    def __init__(self, head: fw.Head, pending: list[fw.Frame], chan: Channel[fw.Frame],
                 task: asyncio.Future[None], deadlines: Deadlines,
                 on_close: Callable[[], None] = lambda: None) -> None:
        self.status = head.status
        self.headers = head.headers
        self._pending = deque(pending)
        self._chan = chan
        self._task = task
        self._deadlines = deadlines
        self._done = False
        self._on_close = on_close

    async def read(self) -> bytes:
        if self._done:
            return b""
        if not self._pending:
            try:
                async with asyncio.timeout(self._deadlines.cap(self._deadlines.idle) + 1.0):
                    self._pending.extend(await self._chan.receive_batch())
            except TimeoutError:
                raise UpstreamError("timeout", "the remote node went silent") from None
            except ChannelClosed:
                raise UpstreamError("upstream", "the forward ended without End") from None
            except NodeDead as exc:
                raise UpstreamError("unavailable", str(exc)) from None
        out: list[bytes] = []
        while self._pending:
            frame = self._pending[0]
            if isinstance(frame, fw.Data):
                out.append(frame.data)
                self._pending.popleft()
                continue
            if out:
                break  # deliver the data first; the terminal frame next time
            self._pending.popleft()
            self._done = True
            if isinstance(frame, fw.Error):
                raise _upstream_error(frame)
            return b""  # End
        return b"".join(out)

    async def aclose(self) -> None:
        self._on_close()
        if not self._task.done():
            if self._done:
                # Complete: let the trio side put the stream back in the pool.
                try:
                    async with asyncio.timeout(2.0):
                        await asyncio.shield(self._task)
                except BaseException:
                    pass
            if not self._task.done():
                self._task.cancel()  # mid-response: Cancel + reset on the trio side
                await asyncio.gather(self._task, return_exceptions=True)
        self._chan.abort(ConnectionResetError("response closed"))


class BridgedForwarder:
    """The API's ``Forwarder``: runs :class:`ForwardClient` in trio via the bridge."""

    def __init__(self, bridge: Bridge, client: ForwardClient,
                 alive: Callable[[str], bool] | None = None) -> None:
        self.bridge = bridge
        self.client = client
        #: False once membership declared a node dead (suspect is not dead:
        #: a slow node is not cut off); forwards to it are abandoned within
        #: DEATH_POLL seconds (before
        #: the first byte: retried elsewhere) instead of waiting for a
        #: timeout -- a cut link sends no reset.
        self.alive = alive
        self._inflight: dict[str, set[Channel[fw.Frame]]] = {}
        self._watcher: asyncio.Task[None] | None = None

    def _track(self, node_id: str, chan: Channel[fw.Frame]) -> Callable[[], None]:
        if self.alive is None:
            return lambda: None
        self._inflight.setdefault(node_id, set()).add(chan)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch())

        def untrack() -> None:
            chans = self._inflight.get(node_id)
            if chans is not None:
                chans.discard(chan)
                if not chans:
                    del self._inflight[node_id]
        return untrack

    async def _watch(self) -> None:
        assert self.alive is not None
        while self._inflight:
            await asyncio.sleep(DEATH_POLL)
            for node_id, chans in list(self._inflight.items()):
                if not self.alive(node_id):
                    for chan in list(chans):
                        chan.abort(NodeDead(f"node {node_id[-8:]} was declared dead"))

    async def open(self, node_id: str, engine_id: str, req: ProxyRequest,
                   deadlines: Deadlines) -> _RemoteResponse:
        left = deadlines.left()
        if left <= 0:
            raise UpstreamError("timeout", "request deadline passed")
        request = fw.Request(
            route=req.route, method=req.method, engine=engine_id, model=req.model,
            headers=req.headers, timeout=left, first_byte=deadlines.first_byte,
            idle=deadlines.idle, request_id=req.request_id,
        )
        chan: Channel[fw.Frame] = self.bridge.channel_to_asyncio(CHANNEL_ITEMS)
        task = asyncio.ensure_future(
            self.bridge.to_trio(self.client.forward, node_id, request, req.body, chan))
        untrack = self._track(node_id, chan)
        try:
            async with asyncio.timeout(deadlines.cap(deadlines.connect + deadlines.first_byte)
                                       + 1.0):
                batch = await chan.receive_batch()
        except BaseException as exc:
            untrack()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            chan.abort(ConnectionResetError("forward abandoned"))
            if isinstance(exc, NodeDead):
                raise UpstreamError("unavailable", str(exc)) from None
            if isinstance(exc, TimeoutError):
                raise UpstreamError("timeout", "no answer from the remote node") from None
            if isinstance(exc, ChannelClosed):
                raise UpstreamError("upstream", "the forward ended without an answer") from None
            raise
        first = batch[0]
        if isinstance(first, fw.Head):
            return _RemoteResponse(first, batch[1:], chan, task, deadlines, untrack)
        untrack()
        await asyncio.gather(task, return_exceptions=True)
        if isinstance(first, fw.Error):
            raise _upstream_error(first)
        raise UpstreamError("upstream", f"unexpected {type(first).__name__} from the forward")
