"""Membership wire codec: golden vectors, strictness, fuzzing."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmd.core import wire

VECTORS = json.loads(
    (Path(__file__).parents[2] / "protocol" / "vectors" / "membership.json").read_text()
)


@pytest.mark.parametrize("vec", VECTORS["valid"], ids=lambda v: v["name"])
def test_golden_vector_decodes_and_reencodes(vec: dict) -> None:
    data = bytes.fromhex(vec["hex"])
    f = wire.decode_frame(data)
    assert f.version == vec["decoded"]["version"]
    assert [wire.describe(m) for m in f.messages] == vec["decoded"]["messages"]
    assert f.unknown == vec["decoded"].get("unknown", 0)
    if f.version == wire.WIRE_VERSION and not f.unknown and vec.get("reencode", True):
        assert wire.encode_frame(f.messages) == data


@pytest.mark.parametrize("vec", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_raise_decode_error(vec: dict) -> None:
    with pytest.raises(wire.DecodeError):
        wire.decode_frame(bytes.fromhex(vec["hex"]))


def test_message_types_are_append_only() -> None:
    # Renumbering breaks every deployed node: these values are frozen.
    assert {t.name: int(t) for t in wire.MsgType} == {
        "PING": 1, "ACK": 2, "PING_REQ": 3, "NACK": 4, "ALIVE": 5, "SUSPECT": 6, "DEAD": 7,
        "LEFT": 8, "RECORD": 9, "RECORD_DELTA": 10, "RECORD_REQ": 11, "PUSH_PULL": 12,
        "USER": 13, "SYNC": 14, "COMPRESSED": 15,
    }


def test_frame_from_preencoded_messages_equals_encode_frame() -> None:
    msgs: list[wire.Message] = [wire.Ping(1, "b"), wire.Ack(2)]
    msgs += [wire.Nack(i) for i in range(20)]
    assert wire.frame([wire.encode_message(m) for m in msgs]) == wire.encode_frame(msgs)
    assert wire.decode_frame(wire.encode_frame(msgs)).messages == tuple(msgs)


def test_push_pull_helper_matches_codec() -> None:
    entries = tuple(
        wire.StateEntry(f"n{i}", "x", ("/a",), wire.WireState.SUSPECT, i, 2 * i) for i in range(40)
    )
    pp = wire.PushPull(wire.PP_REPLY, entries)
    raw = wire.frame([wire.push_pull_messages(wire.PP_REPLY, [wire.encode_entry(e) for e in entries])])
    assert raw == wire.encode_frame([pp])
    assert wire.decode_frame(raw).messages == (pp,)


def test_oversized_frame_rejected() -> None:
    with pytest.raises(wire.DecodeError):
        wire.decode_frame(b"\x91\x01" + b"\x00" * 100, max_bytes=50)


def test_non_string_record_keys_rejected() -> None:
    raw = msgpack.packb([1, [9, "n", 1, {1: 2}, True]])
    with pytest.raises(wire.DecodeError):
        wire.decode_frame(raw)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_decode_error(data: bytes) -> None:
    try:
        wire.decode_frame(data)
    except wire.DecodeError:
        pass


_leaf = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1), st.booleans(), st.none(),
    st.text(max_size=8), st.binary(max_size=8), st.floats(allow_nan=False),
)
_obj = st.recursive(
    _leaf,
    lambda c: st.one_of(st.lists(c, max_size=6), st.dictionaries(st.text(max_size=4), c, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=70, deadline=None)
@given(st.integers(min_value=0, max_value=15), st.lists(_obj, max_size=7), st.integers(0, 3))
def test_fuzz_structured_frames_only_decode_error(t: int, fields: list, version: int) -> None:
    raw = msgpack.packb([version, [t, *fields]], use_bin_type=True)
    try:
        f = wire.decode_frame(raw)
    except wire.DecodeError:
        return
    # Whatever decodes re-encodes to something that decodes the same.
    assert wire.decode_frame(wire.encode_frame(f.messages)).messages == f.messages


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 199))
def test_fuzz_mutated_vectors_only_decode_error(noise: bytes, pos: int) -> None:
    for vec in VECTORS["valid"][:6]:
        data = bytearray(bytes.fromhex(vec["hex"]))
        i = pos % len(data)
        data[i : i + len(noise)] = noise
        try:
            wire.decode_frame(bytes(data))
        except wire.DecodeError:
            pass


def test_user_flags_are_an_optional_trailing_field() -> None:
    plain = wire.User("a", "k", 1, b"x")
    lazy = wire.User("a", "k", 1, b"x", wire.USER_LAZY)
    assert len(msgpack.unpackb(wire.encode_message(plain))) == 5  # as before flags existed
    assert len(msgpack.unpackb(wire.encode_message(lazy))) == 6
    for m in (plain, lazy):
        assert wire.decode_frame(wire.encode_frame([m])).messages == (m,)
    bad = msgpack.packb([3, [wire.MsgType.USER, "a", "k", 1, b"x", "lazy"]])
    with pytest.raises(wire.DecodeError):
        wire.decode_frame(bad)
