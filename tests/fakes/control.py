"""A fake ControlProvider over a made-up swarm, and a control server run in a thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from swarmd.control.server import ControlServer, start_control_server
from swarmd.core.record import self_record
from swarmd.core.snapshot import NodeInfo, Snapshot
from swarmd.core.views import ModelsDoc, StatusDoc, models_view, status_view

ALPHA = "12D3KooWAlphaAlphaAlpha1111"
BETA = "12D3KooWBetaBetaBetaBeta2222"
GAMMA = "12D3KooWGammaGammaGamma3333"

_CAPS = {
    "cpu": {"model": "AMD EPYC 9654", "arch": "x86_64", "cores": 96, "threads": 192},
    "memory": {"total": 512 * 1024**3},
    "disk": {"total": 2 * 1024**4, "free": 1024**4},
    "os": {"system": "Linux", "release": "6.8"},
    "gpus": [
        {"index": i, "vendor": "nvidia", "name": "NVIDIA H100", "memory_total": 80 * 1024**3,
         "memory_used": 0, "utilization": 0.0, "temperature": 30.0, "power_w": 70.0}
        for i in range(2)
    ],
    "gpu_note": "",
    "interfaces": [{"name": "eth0", "addrs": ["10.0.0.1"]}],
}


def _node(node_id: str, name: str, *, is_self: bool = False, state: str = "alive",
          engines: list[dict[str, Any]] | None = None, caps: dict[str, Any] | None = None
          ) -> NodeInfo:
    record = {
        **self_record(name=name, addrs=[f"/ip4/10.0.0.1/tcp/4001/p2p/{node_id}"],
                      started=1700000000.0, api="127.0.0.1:8080",
                      caps=caps if caps is not None else _CAPS),
        "load": {"cpu_percent": 12.5, "load_avg": [0.5, 0.4, 0.3], "memory_used": 1,
                 "memory_available": 2, "gpus": [{"index": 0, "utilization": 40.0,
                                                  "memory_used": 1, "temperature": 50.0,
                                                  "power_w": 200.0}]},
        "engines": engines or [],
    }
    return NodeInfo(node_id=node_id, name=name, state=state,
                    addrs=(f"/ip4/10.0.0.1/tcp/4001/p2p/{node_id}",),
                    incarnation=1, state_since=75.0, record=record, record_version=3,
                    is_self=is_self)


def fake_snapshot() -> Snapshot:
    eng = {"id": "llamacpp-1", "kind": "llamacpp", "healthy": True,
           "models": ["llama-3-8b", "qwen-7b"], "load": {}}
    return Snapshot(
        node_id=ALPHA, name="alpha", addrs=(f"/ip4/10.0.0.1/tcp/4001/p2p/{ALPHA}",),
        coordinator=(BETA, 7),
        nodes=(
            _node(ALPHA, "alpha", is_self=True, engines=[eng]),
            _node(BETA, "beta", caps={}),
            _node(GAMMA, "gamma", state="suspect"),
        ),
        joined=True, stats={"dropped": 0}, seq=5, health_score=2,
    )


class FakeProvider:
    def __init__(self) -> None:
        self.snapshot = fake_snapshot()
        self.left = 0
        self.drained: list[bool] = []
        self.fail: str | None = None  # make every call raise RuntimeError(fail)
        self.leave_delay = 0.0  # seconds leave() takes
        self.leave_error: str | None = None  # leave() raises RuntimeError after the delay

    def _check(self) -> None:
        if self.fail:
            raise RuntimeError(self.fail)

    def status(self) -> StatusDoc:
        self._check()
        return status_view(self.snapshot)

    async def leave(self) -> None:
        self._check()
        if self.leave_delay:
            await asyncio.sleep(self.leave_delay)
        if self.leave_error:
            raise RuntimeError(self.leave_error)
        self.left += 1

    def join_line(self) -> str:
        self._check()
        return "swarmd --join swarmd1:AAAA"

    def models(self) -> ModelsDoc:
        self._check()
        return models_view(self.snapshot)

    async def drain(self, on: bool) -> None:
        self._check()
        self.drained.append(on)


class ServerThread:
    """Runs ``start_control_server`` on its own asyncio loop in a daemon thread."""

    def __init__(self, path: Path, provider: Any, registry: Any = None) -> None:
        self.path = path
        self.provider = provider
        self.registry = registry
        self.loop = asyncio.new_event_loop()
        self.server: ControlServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            start_control_server(self.path, self.provider, self.registry), self.loop)
        try:
            self.server = fut.result(timeout=10)
        except BaseException:
            self._shutdown()
            raise
        return self

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=10)
            self.server = None
        self._shutdown()

    def _shutdown(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
