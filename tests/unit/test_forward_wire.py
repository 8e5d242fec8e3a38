"""The forward protocol codec against the golden vectors in protocol/vectors/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmd.core import forward_wire as fw

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"
GOOD = json.loads((VECTORS / "forward.json").read_text())
BAD = json.loads((VECTORS / "forward-invalid.json").read_text())


def _unjson(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"$bytes"}:
        return bytes.fromhex(v["$bytes"])
    if isinstance(v, dict):
        return {k: _unjson(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unjson(x) for x in v]
    return v


def test_vectors_name_the_protocol() -> None:
    assert GOOD["protocol"] == BAD["protocol"] == fw.PROTOCOL_ID == "/swarmd/forward/1.0.0"
    assert GOOD["version"] == fw.VERSION


@pytest.mark.parametrize("vec", GOOD["frames"], ids=lambda v: v["name"])
def test_golden_frames_round_trip(vec: dict[str, Any]) -> None:
    raw = bytes.fromhex(vec["hex"])
    frames = fw.FrameDecoder().feed(raw)
    assert len(frames) == 1
    frame = frames[0]
    assert fw.to_map(frame) == _unjson(vec["map"])
    assert fw.encode(frame) == raw  # byte-exact encoder


@pytest.mark.parametrize("vec", BAD["frames"], ids=lambda v: v["name"])
def test_invalid_frames_are_rejected(vec: dict[str, Any]) -> None:
    with pytest.raises(fw.ForwardWireError):
        fw.FrameDecoder().feed(bytes.fromhex(vec["hex"]))


def test_decoder_is_incremental_and_ignores_unknown_keys() -> None:
    raw = b"".join(bytes.fromhex(v["hex"]) for v in GOOD["frames"])
    dec = fw.FrameDecoder()
    got: list[fw.Frame] = []
    for i in range(0, len(raw), 7):
        got += dec.feed(raw[i : i + 7])
    assert len(got) == len(GOOD["frames"]) and dec.pending == 0
    import msgpack

    payload = msgpack.packb({"t": "end", "future": [1, 2]}, use_bin_type=True)
    assert fw.FrameDecoder().feed(fw.HEADER.pack(len(payload)) + payload) == [fw.End()]
    payload = msgpack.packb({"t": "err", "code": "from-the-future"}, use_bin_type=True)
    assert fw.decode_payload(payload) == fw.Error("internal")


def test_data_frames_split_large_bodies() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    frames = fw.data_frames(body, body=True, end=True)
    assert all(isinstance(f, fw.Body) for f in frames)
    assert b"".join(f.data for f in frames if isinstance(f, fw.Body)) == body
    assert [f.end for f in frames if isinstance(f, fw.Body)] == [False] * 3 + [True]
    assert fw.data_frames(b"", body=True, end=True) == [fw.Body(b"", True)]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_never_crashes_the_decoder(data: bytes) -> None:
    try:
        fw.FrameDecoder().feed(data)
    except fw.ForwardWireError:
        pass
