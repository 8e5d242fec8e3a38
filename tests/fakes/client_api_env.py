"""One node's API in-process, in front of real engine servers on 127.0.0.1.

The engines are the testing kit's simulated engine (:mod:`swarmd.testing.sim_engine`,
kind ``simulated``, model ``sim-model``) and the Ollama-speaking simulated engine of
:mod:`swarmd.testing.ollama_sim` (kind ``ollama``, models ``sim-llama:latest`` and
``sim-embed:latest``), and a second instance of that one registered as kind
``openai`` (model ``sim-tools``: translated requests, simulated tool calls),
polled by the real :class:`EngineManager`; the API is
the real :class:`ApiServer`.  Nothing is mocked: requests cross real HTTP.
``ollama_version`` is what the Ollama-speaking engine says it is (from 0.13.3
it serves ``/v1/responses`` and the plugin says so in its capabilities).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from swarmd.api.app import ApiDeps, ApiServer
from swarmd.config import ApiSection, RoutingSection
from swarmd.core.routing import Router
from swarmd.engines.base import EngineSpec
from swarmd.engines.manager import EngineManager
from swarmd.testing.ollama_sim import OllamaSim
from swarmd.testing.sim_engine import SimEngine, start_sim_engine
from swarmd.testing.swarm_snapshot import snapshot


@dataclass
class Env:
    server: ApiServer
    sim: SimEngine
    ollama: OllamaSim
    tools: OllamaSim
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def post(self, path: str, body: Any = None, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        data = raw if raw is not None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        async with self.http.post(self.base + path, data=data, headers=hdrs) as r:
            text = await r.read()
            try:
                doc: Any = json.loads(text)
            except ValueError:
                doc = text
            return r.status, doc, r.headers

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.base + path) as r:
            text = await r.read()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text


@asynccontextmanager
async def env(*, aliases: dict[str, str] | None = None,
              ollama_version: str = "0.9.0") -> AsyncIterator[Env]:
    sim = await start_sim_engine("sim", "sim-model", max_tokens=8)
    ollama = await OllamaSim(max_tokens=8, version=ollama_version).start()
    tools = await OllamaSim(models=("sim-tools",), max_tokens=8).start()
    http = aiohttp.ClientSession()
    manager = EngineManager([EngineSpec(kind="simulated", url=sim.url, id="sim"),
                             EngineSpec(kind="ollama", url=ollama.url, id="oll"),
                             EngineSpec(kind="openai", url=tools.url + "/v1", id="tools")],
                            session=http, detect=False)
    await manager.start()
    snap = snapshot(manager.record())
    deps = ApiDeps(api=ApiSection(listen="127.0.0.1:0"),
                   routing=RoutingSection(aliases=aliases or {}),
                   snapshot=lambda: snap, local=manager, router=Router(rng=random.Random(1)))
    server = ApiServer(deps)
    await server.start()
    try:
        yield Env(server, sim, ollama, tools, http)
    finally:
        await server.stop()
        await manager.stop()
        await http.close()
        await tools.stop()
        await ollama.stop()
        await sim.stop()


def run(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(fn(), 25))
