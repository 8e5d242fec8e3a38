"""parse_seed and listen-address expansion (peer addressing helpers of the p2p layer)."""

from __future__ import annotations

import pytest

from swarmd.core.addrs import parse_seed
from swarmd.identity import Identity
from swarmd.runtime.p2p_addrs import expand_listen_addr

PID = Identity.from_private_bytes(b"\x01" * 32).peer_id


@pytest.mark.parametrize("seed,expect", [
    (f"/ip4/10.0.0.2/tcp/4100/p2p/{PID}", ((f"/ip4/10.0.0.2/tcp/4100/p2p/{PID}",), PID)),
    ("/ip4/10.0.0.2/tcp/4100", (("/ip4/10.0.0.2/tcp/4100",), None)),
    ("10.0.0.2:4100", (("/ip4/10.0.0.2/tcp/4100",), None)),
    (" [::1]:4100 ", (("/ip6/::1/tcp/4100",), None)),
    ("gpu-box.lan:4100", (("/dns/gpu-box.lan/tcp/4100",), None)),
    ("/dns4/gpu-box/tcp/4100", (("/dns4/gpu-box/tcp/4100",), None)),
])
def test_parse_seed_accepts(seed: str, expect: tuple[tuple[str, ...], str | None]) -> None:
    assert parse_seed(seed) == expect


@pytest.mark.parametrize("seed,msg", [
    ("", "empty seed"),
    ("10.0.0.2", "is not host:port"),
    ("10.0.0.2:0", "port must be 1..65535"),
    ("10.0.0.2:70000", "port must be 1..65535"),
    ("bad_host!:4100", "is not an IP address or host name"),
    ("/ip4/10.0.0.2/udp/4100", "needs a /tcp/<port> part"),
    ("/tcp/4100", "must start with /ip4/"),
    ("/ip4/999.0.0.1/tcp/1", "not a valid multiaddr"),
    ("/ip4/10.0.0.2/tcp/4100/ws", "only /host/tcp/port"),
    ("/ip4/10.0.0.2/tcp/4100/p2p/QmNotAPeer", "not a valid multiaddr|not a valid peer id"),
])
def test_parse_seed_rejects_with_clear_message(seed: str, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        parse_seed(seed)


def test_expand_listen_addr() -> None:
    assert expand_listen_addr("/ip4/127.0.0.1/tcp/5") == ["/ip4/127.0.0.1/tcp/5"]
    out = expand_listen_addr("/ip4/0.0.0.0/tcp/5")
    assert out and all(a.startswith("/ip4/") and a.endswith("/tcp/5") for a in out)
    assert "/ip4/0.0.0.0/tcp/5" not in out
