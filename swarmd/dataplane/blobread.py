"""Reading one blob range over its own TLS connection, straight into reused buffers.

Theory of operation
-------------------
A range read is one ``GET /dp/1/blobs/<digest>`` with ``Range`` and
``Connection: close`` on a fresh connection (a TLS handshake costs a few
milliseconds; a range is megabytes).  The protocol is an
``asyncio.BufferedProtocol``: asyncio's TLS layer then decrypts directly into
our buffers (``SSLObject.read(n, buffer)``) instead of allocating a new bytes
object per read and copying it on through aiohttp's stream reader; on this
kind of machine that allocation alone cost more than the decryption.

While more than :data:`LOWAT` + :data:`LOWAT_TAIL` body bytes are due, the
socket's ``SO_RCVLOWAT`` is :data:`LOWAT`: the kernel wakes the event loop
once that much has come instead of at every segment, which at LAN speeds
(bytes trickling in) was most of the loop's work -- measured over a 1 Gbit/s
link (bench/peer_pull_lan.py's namespaces), 253 MB through uvloop's TLS:
0.28-0.32 CPU s at every segment, 0.21-0.22 s with 256 KiB.  Past that the
mark goes back to 1 byte, so the end of the body can never wait for bytes
that will not come: the tail margin is more than TLS can hold back above
the socket (one 256 KiB read plus a partial record).

Two buffers of :data:`PIECE` bytes alternate: while the consumer hashes and
writes one (in a worker thread), the socket fills the other; if both are
taken, reading pauses (backpressure down to the sender).  The answer head is
parsed here (status line, headers up to :data:`MAX_HEAD` bytes); the body is
exactly ``Content-Length`` bytes: fewer at EOF is a truncated stream, more is
a bad answer.  Peers are checked with the same :class:`PeerCheck` as every
other data-plane connection before the request is written.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from dataclasses import dataclass

from multidict import CIMultiDict

MAX_HEAD = 16 * 1024
PIECE = 1024 * 1024
#: Bytes the kernel gathers before it wakes the reader (SO_RCVLOWAT).
LOWAT = 256 * 1024
#: Body bytes left at which the low-water mark goes back to 1.
LOWAT_TAIL = 1024 * 1024


class StreamFault(Exception):
    """The answer was not a well-formed HTTP/1.1 response; ``reason`` as BlobError's."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Head:
    status: int
    headers: CIMultiDict[str]
    content_length: int | None


def parse_head(raw: bytes) -> Head:
    try:
        text = raw.decode("latin-1")
        status_line, *lines = text.split("\r\n")
        version, code, *_ = status_line.split(" ", 2)
        if not version.startswith("HTTP/1."):
            raise ValueError(version)
        status = int(code)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            if not line:
                continue
            k, sep, v = line.partition(":")
            if not sep or not k or k != k.strip():
                raise ValueError(line)
            headers.add(k, v.strip())
    except ValueError as exc:
        raise StreamFault("bad_answer", f"malformed answer head: {exc}") from None
    cl = headers.get("Content-Length")
    if cl is not None and (not cl.isdigit() or len(cl) > 19):
        raise StreamFault("bad_answer", f"bad Content-Length {cl!r}")
    if "Transfer-Encoding" in headers:
        raise StreamFault("bad_answer", "a blob answer must not be chunked")
    return Head(status, headers, int(cl) if cl is not None else None)


class RangeReader(asyncio.BufferedProtocol):
    """Receives one HTTP answer; the body arrives in :data:`PIECE`-sized pieces."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._bufs = [bytearray(PIECE), bytearray(PIECE)]
        self._free = deque([1])
        self._cur = 0
        self._filled = 0
        self._head_buf = bytearray()
        self.head: Head | None = None
        self._left = 0  # body bytes still expected
        self._ready: deque[tuple[int, int]] = deque()  # (buffer index, length)
        self._event = asyncio.Event()
        self._done = False
        self._fault: StreamFault | None = None
        self._paused = False
        self._lowat = False  # SO_RCVLOWAT raised on the socket

    # -- asyncio side -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A read/write transport (uvloop's is not an asyncio.Transport subclass).
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.head is None:
            return memoryview(self._bufs[self._cur])[:MAX_HEAD]
        return memoryview(self._bufs[self._cur])[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._done:
            return
        if self.head is None:
            self._head_buf += memoryview(self._bufs[self._cur])[:nbytes]
            end = self._head_buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head_buf) > MAX_HEAD:
                    self._fail(StreamFault("bad_answer", "answer head too large"))
                return
            try:
                self.head = parse_head(bytes(self._head_buf[:end]))
            except StreamFault as exc:
                self._fail(exc)
                return
            rest = self._head_buf[end + 4:]
            self._head_buf = bytearray()
            self._left = self.head.content_length if self.head.content_length is not None \
                else -1
            if self._left > LOWAT + LOWAT_TAIL:
                self._lowat = self._set_lowat(LOWAT)
            self._event.set()
            if rest:
                self._bufs[self._cur][: len(rest)] = rest
                self._take(len(rest))
            return
        self._take(nbytes)

    def _take(self, nbytes: int) -> None:
        if self._left >= 0 and nbytes > self._left:
            self._fail(StreamFault("bad_answer", "more bytes than Content-Length"))
            return
        self._filled += nbytes
        if self._left >= 0:
            self._left -= nbytes
            if self._lowat and self._left <= LOWAT_TAIL:
                self._lowat = False
                self._set_lowat(1)
        if self._left == 0:
            self._hand_over()
            self._done = True
            self._event.set()
        elif self._filled == PIECE:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._filled:
            self._ready.append((self._cur, self._filled))
            self._event.set()
        self._filled = 0
        if self._free:
            self._cur = self._free.popleft()
        elif not self._done and self._left != 0:
            self._cur = -1
            self._pause()

    def _set_lowat(self, n: int) -> bool:
        """Set the socket's SO_RCVLOWAT; False where it cannot be (no socket)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)
        except OSError:
            return False
        return True

    def _pause(self) -> None:
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def _fail(self, fault: StreamFault) -> None:
        if self._fault is None:
            self._fault = fault
        self._done = True
        self._event.set()
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool | None:
        self.connection_lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done:
            return
        if self.head is not None and self._left < 0:  # no Content-Length: EOF ends it
            self._hand_over()
        elif self._fault is None:
            self._fault = StreamFault("truncated", "the connection ended before the body did"
                                      if self.head is not None else
                                      "the connection ended before an answer head")
        self._done = True
        self._event.set()

    # -- consumer side --------------------------------------------------------------------

    async def wait_head(self) -> Head:
        while self.head is None:
            if self._fault is not None:
                raise self._fault
            self._event.clear()
            await self._event.wait()
        return self.head

    async def next_piece(self) -> tuple[int, memoryview] | None:
        """(buffer index, bytes) of the next body piece; None at the end.  Give the
        buffer back with :meth:`release` once done with it."""
        while not self._ready:
            if self._fault is not None:
                raise self._fault
            if self._done:
                return None
            self._event.clear()
            await self._event.wait()
        i, n = self._ready.popleft()
        return i, memoryview(self._bufs[i])[:n]

    def discard(self) -> None:
        """Drop the body buffers now that the answer is done with.

        A closed reader sits in a reference cycle with its transport until the
        cyclic collector runs, and a pull opens one reader per range: without
        this, every range's 2 MiB stayed allocated until then, so a daemon's
        memory grew with the size of the file it pulled (+119 MiB for 2 GB).
        """
        self._done = True
        self._bufs = [bytearray(MAX_HEAD)]  # a scratch buffer for a late get_buffer
        self._cur = self._filled = 0
        self._ready.clear()
        self._free.clear()
        self.transport = None

    def release(self, index: int) -> None:
        if self._cur == -1:
            self._cur = index
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
        else:
            self._free.append(index)

    @property
    def body_left(self) -> int:
        return self._left
