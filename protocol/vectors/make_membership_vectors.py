"""Regenerate protocol/vectors/membership.json (golden wire vectors).

Run: PYTHONPATH=. .venv/bin/python protocol/vectors/make_membership_vectors.py
Tests compare the codec against the committed file, never against this script.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import msgpack

from swarmd.core import wire

ID_A = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
ID_B = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
ADDR_B = f"/ip4/10.0.0.2/tcp/4001/p2p/{ID_B}"

CASES: list[tuple[str, list[wire.Message]]] = [
    ("ping", [wire.Ping(7, ID_B)]),
    ("ack", [wire.Ack(7)]),
    ("ping_req", [wire.PingReq(8, ID_B, (ADDR_B,), True)]),
    ("nack", [wire.Nack(8)]),
    ("alive", [wire.Alive(ID_B, 3, "gpu-box", (ADDR_B,))]),
    ("suspect", [wire.Suspect(ID_B, 3, ID_A)]),
    ("dead", [wire.Dead(ID_B, 3, ID_A)]),
    ("left", [wire.Left(ID_B, 4)]),
    ("record", [wire.Record(ID_B, 12, {"name": "gpu-box", "started": 1700000000.5,
                                        "engines": [], "draining": False}, True)]),
    ("record_delta", [wire.RecordDelta(ID_B, 13, 12, {"load": {"cpu_percent": 12.5}},
                                       ("api",))]),
    ("record_req", [wire.RecordReq(((ID_B, 12), (ID_A, 0)))]),
    ("push_pull", [wire.PushPull(wire.PP_JOIN | wire.PP_LAST, (
        wire.StateEntry(ID_A, "a", (), wire.WireState.ALIVE, 0, 1),
        wire.StateEntry(ID_B, "gpu-box", (ADDR_B,), wire.WireState.DEAD, 3, 12),
    ))]),
    ("push_pull_with_records", [
        wire.PushPull(wire.PP_REPLY | wire.PP_LAST | wire.PP_RECORDS, (
            wire.StateEntry(ID_B, "gpu-box", (ADDR_B,), wire.WireState.ALIVE, 3, 12),)),
        wire.Record(ID_B, 12, {"name": "gpu-box", "draining": False}, False),
    ]),
    ("user", [wire.User(ID_A, "lease", 123456789, b"\x94\x01\x02\xa1x\x05")]),
    ("user_lazy", [wire.User(ID_A, "lease", 123456790, b"\x94\x01\x02\xa1x\x06",
                             wire.USER_LAZY)]),
    ("sync", [wire.Sync(0, 0x0123456789ABCDEF, bytes.fromhex("12345678abcd"))]),
    ("sync_reply", [wire.Sync(wire.SYNC_REPLY, 42, b"")]),
    ("compound_ping_with_gossip", [wire.Ping(9, ID_B), wire.Alive(ID_A, 1, "a", ()),
                                   wire.Suspect(ID_B, 3, ID_A)]),
]


def main() -> None:
    out = []
    for name, msgs in CASES:
        data = wire.encode_frame(msgs)
        out.append({
            "name": name,
            "hex": data.hex(),
            "decoded": {"version": wire.WIRE_VERSION,
                        "messages": [wire.describe(m) for m in msgs]},
        })
    # Forward compatibility: an unknown type (99) is skipped, a trailing
    # extra field is ignored.
    fwd = bytes.fromhex("93") + b"\x02" + bytes.fromhex("92") + b"\x63\x01" + bytes.fromhex(
        "93") + b"\x02\x07\xc0"
    out.append({"name": "forward_compat_v2", "hex": fwd.hex(),
                "decoded": {"version": 2, "messages": [{"type": "Ack", "seq": 7}],
                            "unknown": 1}})
    # COMPRESSED (version 3): a ping and a record inside one deflate body.
    # Not re-encoded by the tests: another zlib may compress differently.
    inner = [wire.Ping(9, ID_B), wire.Record(ID_A, 2, {"name": "a", "engines": []}, False)]
    comp = wire.compressed_frame([wire.encode_message(m) for m in inner])
    out.append({"name": "compressed_deflate", "hex": comp.hex(), "reencode": False,
                "decoded": {"version": wire.WIRE_VERSION,
                            "messages": [wire.describe(m) for m in inner]}})
    # An algorithm this reader does not know: skipped as one unknown message.
    unk = msgpack.packb([3, [15, 99, b"??"], [2, 5]])
    out.append({"name": "compressed_unknown_algorithm", "hex": unk.hex(), "reencode": False,
                "decoded": {"version": 3, "messages": [{"type": "Ack", "seq": 5}],
                            "unknown": 1}})

    def cframe(body: bytes) -> str:
        return str(msgpack.packb([3, [15, 1, body]]).hex())

    bad = {
        "compressed_bomb": cframe(zlib.compress(
            msgpack.packb([[2, 1]]) + msgpack.packb(bytes(300_000)), 9)),
        "compressed_inflates_past_limit": cframe(zlib.compress(
            msgpack.packb([[13, ID_A, "k", 1, bytes(250_000)]]), 9)),
        "compressed_nested": cframe(zlib.compress(msgpack.packb(
            [[15, 1, zlib.compress(msgpack.packb([[2, 1]]))]]))),
        "compressed_truncated": cframe(zlib.compress(msgpack.packb([[2, 1]]))[:-3]),
        "compressed_trailing_data": cframe(zlib.compress(msgpack.packb([[2, 1]])) + b"x"),
        "compressed_not_deflate": cframe(b"not deflate at all"),
        "compressed_body_not_array": cframe(zlib.compress(msgpack.packb({"a": 1}))),
        "compressed_data_not_bytes": str(msgpack.packb([3, [15, 1, "text"]]).hex()),
        "empty": "",
        "not_array": "a3616263",
        "empty_array": "90",
        "version_zero": "9100",
        "negative_seq": "92019202ff",
        "truncated": "9201930107",
        "trailing_bytes": "9101c0",
        "ext_type": "9201920ad40100",
        "bool_as_int": "92019202c3",
        "ping_without_target": "9201920107",
        "sync_odd_fingerprints": "9202940e0001c40112",
    }
    path = Path(__file__).with_name("membership.json")
    path.write_text(json.dumps({"wire_version": wire.WIRE_VERSION, "valid": out,
                                "invalid": [{"name": k, "hex": v} for k, v in bad.items()]},
                               indent=1) + "\n")


if __name__ == "__main__":
    main()
