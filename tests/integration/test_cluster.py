"""Real daemons as separate processes on loopback: the core issue's scenarios.

One five-node swarm is shared by the tests of this module (they run in file
order, each leaving the swarm as the next expects) to keep CI time low.
"""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmd.testing.daemon import Daemon, wait_for

pytestmark = pytest.mark.integration

SECRET = secrets.token_hex(32)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    root = tmp_path_factory.mktemp("swarm")
    first = Daemon(root, "n1", secret=SECRET).start()
    nodes = [first]
    for i in range(2, 6):
        nodes.append(Daemon(root, f"n{i}", secret=SECRET, seeds=[first.seed]).start())
    yield nodes
    for d in nodes:
        if d.alive():
            d.kill()


def _all_see(nodes: list[Daemon], expect: dict[str, str]) -> bool:
    for d in nodes:
        states = d.states()
        if any(states.get(name) != st for name, st in expect.items()):
            return False
    return True


def test_five_nodes_converge(swarm: list[Daemon]) -> None:
    names = {d.name: "alive" for d in swarm}
    took = wait_for(lambda: _all_see(swarm, names), 30, what="5 nodes alive everywhere")
    print(f"converged in {took:.2f}s after the last start")
    doc = swarm[2].status()
    # The status contract.
    assert set(doc) >= {"node_id", "name", "addrs", "coordinator", "nodes"}
    assert doc["name"] == "n3"
    assert doc["node_id"].startswith("12D3Koo")
    assert all(a.endswith("/p2p/" + doc["node_id"]) for a in doc["addrs"])
    assert len(doc["nodes"]) == 5
    for n in doc["nodes"]:
        assert set(n) >= {"node_id", "name", "state", "addrs", "capabilities", "load"}
        assert n["state"] == "alive"
    me = next(n for n in doc["nodes"] if n["node_id"] == doc["node_id"])
    assert me["capabilities"]["cpu"]["cores"] >= 1
    assert me["capabilities"]["memory"]["total"] > 0
    # Every node eventually agrees on one coordinator.
    wait_for(
        lambda: len({str(d.status()["coordinator"]) for d in swarm}) == 1
        and swarm[0].status()["coordinator"] is not None,
        30,
        what="one coordinator everywhere",
    )
    r = swarm[0].ctl("status")
    assert r.returncode == 0 and "n5" in r.stdout
    r = swarm[0].ctl("nodes", "--json")
    assert r.returncode == 0 and "n4" in r.stdout


def test_wrong_secret_never_appears(swarm: list[Daemon], tmp_path: Path) -> None:
    intruder = Daemon(tmp_path, "intruder", secret=secrets.token_hex(32), seeds=[swarm[0].seed])
    intruder.start()
    try:
        # Give it several seed retries and gossip rounds.
        import time

        time.sleep(6)
        for d in swarm:
            assert "intruder" not in d.states(), d.name
        assert set(intruder.states()) == {"intruder"}
    finally:
        intruder.kill()


def test_kill9_is_dead_everywhere_then_rejoins(swarm: list[Daemon]) -> None:
    victim = swarm[4]
    old = {n["name"]: n for n in swarm[0].status()["nodes"]}["n5"]
    victim.kill()
    others = swarm[:4]
    took = wait_for(lambda: _all_see(others, {"n5": "dead"}), 30, what="n5 dead everywhere")
    print(f"kill -9 detected as dead by all in {took:.2f}s")
    victim.start()
    wait_for(lambda: _all_see(swarm, {"n5": "alive"}), 30, what="n5 alive again")
    new = {n["name"]: n for n in swarm[0].status()["nodes"]}["n5"]
    assert new["node_id"] == old["node_id"]  # identity persisted in data_dir
    assert new["incarnation"] > old["incarnation"]


def test_coordinator_killed_new_one_higher_epoch(swarm: list[Daemon]) -> None:
    coord = swarm[0].status()["coordinator"]
    assert coord is not None
    by_id = {d.node_id: d for d in swarm}
    holder = by_id[coord["node_id"]]
    holder.kill()
    rest = [d for d in swarm if d is not holder]

    def new_coordinator() -> bool:
        seen = [d.status()["coordinator"] for d in rest]
        return all(
            c is not None and c["node_id"] != coord["node_id"] and c["epoch"] > coord["epoch"]
            for c in seen
        ) and len({c["node_id"] for c in seen if c}) == 1

    took = wait_for(new_coordinator, 60, what="a new coordinator with a higher epoch")
    print(f"new coordinator after {took:.2f}s")
    holder.start()
    wait_for(lambda: _all_see(swarm, {holder.name: "alive"}), 30, what="old holder back")


def test_sigterm_is_seen_as_left(swarm: list[Daemon]) -> None:
    leaver = swarm[3]
    leaver.signal(signal.SIGTERM)
    assert leaver.wait(15) == 0
    rest = [d for d in swarm if d is not leaver and d.alive()]
    wait_for(lambda: _all_see(rest, {leaver.name: "left"}), 10, what="left everywhere")
