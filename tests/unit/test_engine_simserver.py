"""The SIMULATED engine server (swarmd/engines/simulated.py) over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from swarmd.engines.simulated import (
    SimulatedEngine,
    config_from_args,
    embedding,
    start_simulated_engine,
)

Body = dict[str, Any]


def run(fn: Callable[[SimulatedEngine, aiohttp.ClientSession], Awaitable[None]],
        **opts: Any) -> None:
    async def main() -> None:
        eng = await start_simulated_engine(**opts)
        try:
            async with aiohttp.ClientSession() as http:
                await fn(eng, http)
        finally:
            await eng.stop()

    asyncio.run(main())


def chat(content: str = "hello world", **extra: Any) -> Body:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def sse_events(raw: bytes) -> list[str]:
    text = raw.decode()
    assert text.endswith("data: [DONE]\n\n")
    parts = text.split("\n\n")
    assert parts[-1] == ""
    events = parts[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    return [e[len("data: "):] for e in events]


def test_stream_is_openai_sse_with_usage_chunk() -> None:
    async def go(eng: SimulatedEngine, http: aiohttp.ClientSession) -> None:
        body = chat(stream=True, stream_options={"include_usage": True}, max_tokens=3)
        async with http.post(eng.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events = sse_events(await r.read())
        assert events[-1] == "[DONE]"
        docs = [json.loads(e) for e in events[:-1]]
        assert docs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        words = [d["choices"][0]["delta"].get("content", "") for d in docs[1:-2]]
        assert len(words) == 3 and all(words)
        assert docs[-2]["choices"][0]["finish_reason"] == "length"
        usage_chunk = docs[-1]
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"] == {"prompt_tokens": 2, "completion_tokens": 3,
                                        "total_tokens": 5}
        assert all(d["usage"] is None for d in docs[:-1])
        assert {d["object"] for d in docs} == {"chat.completion.chunk"}

    run(go, model="m", max_tokens=8)


def test_stream_without_include_usage_has_no_usage() -> None:
    async def go(eng: SimulatedEngine, http: aiohttp.ClientSession) -> None:
        async with http.post(eng.url + "/v1/completions",
                             json={"model": "m", "prompt": "a b c", "stream": True}) as r:
            events = sse_events(await r.read())
        docs = [json.loads(e) for e in events[:-1]]
        assert all("usage" not in d for d in docs)
        assert docs[-1]["choices"][0]["finish_reason"] == "stop"
        assert "".join(d["choices"][0]["text"] for d in docs).count(" ") == 3

    run(go, model="m", max_tokens=4)


def test_non_stream_answers_and_is_deterministic() -> None:
    async def go(eng: SimulatedEngine, http: aiohttp.ClientSession) -> None:
        texts = []
        for _ in range(2):
            async with http.post(eng.url + "/v1/chat/completions", json=chat()) as r:
                doc = await r.json()
            texts.append(doc["choices"][0]["message"]["content"])
            assert doc["object"] == "chat.completion"
            assert doc["usage"]["completion_tokens"] == 5
        assert texts[0] == texts[1] and len(texts[0].split()) == 5
        async with http.get(eng.url + "/debug/last_request") as r:
            last = await r.json()
        assert last["route"] == "/v1/chat/completions" and last["body"] == chat()

    run(go, model="m", max_tokens=5)


def test_queue_full_gives_429_with_retry_after() -> None:
    async def go(eng: SimulatedEngine, http: aiohttp.ClientSession) -> None:
        first = asyncio.ensure_future(http.post(eng.url + "/v1/chat/completions", json=chat()))
        second = asyncio.ensure_future(http.post(eng.url + "/v1/chat/completions", json=chat()))
        for _ in range(400):
            if eng.running == 1 and eng.waiting == 1:
                break
            await asyncio.sleep(0.005)
        async with http.get(eng.url + "/metrics") as r:
            text = await r.text()
        assert "simengine_requests_running 1" in text
        assert "simengine_requests_waiting 1" in text
        async with http.post(eng.url + "/v1/chat/completions", json=chat()) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "1"
            err = (await r.json())["error"]
            assert set(err) == {"message", "type", "param", "code"}
        for fut in (first, second):
            resp = await fut
            assert resp.status == 200
            resp.release()
        assert eng.rejected_total == 1

    run(go, model="m", ttft_ms=150, concurrency=1, queue=1)


def test_ttft_and_token_rate_roughly_honoured() -> None:
    async def go(eng: SimulatedEngine, http: aiohttp.ClientSession) -> None:
        t0 = time.monotonic()
        async with http.post(eng.url + "/v1/chat/completions", json=chat(stream=True)) as r:
            await r.content.readuntil(b"\n\n")  # role chunk: sent at once
            first_token = None
            while line := await r.content.readuntil(b"\n\n"):
                if b'"content":"' in line and b'"content":""' not in line and first_token is None:
                    first_token = time.monotonic() - t0
                if line.startswith(b"data: [DONE]"):
                    break
        total = time.monotonic() - t0
        assert first_token is not None
        assert 0.09 <= first_token < 0.5
        assert total >= 0.1 + 4 / 100 - 0.01  # 5 tokens at 100 tok/s after the first

    run(go, model="m", ttft_ms=100, tps=100, max_tokens=5)


def test_prefix_cache_cuts_ttft_for_a_known_conversation() -> None:
    async def go(eng: SimulatedEngine, http: aiohttp.ClientSession) -> None:
        sys_msg = {"role": "system", "content": "long shared prefix " * 20}
        first = {"model": "m", "messages": [sys_msg, {"role": "user", "content": "q1"}]}
        t0 = time.monotonic()
        async with http.post(eng.url + "/v1/chat/completions", json=first) as r:
            reply = (await r.json())["choices"][0]["message"]
        cold = time.monotonic() - t0
        follow = {"model": "m", "messages": [sys_msg, {"role": "user", "content": "q1"},
                                             reply, {"role": "user", "content": "q2"}]}
        t0 = time.monotonic()
        async with http.post(eng.url + "/v1/chat/completions", json=follow) as r:
            assert r.status == 200
        warm = time.monotonic() - t0
        assert eng.prefix_hits == 1
        assert cold >= 0.2 and warm < cold / 2

    run(go, model="m", ttft_ms=200, prefix_cache=4, prefix_hit_factor=0.1)


def test_bad_requests_get_openai_errors() -> None:
    async def go(eng: SimulatedEngine, http: aiohttp.ClientSession) -> None:
        cases: list[tuple[bytes, int, str | None]] = [
            (b"{not json", 400, None),
            (b"[1]", 400, None),
            (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]})
             .encode(), 404, "model_not_found"),
            (json.dumps({"model": "m", "messages": []}).encode(), 400, None),
        ]
        for raw, status, code in cases:
            async with http.post(eng.url + "/v1/chat/completions", data=raw,
                                 headers={"Content-Type": "application/json"}) as r:
                assert r.status == status
                err = (await r.json())["error"]
                assert err["code"] == code and err["message"]

    run(go, model="m")


def test_embeddings_deterministic_unit_vectors() -> None:
    async def go(eng: SimulatedEngine, http: aiohttp.ClientSession) -> None:
        async with http.post(eng.url + "/v1/embeddings",
                             json={"model": "m", "input": ["a", "b", "a"]}) as r:
            doc = await r.json()
        vecs = [d["embedding"] for d in doc["data"]]
        assert len(vecs) == 3 and all(len(v) == 8 for v in vecs)
        assert vecs[0] == vecs[2] != vecs[1]
        assert abs(sum(x * x for x in vecs[0]) - 1.0) < 1e-3
        assert vecs[0] == embedding("a", 8)

    run(go, model="m", embedding_dim=8)


def test_models_health_and_api_key() -> None:
    async def go(eng: SimulatedEngine, http: aiohttp.ClientSession) -> None:
        async with http.get(eng.url + "/v1/models") as r:
            assert r.status == 401
        auth = {"Authorization": "Bearer k"}
        async with http.get(eng.url + "/v1/models", headers=auth) as r:
            ids = [m["id"] for m in (await r.json())["data"]]
        assert ids == ["a", "b"]
        async with http.get(eng.url + "/health") as r:
            assert (await r.json())["status"] == "ok"

    run(go, models=("a", "b"), api_key="k")


def test_zero_delay_mode_is_fast() -> None:
    async def go(eng: SimulatedEngine, http: aiohttp.ClientSession) -> None:
        t0 = time.monotonic()
        for _ in range(50):
            async with http.post(eng.url + "/v1/chat/completions",
                                 json=chat(stream=True)) as r:
                await r.read()
        per = (time.monotonic() - t0) / 50
        assert per < 0.02, per

    run(go, model="m", max_tokens=16)


def test_command_line() -> None:
    host, port, cfg = config_from_args(
        ["--port", "9", "--model", "a", "--model", "b", "--ttft-ms", "5", "--tps", "7",
         "--max-tokens", "3", "--concurrency", "2", "--queue", "4"])
    assert (host, port) == ("127.0.0.1", 9)
    assert cfg.models == ("a", "b") and cfg.ttft_ms == 5 and cfg.tps == 7
    assert (cfg.max_tokens, cfg.concurrency, cfg.queue) == (3, 2, 4)


def test_simulated_kind_reads_the_server() -> None:
    from swarmd.engines.base import EngineSpec
    from swarmd.engines.registry import default_registry

    async def go(eng: SimulatedEngine, http: aiohttp.ClientSession) -> None:
        cls = default_registry().get("simulated")
        adapter = cls(EngineSpec(kind="simulated", url=eng.url))
        assert await cls.probe(http, eng.url)
        assert await adapter.health(http)
        assert [m.id for m in await adapter.models(http)] == ["a", "b"]
        busy = [asyncio.ensure_future(http.post(eng.url + "/v1/completions",
                                                json={"model": "a", "prompt": "x"}))
                for _ in range(3)]
        for _ in range(400):
            if eng.running == 2 and eng.waiting == 1:
                break
            await asyncio.sleep(0.005)
        load = await adapter.load(http)
        assert (load.running, load.waiting, load.capacity) == (2, 1, 2)
        for fut in busy:
            (await fut).release()

    run(go, models=("a", "b"), ttft_ms=150, concurrency=2, queue=4)
