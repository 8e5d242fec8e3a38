"""EngineManager: config entries, detection, polling, the gossiped record."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from swarmd.config import EngineEntry
from swarmd.engines.base import EngineSpec
from swarmd.engines.manager import EngineManager
from swarmd.engines.registry import EngineRegistry, UnknownEngineKind
from tests.fakes.upstreams import fake_llama_server, fake_ollama, fake_vllm

REG = EngineRegistry(eps=[])


def run(fn: Callable[[aiohttp.ClientSession], Awaitable[None]]) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            await asyncio.wait_for(fn(http), 10)

    asyncio.run(main())


class Changes:
    def __init__(self) -> None:
        self.seen: list[list[dict[str, Any]]] = []

    def __call__(self, rec: list[dict[str, Any]]) -> None:
        self.seen.append(rec)


def manager(http: aiohttp.ClientSession, engines: list[Any], **kw: Any) -> EngineManager:
    kw.setdefault("detect", False)
    return EngineManager(engines, session=http, registry=REG, **kw)


def test_record_from_config_entries() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        async with fake_vllm(running=3, waiting=1, kv=0.4234) as v:
            m = manager(http, [EngineEntry(kind="vllm", url=v.url),
                               EngineEntry(kind="vllm", url=v.url + "/v1", id="big",
                                           capacity=8, models=("alias-a",))])
            changes = Changes()
            m.on_change = changes
            assert await m.poll_once(force=True) is True
            assert m.record() == [
                {"id": "big", "kind": "vllm", "healthy": True, "models": ["alias-a"],
                 "load": {"running": 3, "waiting": 1, "kv_cache": 0.42, "capacity": 8}},
                {"id": f"vllm-{v.port}", "kind": "vllm", "healthy": True,
                 "models": ["Qwen/Qwen2.5-0.5B-Instruct"],
                 "load": {"running": 3, "waiting": 1, "kv_cache": 0.42, "capacity": None}},
            ]
            assert changes.seen == [m.record()]
            assert await m.poll_once(force=True) is False  # nothing changed: no callback
            assert len(changes.seen) == 1
            v.state["running"] = 5
            assert await m.poll_once(force=True) is True
            assert changes.seen[-1][0]["load"]["running"] == 5

    run(t)


def test_engine_going_down_and_up() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        o = await fake_ollama().start()
        port = o.port
        changes = Changes()
        m = manager(http, [EngineSpec(kind="ollama", url=o.url)], on_change=changes)
        await m.poll_once(force=True)
        st = m.get(f"ollama-{port}")
        assert st.healthy and st.models == ("llama3.2:latest", "qwen2.5:0.5b")
        await o.stop()
        await m.poll_once(force=True)  # refused connection: down at once
        st = m.get(f"ollama-{port}")
        assert not st.healthy and st.error is not None
        assert st.models == ("llama3.2:latest", "qwen2.5:0.5b")  # last list kept
        assert changes.seen[-1][0]["healthy"] is False
        o.state["tags"] = ["phi3:mini"]
        await o.start(port)
        try:
            await m.poll_once(force=True)
            st = m.get(f"ollama-{port}")
            assert st.healthy and st.models == ("phi3:mini",)  # re-listed on recovery
            assert changes.seen[-1][0]["healthy"] is True
            assert len(changes.seen) == 3
        finally:
            await o.stop()

    run(t)


def test_one_bad_answer_does_not_flap_health() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        async with fake_vllm() as v:
            m = manager(http, [EngineSpec(kind="vllm", url=v.url)], fail_threshold=2)
            await m.poll_once(force=True)
            eid = f"vllm-{v.port}"
            v.healthy = False  # /health answers 503
            await m.poll_once(force=True)
            assert m.get(eid).healthy
            await m.poll_once(force=True)
            assert not m.get(eid).healthy
            v.healthy = True
            await m.poll_once(force=True)
            assert not m.get(eid).healthy  # damped: one good poll is not enough
            await m.poll_once(force=True)
            assert m.get(eid).healthy

    run(t)


def test_inflight_count_is_running_when_engine_cannot_tell() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        async with fake_ollama() as o:
            m = manager(http, [EngineSpec(kind="ollama", url=o.url, capacity=4)])
            eid = f"ollama-{o.port}"
            await m.poll_once(force=True)
            assert m.record()[0]["load"] == {"running": 0, "waiting": None, "kv_cache": None,
                                             "capacity": 4}
            with m.inflight(eid), m.inflight(eid):
                assert m.get(eid).inflight == 2
                assert await m.poll_once(force=True) is True
                assert m.record()[0]["load"]["running"] == 2
            assert m.get(eid).inflight == 0
            req = m.request(eid, "/v1/chat/completions", b"{}", {})
            assert req.url == o.url + "/v1/chat/completions"
            with pytest.raises(KeyError):
                m.request("nope", "/v1/chat/completions", b"{}", {})
            with pytest.raises(KeyError), m.inflight("nope"):
                pass

    run(t)


def test_configured_models_literals_and_globs_and_rename() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        async with fake_ollama(tags=("llama3.2:latest", "qwen2.5:0.5b", "qwen2.5:7b")) as o:
            m = manager(http, [
                EngineSpec(kind="ollama", url=o.url, id="globbed",
                           models=("my-static", "qwen*:0.5b")),
                EngineSpec(kind="ollama", url=o.url, id="renamed",
                           options={"rename": {"llama3.2:latest": "llama"}}),
            ])
            await m.poll_once(force=True)
            assert m.get("globbed").models == ("my-static", "qwen2.5:0.5b")
            assert m.get("renamed").models == ("llama", "qwen2.5:0.5b", "qwen2.5:7b")
            body = m.request("renamed", "/v1/chat/completions", b'{"model":"llama"}', {}).body
            assert body == b'{"model":"llama3.2:latest"}'

    run(t)


def test_bad_entries_fail_loudly() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        with pytest.raises(UnknownEngineKind, match="known kinds: .*llamacpp"):
            manager(http, [EngineSpec(kind="nope", url="http://127.0.0.1:1")])
        with pytest.raises(ValueError, match="two engines"):
            manager(http, [EngineSpec(kind="vllm", url="http://127.0.0.1:1", id="x"),
                           EngineSpec(kind="tgi", url="http://127.0.0.1:2", id="x")])
        m = manager(http, [EngineSpec(kind="openai", url="https://a.example/v1"),
                           EngineSpec(kind="openai", url="https://b.example/v1")])
        assert [s.id for s in m.engines()] == ["openai-443", "openai-443-2"]

    run(t)


def test_detection_finds_unconfigured_engines_and_forgets_dead_ones() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        now = [1000.0]
        o = await fake_ollama().start()
        v = await fake_vllm().start()
        lc = await fake_llama_server().start()
        try:
            ports = {"ollama": (o.port,), "vllm": (v.port, lc.port),
                     "llamacpp": (lc.port, v.port), "tgi": (lc.port,), "mlx": (lc.port,)}
            m = manager(http, [EngineSpec(kind="llamacpp", url=f"http://localhost:{lc.port}")],
                        detect=True, detect_ports=ports, forget_after=30,
                        clock=lambda: now[0])
            added = await m.detect_once()
            assert sorted(added) == [f"ollama-{o.port}", f"vllm-{v.port}"]
            await m.poll_once(force=True)
            states = {s.id: s for s in m.engines()}
            assert states[f"vllm-{v.port}"].detected and states[f"vllm-{v.port}"].healthy
            assert not states[f"llamacpp-{lc.port}"].detected
            assert await m.detect_once() == []  # nothing twice
            await o.stop()
            await lc.stop()
            await m.poll_once(force=True)
            now[0] += 31
            await m.poll_once(force=True)
            ids = [s.id for s in m.engines()]
            assert f"ollama-{o.port}" not in ids  # detected and dead: forgotten
            assert f"llamacpp-{lc.port}" in ids  # configured: kept, unhealthy
        finally:
            for f in (o, v, lc):
                await f.stop()

    run(t)


def test_background_polling_reports_changes() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        async with fake_vllm(running=1) as v:
            got: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
            m = manager(http, [EngineSpec(kind="vllm", url=v.url)], poll_interval=0.05,
                        on_change=got.put_nowait)
            await m.start()
            try:
                assert (await got.get())[0]["load"]["running"] == 1
                v.state["running"] = 7
                rec = await asyncio.wait_for(got.get(), 2)
                assert rec[0]["load"]["running"] == 7
            finally:
                await m.stop()

    run(t)


def test_current_load_corrects_the_polled_load_with_fresh_inflight() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        async with fake_vllm(running=3, waiting=1) as v:
            m = manager(http, [EngineSpec(kind="vllm", url=v.url, capacity=8)])
            eid = f"vllm-{v.port}"
            with m.inflight(eid), m.inflight(eid):
                await m.poll_once(force=True)  # the engine counts our 2 among its 4
            cur = m.current_load(eid)
            assert cur is not None
            # Ours finished since the poll: only the other 2 remain.
            assert (cur.running, cur.waiting, cur.capacity) == (2, 0, 8)
            with m.inflight(eid), m.inflight(eid), m.inflight(eid):
                cur = m.current_load(eid)
                assert cur is not None and cur.running == 5
            assert m.current_load("nope") is None

    run(t)


def test_busy_is_not_down_but_idle_silence_is() -> None:
    """A poll that times out while requests run on the engine means busy:
    health, load and capacity stay.  The same silence while idle is down."""
    async def t(http: aiohttp.ClientSession) -> None:
        async with fake_vllm() as v:
            m = manager(http, [EngineSpec(kind="vllm", url=v.url, capacity=2)],
                        fail_threshold=2, poll_timeout=0.2)
            await m.poll_once(force=True)
            eid = f"vllm-{v.port}"
            v.state.update(running=0, waiting=0)
            await m.poll_once(force=True)
            assert m.get(eid).healthy
            v.stall = 1.0
            with m.inflight(eid):
                for _ in range(4):
                    await m.poll_once(force=True)
                    st = m.get(eid)
                    assert st.healthy and st.busy and st.load.capacity == 2
            for _ in range(2):
                await m.poll_once(force=True)
            assert not m.get(eid).healthy  # idle and silent: down
            v.stall = 0.0
            await m.poll_once(force=True)
            await m.poll_once(force=True)
            assert m.get(eid).healthy

    run(t)


def test_engine_that_reports_running_requests_is_busy_too() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        async with fake_vllm(running=2, waiting=0) as v:
            m = manager(http, [EngineSpec(kind="vllm", url=v.url)], poll_timeout=0.2)
            await m.poll_once(force=True)
            eid = f"vllm-{v.port}"
            assert m.get(eid).load.running == 2
            v.stall = 1.0  # other clients keep it busy: not ours, still busy
            for _ in range(3):
                await m.poll_once(force=True)
            assert m.get(eid).healthy and m.get(eid).busy

    run(t)


def test_failed_requests_and_a_failed_poll_take_an_engine_down() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        async with fake_vllm(running=0, waiting=0) as v:
            changes = Changes()
            m = manager(http, [EngineSpec(kind="vllm", url=v.url)], fail_threshold=2,
                        on_change=changes)
            await m.poll_once(force=True)
            eid = f"vllm-{v.port}"
            m.note_result(eid, False)
            m.note_result(eid, False)
            assert m.get(eid).healthy  # polls still fine: requests alone do not decide
            v.healthy = False
            await m.poll_once(force=True)  # one failed poll
            m.note_result(eid, False)
            assert not m.get(eid).healthy
            assert changes.seen[-1][0]["healthy"] is False

    run(t)


def test_configured_capabilities_are_gossiped() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        async with fake_vllm() as v:
            m = manager(http, [EngineSpec(kind="vllm", url=v.url,
                                          capabilities=("embeddings",))])
            await m.poll_once(force=True)
            rec = m.record()[0]
            assert rec["capabilities"] == ["embeddings"]
            assert "model_capabilities" not in rec

    run(t)
