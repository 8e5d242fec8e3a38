"""The range reader's receive low-water mark (``SO_RCVLOWAT``), with a fake transport.

A body well past :data:`~swarmd.dataplane.blobread.LOWAT` +
:data:`~swarmd.dataplane.blobread.LOWAT_TAIL` raises the socket's mark to
``LOWAT`` once the answer head is read, and the mark goes back to 1 byte for
the last ``LOWAT_TAIL`` bytes, so the end of the body never waits for bytes
that will not come; a short body leaves the socket alone, and a transport
without a socket is fine.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from swarmd.dataplane import blobread
from swarmd.dataplane.blobread import LOWAT, LOWAT_TAIL, PIECE, RangeReader


class FakeTransport:
    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.paused = False

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def abort(self) -> None:
        pass


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a
    a.close()
    b.close()


def feed(reader: RangeReader, data: bytes) -> None:
    """What asyncio does: copy into get_buffer(), then buffer_updated()."""
    while data:
        buf = reader.get_buffer(len(data))
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        reader.buffer_updated(n)
        data = data[n:]


def lowat(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


def drain(reader: RangeReader) -> int:
    """Hand every ready piece back (as the consumer does); bytes taken."""
    got = 0
    while reader._ready:  # noqa: SLF001 - the consumer's side, without an event loop
        i, n = reader._ready.popleft()  # noqa: SLF001
        got += n
        reader.release(i)
    return got


def test_a_long_body_raises_the_mark_then_lowers_it_for_the_tail(sock: socket.socket) -> None:
    async def go() -> None:
        body = 3 * PIECE + LOWAT_TAIL // 2
        assert body > LOWAT + LOWAT_TAIL
        r = RangeReader()
        r.connection_made(FakeTransport(sock))  # type: ignore[arg-type]
        assert lowat(sock) == 1
        feed(r, f"HTTP/1.1 206 Partial Content\r\nContent-Length: {body}\r\n\r\n".encode())
        assert lowat(sock) == LOWAT
        got = 0
        sent = 0
        step = 64 * 1024
        while sent < body - LOWAT_TAIL - step:
            feed(r, b"x" * step)
            sent += step
            got += drain(r)
        assert lowat(sock) == LOWAT  # more than the tail still due
        feed(r, b"x" * step)
        sent += step
        assert lowat(sock) == 1  # the tail: every byte wakes the reader again
        feed(r, b"x" * (body - sent))
        got += drain(r)
        assert got == body and r.body_left == 0 and lowat(sock) == 1
    asyncio.run(go())


def test_a_short_body_or_no_socket_leaves_the_mark_alone(sock: socket.socket) -> None:
    async def go() -> None:
        r = RangeReader()
        r.connection_made(FakeTransport(sock))  # type: ignore[arg-type]
        feed(r, f"HTTP/1.1 206 Partial Content\r\nContent-Length: {LOWAT}\r\n\r\n".encode())
        assert lowat(sock) == 1
        r2 = RangeReader()
        r2.connection_made(FakeTransport(None))  # type: ignore[arg-type]
        n = LOWAT + LOWAT_TAIL + 1
        feed(r2, f"HTTP/1.1 206 Partial Content\r\nContent-Length: {n}\r\n\r\n".encode())
        assert r2.head is not None and r2.body_left == n
    asyncio.run(go())


def test_the_constants_keep_the_tail_above_what_tls_can_hold_back() -> None:
    # One 256 KiB socket read plus a partial 16 KiB record may sit above the
    # socket: the tail must be larger, or the last bytes could wait for ever.
    assert blobread.LOWAT_TAIL > 256 * 1024 + 17 * 1024
    assert blobread.LOWAT <= blobread.PIECE
