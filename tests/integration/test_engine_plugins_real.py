"""Engine plugins against real servers: llama-cpp-python on the tiny model,
and the SIMULATED engine run as its own process (``python -m swarmd.engines.simulated``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from swarmd.engines.base import EngineLoad, EngineSpec, open_upstream
from swarmd.engines.manager import EngineManager
from swarmd.engines.registry import EngineRegistry
from swarmd.testing.llama_server import LlamaServer, free_port

pytestmark = pytest.mark.integration

REG = EngineRegistry(eps=[])
ROOT = Path(__file__).resolve().parents[2]


def run(fn: Callable[[aiohttp.ClientSession], Awaitable[None]], limit: float = 60) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            await asyncio.wait_for(fn(http), limit)

    asyncio.run(main())


@pytest.mark.llama
def test_llamacpp_plugin_on_llama_cpp_python(llama_server: LlamaServer) -> None:
    url = llama_server.base_url

    async def t(http: aiohttp.ClientSession) -> None:
        probes = {c.kind: await c.probe(http, url) for c in REG.loadable()}
        assert [k for k, hit in probes.items() if hit] == ["llamacpp"]
        m = EngineManager([EngineSpec(kind="llamacpp", url=url)], session=http,
                          detect=False, registry=REG)
        await m.poll_once(force=True)
        (st,) = m.engines()
        assert st.healthy and st.models == ("tiny",)
        assert st.load == EngineLoad(running=0, capacity=1)
        eng = m.engine(st.id)
        body = (b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],'
                b'"max_tokens":4,"stream":true}')
        with m.inflight(st.id):
            resp = await open_upstream(http, eng, "/v1/chat/completions", body,
                                       {"Content-Type": "application/json"}, timeout=30)
            async with resp:
                assert resp.status == 200
                raw = await resp.read()
        assert raw.startswith(b"data: ") and raw.rstrip().endswith(b"data: [DONE]")

    run(t)


@pytest.fixture
def simengine_process() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmd.engines.simulated", "--port", str(port),
         "--model", "m1", "--concurrency", "2", "--ttft-ms", "300", "--tps", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("simulated engine did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_simulated_plugin_sees_live_load(simengine_process: str) -> None:
    url = simengine_process

    async def t(http: aiohttp.ClientSession) -> None:
        m = EngineManager([EngineSpec(kind="simulated", url=url)], session=http,
                          detect=False, registry=REG)
        await m.poll_once(force=True)
        (st,) = m.engines()
        assert st.healthy and st.models == ("m1",)
        assert (st.load.running, st.load.waiting, st.load.capacity) == (0, 0, 2)
        body = b'{"model":"m1","messages":[{"role":"user","content":"hi"}]}'

        async def one() -> int:
            resp = await open_upstream(http, m.engine(st.id), "/v1/chat/completions", body,
                                       {"Content-Type": "application/json"}, timeout=10)
            async with resp:
                await resp.read()
                return resp.status

        calls = [asyncio.create_task(one()) for _ in range(3)]
        await asyncio.sleep(0.15)  # all three are in: two generating, one queued
        await m.poll_once(force=True)
        load = m.get(st.id).load
        assert (load.running, load.waiting) == (2, 1)
        assert await asyncio.gather(*calls) == [200, 200, 200]

    run(t)
