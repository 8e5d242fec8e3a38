"""FrameReader: partial reads, bad lengths, deadlines against a silent peer."""

from __future__ import annotations

import pytest
import trio
from libp2p.network.stream.exceptions import StreamEOF

from swarmd.runtime.p2p_framing import FrameError, FrameReader, StreamClosedError, encode_frame


class Chunks:
    """A stream that returns the given chunks one read at a time, then EOF or silence."""

    def __init__(self, chunks: list[bytes], *, hang: bool = False) -> None:
        self.chunks = list(chunks)
        self.hang = hang

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.chunks:
            return self.chunks.pop(0)
        if self.hang:
            await trio.sleep_forever()
        raise StreamEOF()


@pytest.mark.trio
async def test_frames_split_across_reads() -> None:
    data = encode_frame(b"hello") + encode_frame(b"w" * 300)
    r = FrameReader(Chunks([data[i:i + 3] for i in range(0, len(data), 3)]), 1024)
    assert await r.read_frame() == b"hello"
    assert await r.read_frame() == b"w" * 300
    with pytest.raises(StreamClosedError):
        await r.read_frame()


@pytest.mark.trio
@pytest.mark.parametrize("raw", [b"\x00\x00\x00\x00", b"\x00\x00\x04\x01" + b"x" * 10])
async def test_bad_lengths(raw: bytes) -> None:
    with pytest.raises(FrameError):
        await FrameReader(Chunks([raw]), 1024).read_frame()


@pytest.mark.trio
async def test_eof_inside_frame() -> None:
    with pytest.raises(FrameError):
        await FrameReader(Chunks([b"\x00\x00\x00\x09abc"]), 1024).read_frame()


@pytest.mark.trio
async def test_half_frame_then_silence_times_out() -> None:
    r = FrameReader(Chunks([b"\x00\x00\x00\x09abc"], hang=True), 1024, frame=0.05)
    with pytest.raises(trio.TooSlowError):
        await r.read_frame()


@pytest.mark.trio
async def test_idle_timeout() -> None:
    r = FrameReader(Chunks([], hang=True), 1024, idle=0.05)
    with pytest.raises(trio.TooSlowError):
        await r.read_frame()
