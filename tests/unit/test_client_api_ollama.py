"""Ollama's API on the API port, driven by the real ``ollama`` Python client.

Engines (real servers on 127.0.0.1, simulated): ``sim-model`` on swarmd's
simulated engine (OpenAI only: requests are translated) and
``sim-llama:latest`` / ``sim-embed:latest`` on an Ollama-speaking one (requests
go natively).  See tests/fakes/client_api_env.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import ollama
import pytest

from swarmd.api.ollama_api import OllamaServer
from tests.fakes.client_api_env import Env, env, run

pytestmark = pytest.mark.timeout(60)


def client(e: Env) -> ollama.Client:
    return ollama.Client(host=e.base, timeout=10)


def test_listing_routes() -> None:
    async def go() -> None:
        async with env(aliases={"fast": "sim-model"}) as e:
            c = client(e)
            listed = await asyncio.to_thread(c.list)
            names = [m.model for m in listed.models]
            assert names == ["fast", "sim-embed:latest", "sim-llama:latest", "sim-model",
                             "sim-tools"]
            by = {m.model: m for m in listed.models}
            assert by["sim-llama:latest"].details is not None
            assert by["sim-llama:latest"].details.format == "gguf"
            assert by["sim-model"].digest and len(by["sim-model"].digest) == 64
            ps = await asyncio.to_thread(c.ps)
            assert {m.model for m in ps.models} == set(names)
            shown = await asyncio.to_thread(c.show, "sim-embed:latest")
            assert shown.capabilities == ["embedding"]
            shown = await asyncio.to_thread(c.show, "sim-model")
            assert "completion" in (shown.capabilities or [])
            with pytest.raises(ollama.ResponseError) as info:
                await asyncio.to_thread(c.show, "nope")
            assert info.value.status_code == 404 and "nope" in info.value.error
            async with e.http.head(e.base + "/") as r:
                assert r.status == 200
            status, text = await e.get("/")
            assert status == 200 and text == b"Ollama is running"
            status, doc = await e.get("/api/version")
            assert status == 200 and doc["version"]

    run(go)


def test_chat_translated_for_an_openai_engine() -> None:
    async def go() -> None:
        async with env() as e:
            c = client(e)
            msgs = [{"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hello there"}]
            r = await asyncio.to_thread(c.chat, "sim-model", msgs,
                                        options={"num_predict": 3, "temperature": 0.2,
                                                 "top_k": 5, "seed": 7, "stop": ["zzz"],
                                                 "num_ctx": 4096})
            assert r.message.role == "assistant" and len(r.message.content.split()) == 3
            assert r.done and r.done_reason == "length"
            assert r.eval_count == 3 and r.prompt_eval_count == 4  # the sim counts words
            assert r.total_duration and r.total_duration >= (r.eval_duration or 0)
            sent = e.sim.last_request
            assert sent is not None
            body = sent["body"]
            assert body["messages"] == msgs
            assert body["max_tokens"] == 3 and body["temperature"] == 0.2
            assert body["top_k"] == 5 and body["seed"] == 7 and body["stop"] == ["zzz"]
            assert "num_ctx" not in body and "options" not in body

            parts = await asyncio.to_thread(
                lambda: list(c.chat("sim-model", msgs, stream=True,
                                    options={"num_predict": 4})))
            assert [p.done for p in parts] == [False] * 4 + [True]
            words = "".join(p.message.content for p in parts).split()
            assert len(words) == 4 and words[:3] == r.message.content.split()
            assert parts[-1].eval_count == 4 and parts[-1].done_reason == "length"
            assert e.sim.last_request["body"]["stream_options"] == {"include_usage": True}

            j = await asyncio.to_thread(c.chat, "sim-model", msgs, format="json")
            assert j.done
            assert e.sim.last_request["body"]["response_format"] == {"type": "json_object"}

    run(go)


def test_generate_and_embed_translated() -> None:
    async def go() -> None:
        async with env() as e:
            c = client(e)
            g = await asyncio.to_thread(c.generate, "sim-model", "once upon",
                                        system="sys", options={"num_predict": 2})
            assert len(g.response.split()) == 2 and g.done and g.eval_count == 2
            assert e.sim.last_request["body"]["messages"] == [
                {"role": "system", "content": "sys"}, {"role": "user", "content": "once upon"}]
            parts = await asyncio.to_thread(
                lambda: list(c.generate("sim-model", "x", stream=True,
                                        options={"num_predict": 2})))
            assert parts[-1].done and "".join(p.response for p in parts).split()
            raw = await asyncio.to_thread(c.generate, "sim-model", "abc", raw=True,
                                          options={"num_predict": 2})
            assert raw.done
            assert e.sim.last_request["route"] == "/v1/completions"
            assert e.sim.last_request["body"]["prompt"] == "abc"
            emb = await asyncio.to_thread(c.embed, "sim-model", ["a b", "c"])
            assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) == 16
            assert emb.prompt_eval_count == 3
            old = await asyncio.to_thread(c.embeddings, "sim-model", "a b")
            assert list(old.embedding) == emb.embeddings[0]
            loaded = await asyncio.to_thread(c.generate, "sim-model", "")
            assert loaded.done and loaded.done_reason == "load"

    run(go)


def test_ollama_engine_gets_the_native_request() -> None:
    async def go() -> None:
        async with env() as e:
            c = client(e)
            opts = {"num_ctx": 8192, "num_predict": 2}
            r = await asyncio.to_thread(c.chat, "sim-llama:latest",
                                        [{"role": "user", "content": "hi"}],
                                        options=opts, keep_alive="5m")
            assert r.done and len(r.message.content.split()) == 2
            path, body = e.ollama.native_requests[-1]
            assert path == "/api/chat"
            assert body["options"]["num_ctx"] == 8192 and body["keep_alive"] == "5m"
            parts = await asyncio.to_thread(
                lambda: list(c.generate("sim-llama:latest", "x", stream=True)))
            assert parts[-1].done and e.ollama.native_requests[-1][0] == "/api/generate"
            emb = await asyncio.to_thread(c.embed, "sim-embed:latest", "hello")
            assert len(emb.embeddings) == 1
            assert e.ollama.native_requests[-1][0] == "/api/embed"
            status, doc, _ = await e.post("/api/chat", {
                "model": "sim-llama:latest", "stream": False,
                "messages": [{"role": "user", "content": "x"}]})
            assert status == 200 and doc["swarmd_sim"] == "native"

    run(go)


def test_tool_round_trip_translated() -> None:
    async def go() -> None:
        async with env() as e:
            c = client(e)
            tools = [{"type": "function", "function": {
                "name": "get_weather", "description": "weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}}]
            msgs: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
            # sim-tools: an OpenAI engine (simulated) that calls the first tool.
            r = await asyncio.to_thread(c.chat, "sim-tools", msgs, tools=tools)
            assert e.tools.last_request["body"]["tools"] == tools
            assert r.message.tool_calls and r.message.tool_calls[0].function.name == \
                "get_weather"
            call = r.message.tool_calls[0]
            assert dict(call.function.arguments) == {"city": "x"}
            msgs += [r.message, {"role": "tool", "content": "sunny",
                                 "tool_name": "get_weather"}]
            r2 = await asyncio.to_thread(c.chat, "sim-tools", msgs, tools=tools)
            assert r2.message.content and not r2.message.tool_calls
            sent = e.tools.last_request["body"]["messages"]
            assert sent[1]["tool_calls"][0]["function"] == {
                "name": "get_weather", "arguments": json.dumps({"city": "x"})}
            assert sent[2] == {"role": "tool", "content": "sunny",
                               "tool_call_id": sent[1]["tool_calls"][0]["id"]}
            # Streamed: the tool call arrives whole in one line before the final one.
            parts = await asyncio.to_thread(
                lambda: list(c.chat("sim-tools", msgs[:1], tools=tools, stream=True)))
            with_calls = [p for p in parts if p.message.tool_calls]
            assert len(with_calls) == 1 and not with_calls[0].done
            assert dict(with_calls[0].message.tool_calls[0].function.arguments) == {"city": "x"}
            assert parts[-1].done and parts[-1].eval_count == 5
            # Native (Ollama engine): its own tool calls pass unchanged.
            r3 = await asyncio.to_thread(c.chat, "sim-llama:latest", msgs[:1], tools=tools)
            assert r3.message.tool_calls and e.ollama.native_requests[-1][0] == "/api/chat"


@pytest.mark.parametrize(("path", "raw", "status"), [
    ("/api/chat", b"{not json", 400),
    ("/api/chat", b'{"messages": []}', 400),
    ("/api/chat", b'{"model": "sim-model", "messages": "hi"}', 400),
    ("/api/chat", b'{"model": "sim-model", "messages": [{"role": "x", "content": "a"}]}', 400),
    ("/api/chat", b'{"model": "sim-model", "format": 5, "messages": [{"role": "user"}]}', 400),
    ("/api/generate", b'{"model": "sim-model", "prompt": 5}', 400),
    ("/api/generate", b'{"model": "sim-model", "prompt": "a", "options": {"top_k": "x"}}', 400),
    ("/api/embed", b'{"model": "sim-model", "input": 5}', 400),
    ("/api/chat", b'{"model": "nope", "messages": [{"role": "user", "content": "a"}]}', 404),
    ("/api/pull", b'{"model": "llama3"}', 501),
    ("/api/create", b'{"model": "x"}', 501),
])
def test_errors_have_ollamas_shape(path: str, raw: bytes, status: int) -> None:
    async def go() -> None:
        async with env() as e:
            got, doc, _ = await e.post(path, raw=raw)
            assert got == status, doc
            assert isinstance(doc, dict) and set(doc) == {"error"}
            assert isinstance(doc["error"], str) and doc["error"]
            if status == 404:
                assert doc["error"] == 'model "nope" not found, try pulling it first'

    run(go)


def test_pull_and_delete_say_swarmd_does_not_manage_models() -> None:
    async def go() -> None:
        async with env() as e:
            c = client(e)
            for call in (lambda: c.pull("llama3"), lambda: c.delete("sim-model")):
                with pytest.raises(ollama.ResponseError) as info:
                    await asyncio.to_thread(call)
                assert info.value.status_code == 501
                assert "models through this API" in info.value.error

    run(go)


def test_second_listener_serves_only_ollama_routes() -> None:
    async def go() -> None:
        async with env() as e:
            srv = OllamaServer(e.server.proxy, e.server.deps)
            await srv.start("127.0.0.1:0")
            try:
                c = ollama.Client(host=f"http://127.0.0.1:{srv.port}", timeout=10)
                r = await asyncio.to_thread(c.chat, "sim-model",
                                            [{"role": "user", "content": "x"}])
                assert r.done
                async with e.http.get(f"http://127.0.0.1:{srv.port}/v1/models") as resp:
                    assert resp.status == 404
            finally:
                await srv.stop()

    run(go)


def test_the_ollama_plugin_refuses_a_swarmd_node_as_an_engine() -> None:
    # Self-loop guard: a swarmd node's Ollama API (here the API port, and the
    # second listener) answers "Ollama is running" with X-Swarmd; the plugin's
    # probe must not detect it and its health check must fail with the reason,
    # while the Ollama-speaking simulated engine (a real Ollama's answers) passes.
    from swarmd.engines.base import EngineError, EngineSpec
    from swarmd_engines.ollama import OllamaEngine

    async def go() -> None:
        async with env() as e:
            srv = OllamaServer(e.server.proxy, e.server.deps)
            await srv.start("127.0.0.1:0")
            try:
                for url in (e.base, f"http://127.0.0.1:{srv.port}"):
                    assert not await OllamaEngine.probe(e.http, url)
                    eng = OllamaEngine(EngineSpec(kind="ollama", url=url, id="loop"))
                    with pytest.raises(EngineError, match="swarmd node"):
                        await eng.health(e.http)
                assert await OllamaEngine.probe(e.http, e.ollama.url)
                real = OllamaEngine(EngineSpec(kind="ollama", url=e.ollama.url, id="o"))
                assert await real.health(e.http)
            finally:
                await srv.stop()

    run(go)
