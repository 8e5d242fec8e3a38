"""In-memory stand-ins for libp2p streams (trio), for forwarding tests.

:func:`stream_pair` gives two connected :class:`MemStream` ends with the
INetStream calls we use: ``read(n)`` (b"" at EOF), ``write``, ``close``
(half-close: the peer reads EOF) and ``reset`` (the peer's reads and writes
fail).  Each direction buffers at most ``window`` bytes, like a yamux
window: a writer blocks while the reader does not read.

:class:`MemOpener` is a fake ``P2PNode.open_stream``: it runs a handler
(the server side) for every stream it opens, in a nursery, and counts opens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio


class StreamResetError(Exception):
    pass


class _Pipe:
    def __init__(self, window: int) -> None:
        self.buf = bytearray()
        self.window = window
        self.eof = False
        self.reset = False
        self.changed = trio.Event()

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class MemStream:
    def __init__(self, rx: _Pipe, tx: _Pipe) -> None:
        self._rx = rx
        self._tx = tx
        self.bytes_written = 0

    async def read(self, n: int | None = None) -> bytes:
        while True:
            if self._rx.reset:
                raise StreamResetError("stream reset")
            if self._rx.buf:
                k = len(self._rx.buf) if n is None else min(n, len(self._rx.buf))
                data = bytes(self._rx.buf[:k])
                del self._rx.buf[:k]
                self._rx.poke()
                return data
            if self._rx.eof:
                return b""
            await self._rx.changed.wait()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._tx.reset:
                raise StreamResetError("stream reset")
            if self._tx.eof:
                raise StreamResetError("stream closed for writing")
            room = self._tx.window - len(self._tx.buf)
            if room <= 0:
                await self._tx.changed.wait()
                continue
            self._tx.buf += view[:room]
            self.bytes_written += min(room, len(view))
            view = view[room:]
            self._tx.poke()
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        self._tx.eof = True
        self._tx.poke()
        await trio.lowlevel.checkpoint()

    async def reset(self) -> None:
        for p in (self._rx, self._tx):
            p.reset = True
            p.poke()
        await trio.lowlevel.checkpoint()

    @property
    def is_reset(self) -> bool:
        return self._rx.reset


def stream_pair(window: int = 256 * 1024) -> tuple[MemStream, MemStream]:
    a_to_b, b_to_a = _Pipe(window), _Pipe(window)
    return MemStream(b_to_a, a_to_b), MemStream(a_to_b, b_to_a)


Handler = Callable[[str, Any], Awaitable[None]]


class MemOpener:
    """open_stream(peer_id, protocol) -> a MemStream whose far end runs ``handler``."""

    def __init__(self, nursery: trio.Nursery, handler: Handler, *, self_id: str = "client",
                 window: int = 256 * 1024, fail: bool = False) -> None:
        self.nursery = nursery
        self.handler = handler
        self.self_id = self_id
        self.window = window
        self.fail = fail
        self.opened: list[tuple[str, str]] = []
        self.server_ends: list[MemStream] = []

    async def open_stream(self, peer_id: str, protocol: str) -> MemStream:
        await trio.lowlevel.checkpoint()
        if self.fail:
            raise ConnectionRefusedError(f"cannot reach {peer_id}")
        self.opened.append((peer_id, protocol))
        client, server = stream_pair(self.window)
        self.server_ends.append(server)
        self.nursery.start_soon(self.handler, self.self_id, server)
        return client
