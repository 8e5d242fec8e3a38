"""Built-in engine plugins against fakes of each real engine (tests/fakes/upstreams.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from swarmd.engines.base import EngineError, EngineLoad, EngineSpec, open_upstream, rewrite_model
from swarmd.engines.registry import EngineRegistry
from swarmd.engines.simulated import start_simulated_engine
from swarmd_engines.openai import REMOTE_POLL_S
from tests.fakes.upstreams import (
    FakeUpstream,
    fake_llama_cpp_python,
    fake_llama_server,
    fake_mlx,
    fake_ollama,
    fake_openai,
    fake_tgi,
    fake_vllm,
)

REG = EngineRegistry(eps=[])


def run(fn: Callable[[aiohttp.ClientSession], Awaitable[None]]) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            await asyncio.wait_for(fn(http), 10)

    asyncio.run(main())


def with_fake(fake: FakeUpstream,
              fn: Callable[[FakeUpstream, aiohttp.ClientSession], Awaitable[None]]) -> None:
    async def body(http: aiohttp.ClientSession) -> None:
        async with fake:
            await fn(fake, http)

    run(body)


def make(kind: str, url: str, **kw: Any) -> Any:
    return REG.create(EngineSpec(kind=kind, url=url, **kw))


# -- llama.cpp ---------------------------------------------------------------------


def test_llama_server_health_models_and_slot_load() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        e = make("llamacpp", f.url)
        assert await e.health(http) is True
        models = await e.models(http)
        assert [m.id for m in models] == ["../models/tiny-Q4_K_M.gguf"]
        assert models[0].loaded is True
        assert await e.load(http) == EngineLoad(running=1, waiting=None, capacity=2)
        f.state["busy"] = 2
        assert (await e.load(http)).running == 2
        # /metrics is off (endpoint_metrics false): never asked
        assert "/metrics" not in f.paths()
        f.state["loading"] = True
        assert await e.health(http) is False

    with_fake(fake_llama_server(slots=2, busy=1), t)


def test_llama_server_metrics_give_running_and_waiting() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        e = make("llamacpp", f.url)
        assert await e.health(http)
        assert await e.load(http) == EngineLoad(running=3, waiting=5, capacity=4)

    with_fake(fake_llama_server(slots=4, busy=3, deferred=5, metrics=True), t)


def test_llama_server_without_slots_or_metrics_reports_capacity_only() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        e = make("llamacpp", f.url)
        assert await e.health(http)
        assert await e.load(http) == EngineLoad(capacity=3)
        assert "/slots" not in f.paths()

    with_fake(fake_llama_server(slots=3, busy=1, slots_endpoint=False), t)


def test_llama_server_api_key_on_polls_and_requests() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        bad = make("llamacpp", f.url, api_key="wrong")
        assert await bad.health(http) is True  # /health is public in llama-server
        with pytest.raises(EngineError):
            await bad.models(http)
        good = make("llamacpp", f.url, api_key="k1")
        assert [m.id for m in await good.models(http)] == ["../models/tiny-Q4_K_M.gguf"]
        req = good.request("/v1/chat/completions", b'{"model":"x"}',
                           {"Content-Type": "application/json", "Authorization": "Bearer client"})
        assert req.url == f.url + "/v1/chat/completions"
        assert req.headers["Authorization"] == "Bearer k1"
        assert req.method == "POST" and req.body == b'{"model":"x"}'

    with_fake(fake_llama_server(api_key="k1"), t)


def test_llama_cpp_python_flavor() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        e = make("llamacpp", f.url)
        assert await e.health(http) is True  # no /health: /v1/models answers
        assert e.flavor == "llama-cpp-python"
        assert [m.id for m in await e.models(http)] == ["tiny"]
        assert await e.load(http) == EngineLoad(capacity=1)  # one request at a time
        assert "/metrics" not in f.paths() and "/slots" not in f.paths()

    with_fake(fake_llama_cpp_python("tiny"), t)


def test_llama_down_raises_connection_error() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        f = await fake_llama_server().start()
        url = f.url
        await f.stop()
        with pytest.raises(aiohttp.ClientConnectorError):
            await make("llamacpp", url).health(http)

    run(t)


# -- Ollama ------------------------------------------------------------------------


def test_ollama_models_with_loaded_flags() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        e = make("ollama", f.url)
        assert await e.health(http)
        models = {m.id: m for m in await e.models(http)}
        assert set(models) == {"llama3.2:latest", "qwen2.5:0.5b"}
        assert models["llama3.2:latest"].loaded is True
        assert models["qwen2.5:0.5b"].loaded is False
        assert models["llama3.2:latest"].meta["context_length"] == 4096
        assert await e.load(http) == EngineLoad()  # Ollama exports no load
        req = e.request("/v1/chat/completions", b"{}", {})
        assert req.url == f.url + "/v1/chat/completions"
        assert "Authorization" not in req.headers
        assert req.headers["Content-Type"] == "application/json"
        f.healthy = False
        assert await e.health(http) is False

    with_fake(fake_ollama(), t)


def test_ollama_url_given_with_v1_suffix() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        e = make("ollama", f.url + "/v1/")
        assert e.root == f.url
        assert len(await e.models(http)) == 2
        assert e.request("/v1/embeddings", b"{}", {}).url == f.url + "/v1/embeddings"

    with_fake(fake_ollama(), t)


# -- vLLM --------------------------------------------------------------------------


def test_vllm_load_from_metrics() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        e = make("vllm", f.url)
        assert await e.health(http)
        models = await e.models(http)
        assert [m.id for m in models] == ["Qwen/Qwen2.5-0.5B-Instruct"]
        assert models[0].meta["max_model_len"] == 32768
        assert await e.load(http) == EngineLoad(running=3, waiting=1, kv_cache=0.42)
        f.healthy = False
        assert await e.health(http) is False

    with_fake(fake_vllm(running=3, waiting=1, kv=0.42), t)


def test_vllm_data_parallel_series_sum_and_legacy_kv_name() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        load = await make("vllm", f.url).load(http)
        assert load == EngineLoad(running=4, waiting=6, kv_cache=0.5)

    with_fake(fake_vllm(running=2, waiting=3, kv=0.5, legacy_kv_name=True, dp_engines=2), t)


# -- TGI ---------------------------------------------------------------------------


def test_tgi_info_and_metrics() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        e = make("tgi", f.url)
        assert await e.health(http)
        models = await e.models(http)
        assert [m.id for m in models] == ["HuggingFaceH4/zephyr-7b-beta"]
        assert models[0].meta["max_total_tokens"] == 2048
        assert await e.load(http) == EngineLoad(running=5, waiting=2, capacity=64)
        f.healthy = False
        assert await e.health(http) is False

    with_fake(fake_tgi(max_concurrent=64, queue=2, batch=5), t)


def test_tgi_load_before_models_fetches_capacity() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        assert (await make("tgi", f.url).load(http)).capacity == 128

    with_fake(fake_tgi(), t)


# -- mlx ---------------------------------------------------------------------------


def test_mlx_health_and_models() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        e = make("mlx", f.url)
        assert await e.health(http)
        assert [m.id for m in await e.models(http)] == ["/Users/me/models/m-4bit"]
        assert await e.load(http) == EngineLoad()

    with_fake(fake_mlx("/Users/me/models/m-4bit"), t)


# -- openai (cloud) ----------------------------------------------------------------


def test_openai_bearer_and_base_url_with_path() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        base = f.url + "/api/v1"
        e = make("openai", base, api_key="sk-1")
        assert await e.health(http)
        assert [m.id for m in await e.models(http)] == ["a", "b"]
        req = e.request("/v1/chat/completions", b"{}",
                        {"content-type": "application/json", "authorization": "Bearer leak"})
        assert req.url == f.url + "/api/v1/chat/completions"
        assert req.headers["Authorization"] == "Bearer sk-1"
        assert "authorization" not in req.headers  # the client's key never goes upstream
        assert await make("openai", base, api_key="nope").health(http) is False
        assert await make("openai", base).health(http) is False

    with_fake(fake_openai("sk-1", ("a", "b"), prefix="/api/v1"), t)


def test_openai_poll_interval_floor_for_remote_hosts() -> None:
    remote = make("openai", "https://api.example.com/v1", api_key="k")
    assert remote.poll_every(2.0) == REMOTE_POLL_S > 2.0
    assert remote.id == "openai-443"
    assert make("openai", "http://127.0.0.1:9000").poll_every(2.0) == 2.0
    assert make("openai", "https://api.example.com/v1",
                options={"poll_interval": 5}).poll_every(2.0) == 5.0
    extra = make("openai", "https://x.example/v1", api_key="k",
                 options={"headers": {"HTTP-Referer": "https://me"}})
    assert extra.request("/v1/completions", b"{}", {}).headers["HTTP-Referer"] == "https://me"


def test_api_key_never_in_spec_repr() -> None:
    spec = EngineSpec(kind="openai", url="https://api.example.com/v1", api_key="sk-secret")
    assert "sk-secret" not in repr(spec)


# -- simulated ---------------------------------------------------------------------


def test_simulated_plugin_against_the_simulated_engine() -> None:
    async def t(http: aiohttp.ClientSession) -> None:
        sim = await start_simulated_engine(models=("m1", "m2"), concurrency=3)
        try:
            e = make("simulated", sim.url)
            assert await e.health(http)
            assert [m.id for m in await e.models(http)] == ["m1", "m2"]
            load = await e.load(http)
            assert (load.running, load.waiting, load.capacity) == (0, 0, 3)
            assert await type(e).probe(http, sim.url)
        finally:
            await sim.stop()

    run(t)


# -- request rewriting and the forward helper --------------------------------------


def test_rename_rewrites_model_only_when_mapped() -> None:
    e = make("llamacpp", "http://127.0.0.1:8080",
             options={"rename": {"../models/tiny.gguf": "tiny"}})
    body = json.dumps({"model": "tiny", "messages": [], "extra": {"k": 1}}).encode()
    sent = json.loads(e.request("/v1/chat/completions", body, {}).body)
    assert sent == {"model": "../models/tiny.gguf", "messages": [], "extra": {"k": 1}}
    other = b'{"model": "other"}'
    assert e.request("/v1/chat/completions", other, {}).body == other
    assert rewrite_model(b"not json", {"a": "b"}) == b"not json"
    assert rewrite_model(b"[1]", {"a": "b"}) == b"[1]"


def test_open_upstream_sends_engine_request() -> None:
    async def t(f: FakeUpstream, http: aiohttp.ClientSession) -> None:
        e = make("openai", f.url + "/v1", api_key="sk-2")
        resp = await open_upstream(http, e, "/v1/chat/completions", b'{"model":"gpt-4o"}',
                                   {"Content-Type": "application/json"}, timeout=5)
        async with resp:
            doc = await resp.json()
        assert doc == {"fake": "openai", "path": "/v1/chat/completions", "model": "gpt-4o"}
        assert f.seen[-1].headers["authorization"] == "Bearer sk-2"

    with_fake(fake_openai("sk-2"), t)


# -- detection signatures ----------------------------------------------------------


def test_each_probe_recognises_only_its_own_engine() -> None:
    fakes = {
        "llamacpp/server": fake_llama_server(),
        "llamacpp/python": fake_llama_cpp_python(),
        "ollama": fake_ollama(),
        "vllm": fake_vllm(),
        "tgi": fake_tgi(),
        "mlx": fake_mlx(),
        "openai": fake_openai(),
    }
    expected = {"llamacpp/server": ["llamacpp"], "llamacpp/python": ["llamacpp"],
                "ollama": ["ollama"], "vllm": ["vllm"], "tgi": ["tgi"], "mlx": ["mlx"],
                "openai": []}

    async def t(http: aiohttp.ClientSession) -> None:
        for f in fakes.values():
            await f.start()
        sim = await start_simulated_engine()
        try:
            kinds = REG.loadable()
            got = {}
            for name, f in fakes.items():
                got[name] = [c.kind for c in kinds if await c.probe(http, f.url)]
            assert got == expected
            assert [c.kind for c in kinds if await c.probe(http, sim.url)] == ["simulated"]
        finally:
            await sim.stop()
            for f in fakes.values():
                await f.stop()

    run(t)
