"""Length-prefixed frames on a libp2p stream.

A frame is a 4-byte big-endian length followed by that many bytes (1 ..
max_frame).  :class:`FrameReader` buffers the stream's reads (a read returns
whatever yamux has, not a whole frame) and enforces two deadlines: ``idle``,
how long a stream may stay silent between frames, and ``frame``, how long a
frame may take to arrive once its first byte has (a peer that sends half a
frame and stops cannot hold the reader).  A length of 0 or above max_frame
cannot be resynchronised and raises :class:`FrameError`; the caller resets the
stream.
"""

from __future__ import annotations

import math
import struct
from typing import Protocol

import trio
from libp2p.network.stream.exceptions import StreamEOF

HEADER = struct.Struct(">I")
_CHUNK = 64 * 1024


class FrameError(Exception):
    """The byte stream does not hold a valid frame; it cannot be resynchronised."""


class StreamClosedError(Exception):
    """The stream ended (EOF) between frames."""


class Readable(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...


def encode_frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


class FrameReader:
    def __init__(self, stream: Readable, max_frame: int, *, idle: float = math.inf,
                 frame: float = 10.0) -> None:
        self._stream = stream
        self._max = max_frame
        self._idle = idle
        self._frame = frame
        self._buf = bytearray()

    async def _fill(self, need: int, deadline: float) -> None:
        while len(self._buf) < need:
            with trio.move_on_at(deadline) as cs:
                try:
                    data = await self._stream.read(_CHUNK)
                except StreamEOF:
                    if not self._buf:
                        raise StreamClosedError() from None
                    raise FrameError("stream ended inside a frame") from None
            if cs.cancelled_caught:
                raise trio.TooSlowError()
            if not data:
                if not self._buf:
                    raise StreamClosedError()
                raise FrameError("stream ended inside a frame")
            self._buf += data

    async def read_frame(self) -> bytes:
        """The next frame's payload.  Raises StreamClosedError at a clean end,
        FrameError on a bad length, trio.TooSlowError past a deadline, or the
        stream's own errors."""
        now = trio.current_time()
        if not self._buf:
            await self._fill(1, now + self._idle)
            now = trio.current_time()
        deadline = now + self._frame
        await self._fill(HEADER.size, deadline)
        (n,) = HEADER.unpack_from(self._buf)
        if n == 0 or n > self._max:
            raise FrameError(f"frame length {n} out of range 1..{self._max}")
        await self._fill(HEADER.size + n, deadline)
        payload = bytes(self._buf[HEADER.size : HEADER.size + n])
        del self._buf[: HEADER.size + n]
        return payload
