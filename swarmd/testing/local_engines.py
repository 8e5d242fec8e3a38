"""The API's ``LocalEngines`` protocol over engine servers, without an EngineManager.

:class:`UrlEngines` sends each engine id's requests to a base URL and tells
nothing of load (no gate, no polls): what a benchmark or data-plane test
needs.  :class:`SimEngines` does the same over :class:`SimEngine` instances
and counts requests in flight per engine (now and most at once), keeps the
proxy's ``note_result`` calls, and builds the node record's ``engines``
entries (protocol/records.md) with per-engine capacity and capabilities.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from swarmd.core.routing import EngineLoad
from swarmd.testing.sim_engine import SimEngine


@dataclass(frozen=True)
class EngineRequest:
    """The HTTP request the API sends to an engine (``UpstreamRequestLike``)."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


class UrlEngines:
    """LocalEngines over HTTP servers by engine id (no load, no gate)."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        self.urls = dict(urls)

    def request(self, engine_id: str, route: str, body: bytes,
                headers: Mapping[str, str]) -> EngineRequest:
        return EngineRequest("POST", self.urls[engine_id] + route, dict(headers), body)

    def inflight(self, engine_id: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def current_load(self, engine_id: str) -> EngineLoad | None:
        return None

    def capacity(self, engine_id: str) -> int | None:
        return None

    async def count_tokens(self, engine_id: str, model: str, text: str) -> int | None:
        return None

    def note_result(self, engine_id: str, ok: bool) -> None:
        pass


class SimEngines:
    """LocalEngines over :class:`SimEngine` servers: engine id -> engine."""

    def __init__(self, engines: list[SimEngine]) -> None:
        self.by_id = {e.engine_id: e for e in engines}
        self.inflight_now: dict[str, int] = {}
        self.inflight_max: dict[str, int] = {}
        self.results: list[tuple[str, bool]] = []
        #: engine id -> capacity (gossiped, and the node's gate); default 4 gossiped, no gate
        self.capacities: dict[str, int] = {}
        #: engine id -> capabilities to gossip (absent: not said)
        self.capabilities: dict[str, list[str]] = {}

    def request(self, engine_id: str, route: str, body: bytes,
                headers: Mapping[str, str]) -> EngineRequest:
        eng = self.by_id[engine_id]
        return EngineRequest("POST", eng.url + route, dict(headers), body)

    @contextlib.contextmanager
    def inflight(self, engine_id: str) -> Iterator[None]:
        n = self.inflight_now.get(engine_id, 0) + 1
        self.inflight_now[engine_id] = n
        self.inflight_max[engine_id] = max(n, self.inflight_max.get(engine_id, 0))
        try:
            yield
        finally:
            self.inflight_now[engine_id] -= 1

    def current_load(self, engine_id: str) -> EngineLoad | None:
        if engine_id not in self.by_id:
            return None
        return EngineLoad(running=self.inflight_now.get(engine_id, 0), waiting=0,
                          capacity=self.capacities.get(engine_id, 4))

    def capacity(self, engine_id: str) -> int | None:
        return self.capacities.get(engine_id)  # None: any number at once (no gate)

    async def count_tokens(self, engine_id: str, model: str, text: str) -> int | None:
        return None

    def note_result(self, engine_id: str, ok: bool) -> None:
        self.results.append((engine_id, ok))

    def records(self, healthy: bool = True) -> list[dict[str, Any]]:
        """The record's ``engines`` entries (protocol/records.md) of these engines."""
        out: list[dict[str, Any]] = []
        for e in self.by_id.values():
            rec: dict[str, Any] = {
                "id": e.engine_id, "kind": "simulated", "healthy": healthy,
                "models": list(e.config.models),
                "load": {"running": 0, "waiting": 0, "kv_cache": None,
                         "capacity": self.capacities.get(e.engine_id, 4)}}
            if e.engine_id in self.capabilities:
                rec["capabilities"] = self.capabilities[e.engine_id]
            out.append(rec)
        return out
