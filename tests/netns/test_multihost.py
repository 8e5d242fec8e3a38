"""Three hosts in their own network namespaces on a bridge.

They find each other by mDNS alone (no seeds); one host cut off (its link set
down) is declared dead by the others and comes back when the link heals.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmd.testing import netns
from swarmd.testing.daemon import Daemon, wait_for

ok, why = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(not ok, reason=why)]


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab(3) as lab:
        yield lab


def _converged(nodes: list[Daemon], expect: dict[str, str]) -> bool:
    return all(all(d.states().get(k) == v for k, v in expect.items()) for d in nodes)


def test_mdns_discovery_and_partition(lab: netns.Lab, tmp_path: Path) -> None:
    secret = secrets.token_hex(32)
    nodes = [
        Daemon(
            tmp_path, f"h{i}", secret=secret, host=lab.addr(i), p2p_port=4100, api_port=4180,
            mdns=True, netns=lab.hosts[i], profile="lan",
        )
        for i in range(3)
    ]
    try:
        for d in nodes:
            d.start()
        names = {d.name: "alive" for d in nodes}
        took = wait_for(lambda: _converged(nodes, names), 60, what="mDNS convergence")
        print(f"3 hosts found each other by mDNS in {took:.2f}s")

        lab.cut(2)
        took = wait_for(lambda: _converged(nodes[:2], {"h2": "dead"}), 60, what="h2 dead")
        print(f"cut host declared dead in {took:.2f}s")

        lab.heal(2)
        took = wait_for(lambda: _converged(nodes, names), 90, what="h2 back")
        print(f"healed host alive again in {took:.2f}s")
    finally:
        for d in nodes:
            if d.alive():
                d.kill()
