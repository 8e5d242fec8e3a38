"""Models started on demand (swarmd.engines.on_demand), against made-up snapshots."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from swarmd.core.deployments import DEPLOY_TABLE, PLACE_TABLE
from swarmd.core.hlc import Stamp
from swarmd.core.replica import Entry
from swarmd.core.snapshot import Snapshot
from swarmd.engines.on_demand import LoadFailed, OnDemand
from swarmd.testing.swarm_snapshot import node, snapshot

PEER = "12D3KooWPeer01"


class World:
    """A snapshot the test edits, and a deployer that records its deployments."""

    def __init__(self, stored_on_peer: bool = True) -> None:
        peer = node(PEER, [])
        if stored_on_peer:
            peer = dataclasses.replace(peer, record={**peer.record,
                                                     "models": [["ab" * 32, "gemma"]]})
        self.snap: Snapshot = snapshot(others=[peer])
        self.deploys: list[dict[str, Any]] = []
        self.models = SimpleNamespace(store=SimpleNamespace(find=lambda name: None))

    async def deploy(self, source: str, **kw: Any) -> dict[str, Any]:
        self.deploys.append({"source": source, **kw})
        await asyncio.sleep(0.01)
        self.table(DEPLOY_TABLE, source, {"source": source, "replicas": 1, "ctx": kw["ctx"],
                                          "slots": kw["slots"], "everywhere": False,
                                          "keep_alive": kw["keep_alive"]})
        return {"model": source}

    def table(self, name: str, key: str, value: Any) -> None:
        tables = {k: dict(v) for k, v in self.snap.tables.items()}
        tables.setdefault(name, {})[key] = Entry(key, Stamp(1, 0, "x"), value)
        self.snap = dataclasses.replace(self.snap, tables=tables)

    def serve(self, model: str, healthy: bool = True) -> None:
        peer = self.snap.nodes[1]
        rec = {**peer.record, "engines": [{"id": "e1", "kind": "llamacpp", "healthy": healthy,
                                           "models": [model]}]}
        self.snap = dataclasses.replace(self.snap, nodes=(self.snap.nodes[0],
                                                          dataclasses.replace(peer, record=rec)))

    def on_demand(self, timeout: float = 5.0) -> OnDemand:
        return OnDemand(self, lambda: self.snap, load_timeout=timeout,  # type: ignore[arg-type]
                        keep_alive=30.0)


def test_a_model_nothing_stores_is_not_started() -> None:
    w = World(stored_on_peer=False)
    assert asyncio.run(w.on_demand().ensure("gemma")) is False
    assert w.deploys == []


def test_concurrent_requests_share_one_deployment_and_wait_until_served() -> None:
    w = World()
    od = w.on_demand()

    async def main() -> list[bool]:
        waits = [asyncio.ensure_future(od.ensure("gemma")) for _ in range(3)]
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in waits)  # deployed, not served yet
        w.serve("gemma", healthy=False)
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in waits)  # listed but not healthy yet
        w.serve("gemma")
        return list(await asyncio.gather(*waits))

    assert asyncio.run(main()) == [True, True, True]
    assert len(w.deploys) == 1
    d = w.deploys[0]
    assert d["source"] == "gemma" and d["replicas"] == 1 and d["keep_alive"] == 30.0
    assert od.stats["started"] == 1 and od.stats["served"] == 1
    assert asyncio.run(od.ensure("gemma")) is True  # served: no new deployment
    assert len(w.deploys) == 1


def test_a_model_that_fits_nowhere_fails_at_once_with_the_reason() -> None:
    w = World()
    w.table(PLACE_TABLE, "gemma", {"nodes": [], "epoch": 3,
                                   "reason": "needs 9.0 GiB; largest free is 2.0 GiB"})
    with pytest.raises(LoadFailed) as exc:
        asyncio.run(w.on_demand().ensure("gemma"))
    assert exc.value.code == "model_load_failed" and "largest free" in str(exc.value)


def test_an_engine_that_failed_on_its_node_fails_the_wait() -> None:
    w = World()
    w.table(PLACE_TABLE, "gemma", {"nodes": [PEER], "epoch": 3})
    peer = w.snap.nodes[1]
    w.snap = dataclasses.replace(w.snap, nodes=(w.snap.nodes[0], dataclasses.replace(
        peer, record={**peer.record, "managed": {"gemma": {"state": "failed",
                                                           "reason": "exit 1: bad file"}}})))
    with pytest.raises(LoadFailed) as exc:
        asyncio.run(w.on_demand().ensure("gemma"))
    assert "bad file" in str(exc.value)


def test_a_model_that_does_not_load_in_time_times_out() -> None:
    w = World()
    with pytest.raises(LoadFailed) as exc:
        asyncio.run(w.on_demand(timeout=0.3).ensure("gemma"))
    assert exc.value.code == "model_load_timeout" and exc.value.status == 503
