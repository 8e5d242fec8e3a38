"""The SIMULATED engine server (swarmd/engines/simulated.py) and the testing kit's engine
(swarmd/testing/sim_engine.py, fault modes) over real HTTP on 127.0.0.1."""

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
    words_for,
)
from swarmd.testing.ollama_sim import OllamaSim
from swarmd.testing.sim_engine import SimEngine, sse_bytes, start_sim_engine

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


# -- the testing kit's engine: swarmd.testing.sim_engine (fault modes, request log) -------


def run_kit(fn: Callable[[SimEngine, aiohttp.ClientSession], Awaitable[None]],
            **opts: Any) -> None:
    async def main() -> None:
        eng = await start_sim_engine("e0", "m", **opts)
        try:
            async with aiohttp.ClientSession() as http:
                await fn(eng, http)
        finally:
            await eng.stop()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_kit_logs_requests_and_answers_like_the_product_engine() -> None:
    async def go(eng: SimEngine, http: aiohttp.ClientSession) -> None:
        async with http.post(eng.url + "/v1/chat/completions", json=chat(max_tokens=3),
                             headers={"X-Test": "1"}) as r:
            assert r.status == 200
            doc = await r.json()
        assert doc["usage"]["completion_tokens"] == 3
        assert doc["choices"][0]["message"]["content"] == "".join(words_for("hello world", 3))
        seen = eng.seen[-1]
        assert seen.path == "/v1/chat/completions" and seen.headers["x-test"] == "1"
        assert seen.json() == chat(max_tokens=3)

    run_kit(go)


def test_kit_script_then_mode_status_errors() -> None:
    async def go(eng: SimEngine, http: aiohttp.ClientSession) -> None:
        eng.script.extend(["status:503", "detail422"])
        got = []
        for _ in range(3):
            async with http.post(eng.url + "/v1/chat/completions", json=chat()) as r:
                got.append((r.status, r.headers.get("Retry-After"), await r.json()))
        assert got[0][:2] == (503, "2") and set(got[0][2]["error"]) >= {"message", "type"}
        assert got[1][0] == 422 and "detail" in got[1][2]
        assert got[2][0] == 200 and got[2][2]["object"] == "chat.completion"
        eng.mode = "traceback500"
        async with http.post(eng.url + "/v1/completions", json={"model": "m", "prompt": "x"}) as r:
            assert r.status == 500 and "Traceback" in await r.text()

    run_kit(go)


def test_kit_midfail_breaks_a_simulated_stream_after_two_events() -> None:
    async def go(eng: SimEngine, http: aiohttp.ClientSession) -> None:
        eng.mode = "midfail"
        got = b""
        broke = False
        async with http.post(eng.url + "/v1/chat/completions", json=chat(max_tokens=6)) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            try:
                async for chunk in r.content.iter_any():
                    got += chunk
            except aiohttp.ClientPayloadError:
                broke = True
        assert broke and b"[DONE]" not in got
        assert got.count(b"data: ") == 2  # role chunk and the first word

    run_kit(go)


def test_kit_slow_spaces_events_and_stall_delays_polls_only() -> None:
    async def go(eng: SimEngine, http: aiohttp.ClientSession) -> None:
        eng.mode, eng.delay = "slow", 0.05
        t0 = time.monotonic()
        async with http.post(eng.url + "/v1/completions",
                             json={"model": "m", "prompt": "a b", "max_tokens": 3}) as r:
            events = sse_events(await r.read())
        assert len(events) == 5 and time.monotonic() - t0 >= 5 * 0.05 * 0.9
        eng.mode, eng.stall = "ok", 0.3
        t0 = time.monotonic()
        async with http.get(eng.url + "/health") as r:
            assert r.status == 200
        assert time.monotonic() - t0 >= 0.28
        t0 = time.monotonic()
        async with http.post(eng.url + "/v1/chat/completions", json=chat()) as r:
            assert r.status == 200
        assert time.monotonic() - t0 < 0.25

    run_kit(go)


def test_kit_counts_requests_cancelled_by_their_client() -> None:
    async def go(eng: SimEngine, http: aiohttp.ClientSession) -> None:
        eng.mode = "hang"
        try:
            async with http.post(eng.url + "/v1/chat/completions", json=chat(),
                                 timeout=aiohttp.ClientTimeout(total=0.2)):
                raise AssertionError("a hanging engine answered")
        except TimeoutError:
            pass
        for _ in range(100):
            if eng.cancelled:
                break
            await asyncio.sleep(0.02)
        assert eng.cancelled == 1

    run_kit(go)


def test_kit_capacity_limit_answers_429_past_the_queue() -> None:
    async def go(eng: SimEngine, http: aiohttp.ClientSession) -> None:
        async def one() -> int:
            async with http.post(eng.url + "/v1/chat/completions", json=chat()) as r:
                await r.read()
                return r.status

        statuses = sorted(await asyncio.gather(one(), one(), one()))
        assert statuses == [200, 200, 429] and eng.rejected_total == 1

    run_kit(go, concurrency=1, queue=1, ttft_ms=200)


def test_kit_canned_answers_are_fixed_bytes() -> None:
    async def go(eng: SimEngine, http: aiohttp.ClientSession) -> None:
        body = chat(stream=True, stream_options={"include_usage": True})
        body["model"] = "anything"
        async with http.post(eng.url + "/v1/chat/completions", json=body) as r:
            assert await r.read() == sse_bytes(include_usage=True)
        async with http.post(eng.url + "/v1/embeddings", json={"model": "x", "input": "a"}) as r:
            assert (await r.json())["data"][0]["embedding"] == [0.1, 0.2]

    run_kit(go, canned=True)


def test_kit_ollama_sim_has_the_fault_modes_too() -> None:
    async def main() -> None:
        sim = await OllamaSim(max_tokens=2, script=["status:500"]).start()
        try:
            async with aiohttp.ClientSession() as http:
                body = {"model": "sim-llama:latest", "stream": False,
                        "messages": [{"role": "user", "content": "hi"}]}
                async with http.post(sim.url + "/api/chat", json=body) as r:
                    assert r.status == 500
                async with http.post(sim.url + "/api/chat", json=body) as r:
                    doc = await r.json()
                assert doc["done"] and doc["swarmd_sim"] == "native"
                assert [p for p, _ in sim.native_requests] == ["/api/chat"]
                assert [s.path for s in sim.seen] == ["/api/chat", "/api/chat"]
        finally:
            await sim.stop()

    asyncio.run(asyncio.wait_for(main(), 20))
