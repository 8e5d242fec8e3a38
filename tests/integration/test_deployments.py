"""The swarm runs the engines: ``swarmctl run`` / ``ps`` / ``stop`` on three real daemons.

llama-cpp-python engines launched by swarmd itself on a tiny random-weight
GGUF (``swarmd/testing/tiny_gguf.py``) served by a plain HTTP server, so
every node fetches it from its source.  Shared by the tests of the module,
in file order.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmd.control.client import ControlClient
from swarmd.testing.daemon import Daemon, pid_alive, wait_for
from swarmd.testing.hub_servers import ServerThread, file_server
from swarmd.testing.llama_server import llama_available
from swarmd.testing.tiny_gguf import write_tiny_gguf

pytestmark = [pytest.mark.integration, pytest.mark.llama,
              pytest.mark.skipif(not llama_available(), reason="llama-cpp-python missing"),
              pytest.mark.timeout(600)]

SECRET = "5a" * 32
MODEL = "tiny"


class Swarm:
    def __init__(self, root: Path) -> None:
        model = write_tiny_gguf(root / "tiny.gguf")
        self.files: ServerThread = file_server({"/tiny.gguf": model}).__enter__()
        self.source = self.files.url + "/tiny.gguf"
        # On-demand models (the last tests) unload after 5 s idle.
        models = "[models]\nkeep_alive = 5.0\n"
        self.nodes = [Daemon(root, "d1", secret=SECRET, extra_toml=models).start()]
        for i in (2, 3):
            self.nodes.append(Daemon(root, f"d{i}", secret=SECRET, extra_toml=models,
                                     seeds=[self.nodes[0].seed]).start())

    def by_id(self) -> dict[str, Daemon]:
        return {d.node_id: d for d in self.nodes if d.alive()}


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    s = Swarm(tmp_path_factory.mktemp("deploy"))
    wait_for(lambda: all(sum(n["state"] == "alive" for n in d.status()["nodes"]) == 3
                         for d in s.nodes), 30, what="3 nodes alive")
    yield s
    for d in s.nodes:
        if d.alive():
            d.kill()
    s.files.__exit__(None, None, None)


def _ps(d: Daemon) -> list[dict[str, Any]]:
    r = d.ctl("ps", "--json")
    assert r.returncode == 0, r.stderr
    rows: list[dict[str, Any]] = json.loads(r.stdout)
    return rows


def _ready(d: Daemon) -> dict[str, dict[str, Any]]:
    return {r["node_id"]: r for r in _ps(d) if r["model"] == MODEL and r["state"] == "ready"}


def _chat(d: Daemon, model: str = MODEL) -> int:
    body = json.dumps({"model": model, "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    req = urllib.request.Request(d.api_url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _engine_pids(d: Daemon) -> list[int]:
    out = []
    for p in (d.dir / "data" / "engines").glob("*.pid"):
        pid = int(json.loads(p.read_text())["pid"])
        try:
            os.kill(pid, 0)
            out.append(pid)
        except ProcessLookupError:
            pass
    return out


def test_run_with_two_replicas_serves_through_the_third_node(swarm: Swarm) -> None:
    d1 = swarm.nodes[0]
    r = d1.ctl("run", swarm.source, "--name", MODEL, "--replicas", "2", "--ctx", "256",
               timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is served by" in r.stdout and "pulling" in r.stdout
    ready = _ready(d1)
    assert len(ready) == 2
    rows = _ps(swarm.nodes[1])
    assert {"model", "node_id", "engine_id", "state", "memory_bytes", "slots"} <= set(rows[0])
    third = next(d for d in swarm.nodes if d.node_id not in ready)
    assert _chat(third) == 200  # a node without a replica forwards to one that has it


def test_an_engine_killed_is_restarted(swarm: Swarm) -> None:
    d = next(x for x in swarm.nodes if _engine_pids(x))
    before = _engine_pids(d)
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: bool(_engine_pids(d)) and _engine_pids(d) != before
             and d.node_id in _ready(d), 120, what="engine restarted and ready")


def test_a_dead_replica_is_placed_again_and_leaves_no_engine(swarm: Swarm) -> None:
    ready = _ready(swarm.nodes[0])
    victim = next(d for d in swarm.nodes if d.node_id in ready and d is not swarm.nodes[0])
    pids = _engine_pids(victim)
    assert pids
    victim_id = victim.node_id
    victim.kill()  # kill -9 of swarmd: its engine must die with it (PDEATHSIG)
    wait_for(lambda: all(not pid_alive(p) for p in pids), 10, what="orphaned engine gone")
    others = [d for d in swarm.nodes if d.alive()]
    wait_for(lambda: len(_ready(others[0])) == 2 and victim_id not in _ready(others[0]),
             180, what="replica re-placed")
    assert all(_chat(d) == 200 for d in others)
    victim.start()  # a restarted swarmd does not start a duplicate of what it ran
    wait_for(lambda: victim_id in {n["node_id"] for n in others[0].status()["nodes"]
                                   if n["state"] == "alive"}, 30, what="victim back")
    assert len(_engine_pids(victim)) <= 1


def test_stop_unloads_everywhere(swarm: Swarm) -> None:
    r = swarm.nodes[0].ctl("stop", MODEL)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not _ps(swarm.nodes[0]) and not any(_engine_pids(d) for d in swarm.nodes),
             60, what="engines gone")


def test_a_model_that_fits_nowhere_fails_at_once(swarm: Swarm) -> None:
    r = swarm.nodes[0].ctl("run", swarm.source, "--name", "huge", "--ctx", str(1 << 22),
                           timeout=120)
    assert r.returncode == 1
    assert "needs" in r.stderr and "largest free" in r.stderr
    rows = ControlClient(swarm.nodes[0].socket).get("/v1/deployments")["deployments"]
    assert "huge" not in [d["model"] for d in rows]  # a failed run leaves nothing behind


def test_a_stored_model_starts_on_demand_and_unloads_when_idle(swarm: Swarm) -> None:
    """After ``stop`` the files stay in the stores: a request for the model
    starts it (one deployment for three concurrent requests), and 5 s idle
    ([models] keep_alive) unloads it everywhere again."""
    from concurrent.futures import ThreadPoolExecutor

    d3 = swarm.nodes[2]
    assert not _ps(d3)
    with ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(lambda d: _chat(d), [d3, d3, swarm.nodes[1]]))
    assert codes == [200, 200, 200]
    rows = ControlClient(d3.socket).get("/v1/deployments")["deployments"]
    assert [r["model"] for r in rows] == [MODEL] and rows[0]["keep_alive"] == 5.0
    wait_for(lambda: len(_ready(d3)) == 1, 10, what="ready in ps")  # gossip of `managed`
    assert _chat(swarm.nodes[0]) == 200
    wait_for(lambda: not _ps(d3) and not any(_engine_pids(d) for d in swarm.nodes), 60,
             what="idle on-demand model unloaded")
    assert _chat(d3, "no-such-model") == 404  # nothing stores it: no wait, 404
