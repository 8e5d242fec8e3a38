"""mDNS discovery: TXT codec, and real zeroconf instances finding each other on loopback."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
import trio

from swarmd.core.admission import swarm_id
from swarmd.identity import Identity
from swarmd.runtime.discovery import (
    Announcement,
    MdnsDiscovery,
    decode_txt,
    encode_txt,
    resolve_interfaces,
)

SECRET = bytes(range(32))
PID = Identity.from_private_bytes(bytes(32)).peer_id


async def eventually(pred: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll ``pred`` until true; fail after ``limit`` seconds."""
    with trio.fail_after(limit):
        while True:
            if pred():
                return
            await trio.sleep(0.02)


def test_txt_round_trip() -> None:
    addrs = [f"/ip4/10.0.0.{i}/tcp/4100/p2p/{PID}" for i in range(10)]
    props = encode_txt(PID, swarm_id(SECRET), addrs)
    assert props["v"] == "1" and props["id"] == PID and props["a0"] == "/ip4/10.0.0.0/tcp/4100"
    assert all(len(k) + len(v) + 1 <= 255 for k, v in props.items())
    raw = {k.encode(): v.encode() for k, v in props.items()}  # as zeroconf hands them over
    ann = decode_txt(raw)
    assert ann == Announcement(PID, swarm_id(SECRET), tuple(addrs[:8]))


@pytest.mark.parametrize("mutate", [
    lambda p: p.pop("v"),
    lambda p: p.update(v="2"),
    lambda p: p.update(id="not a peer id!"),
    lambda p: p.update(swarm="XYZ"),
    lambda p: p.pop("a0"),
    lambda p: p.update(a0="/ip4/1.2.3.4/udp/5/quic"),
])
def test_txt_rejects_malformed(mutate: Any) -> None:
    props: dict[str, Any] = encode_txt(PID, swarm_id(SECRET), ["/ip4/10.0.0.1/tcp/4100"])
    mutate(props)
    assert decode_txt(props) is None


def test_txt_bad_bytes_do_not_crash() -> None:
    assert decode_txt({b"v": b"\xff\xfe", b"id": None}) is None


def test_resolve_interfaces() -> None:
    assert resolve_interfaces(["lo"]) == ["127.0.0.1"]
    assert resolve_interfaces(["127.0.0.1"]) == ["127.0.0.1"]
    with pytest.raises(ValueError, match="no network interface named 'nope0'"):
        resolve_interfaces(["nope0"])


@pytest.mark.trio
@pytest.mark.timeout(60)
async def test_two_nodes_find_each_other_on_loopback() -> None:
    # A private service type so parallel test runs and real daemons do not mix.
    stype = f"_sw{secrets.token_hex(4)}._tcp.local."
    ids = [Identity.generate().peer_id for _ in range(3)]
    found: dict[str, list[tuple[str, tuple[str, ...]]]] = {i: [] for i in ids}

    def make(pid: str, port: int, secret: bytes) -> MdnsDiscovery:
        return MdnsDiscovery(
            peer_id=pid, addrs=[f"/ip4/127.0.0.1/tcp/{port}/p2p/{pid}"], secret=secret,
            on_found=lambda p, a: found[pid].append((p, a)), interfaces=["lo"],
            service_type=stype, reintroduce=0.3)

    a, b = make(ids[0], 4101, SECRET), make(ids[1], 4102, SECRET)
    other = make(ids[2], 4103, bytes(32))  # another swarm
    async with trio.open_nursery() as n:
        for d in (a, b, other):
            await n.start(d.run)
        await eventually(lambda: bool(found[ids[0]] and found[ids[1]]), 20)
        assert found[ids[0]][0] == (ids[1], (f"/ip4/127.0.0.1/tcp/4102/p2p/{ids[1]}",))
        assert found[ids[1]][0] == (ids[0], (f"/ip4/127.0.0.1/tcp/4101/p2p/{ids[0]}",))
        # Re-introduction: the same peer is handed over again later.
        await eventually(lambda: len(found[ids[0]]) >= 2, 5)
        await trio.sleep(0.5)
        # Nobody reports itself or a node of another swarm.
        for me, got in found.items():
            assert all(p != me for p, _ in got)
        assert all(p != ids[2] for p, _ in found[ids[0]] + found[ids[1]])
        assert found[ids[2]] == []
        assert a.stats["ignored_other_swarm"] >= 1
        n.cancel_scope.cancel()
