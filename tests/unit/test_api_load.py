"""The proxy under load and bad input, against stub engines over real HTTP:
queueing at capacity, engine errors, validation, capabilities, HTTP-level
errors (the real-load issue; the llama.cpp version is in
tests/integration/test_real_load.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest

from tests.unit.test_api import CHAT, env, err_of, run

pytestmark = pytest.mark.timeout(30)


def test_single_slot_engine_requests_queue_and_run_one_at_a_time() -> None:
    async def go() -> None:
        async with env(1) as e:
            e.engines.capacities["e0"] = 1
            # Gossip says capacity 1 too (the snapshot is built from records).
            e.stubs[0].mode = "slow"
            e.stubs[0].delay = 0.02
            results = await asyncio.gather(*(
                e.post("/v1/chat/completions", {**CHAT, "stream": True}) for _ in range(8)))
            assert [st for st, _, _ in results] == [200] * 8
            assert e.engines.inflight_max["e0"] == 1
            proxy = e.server.proxy
            assert proxy.queues.stats.queued >= 6
            assert proxy.queues.depths() == {}

    run(go)


def test_client_leaving_the_queue_never_reaches_the_engine() -> None:
    async def go() -> None:
        async with env(1) as e:
            e.engines.capacities["e0"] = 1
            e.stubs[0].mode = "slow"
            e.stubs[0].delay = 0.3
            first = asyncio.create_task(e.post("/v1/chat/completions", {**CHAT, "stream": True}))
            await asyncio.sleep(0.1)
            waiter = asyncio.create_task(e.post("/v1/chat/completions", CHAT))
            await asyncio.sleep(0.1)
            assert e.server.proxy.queues.depth("tiny") == 1
            waiter.cancel()  # the client disconnects while queued
            await asyncio.sleep(0.1)
            assert e.server.proxy.queues.depth("tiny") == 0
            assert (await first)[0] == 200
            assert len(e.stubs[0].seen) == 1

    run(go)


def test_full_queue_and_queue_timeout_are_429_with_retry_after() -> None:
    async def go() -> None:
        async with env(1, queue_timeout=0.3) as e:
            e.engines.capacities["e0"] = 1
            e.stubs[0].mode = "slow"
            e.stubs[0].delay = 0.2
            busy = asyncio.create_task(e.post("/v1/chat/completions", {**CHAT, "stream": True}))
            await asyncio.sleep(0.05)
            st, doc, hdrs = await e.post("/v1/chat/completions", CHAT)
            assert st == 429 and err_of(doc)["code"] == "queue_timeout"
            assert int(hdrs["Retry-After"]) >= 1
            await busy
            e.server.proxy.queues.max_waiting = 0
            busy = asyncio.create_task(e.post("/v1/chat/completions", {**CHAT, "stream": True}))
            await asyncio.sleep(0.05)
            st, doc, hdrs = await e.post("/v1/chat/completions", CHAT)
            assert st == 429 and err_of(doc)["code"] == "queue_full" and "Retry-After" in hdrs
            await busy

    run(go)


def test_engine_500_is_retried_elsewhere_then_502_without_internals() -> None:
    async def go() -> None:
        async with env(2) as e:
            e.stubs[0].mode = "traceback500"
            for _ in range(4):
                st, doc, hdrs = await e.post("/v1/chat/completions", CHAT)
                assert st == 200 and hdrs["X-Swarmd-Engine"] == "e1"
            e.stubs[1].mode = "traceback500"
            st, doc, _ = await e.post("/v1/chat/completions", CHAT)
            assert st == 502 and err_of(doc)["code"] == "upstream_error"
            text = json.dumps(doc)
            assert "Traceback" not in text and "site-packages" not in text
            assert "e0" in err_of(doc)["message"] and "e1" in err_of(doc)["message"]
            assert ("e0", False) in e.engines.results

    run(go)


def test_engine_4xx_passes_through_in_openai_error_shape() -> None:
    async def go() -> None:
        async with env(1) as e:
            e.stubs[0].mode = "detail422"
            st, doc, _ = await e.post("/v1/chat/completions", CHAT)
            assert st == 422
            err = err_of(doc)
            assert err["type"] == "invalid_request_error" and err["code"] == "engine_422"
            assert "field required" in err["message"] and "e0" in err["message"]
            e.stubs[0].mode = "status:400"
            st, doc, _ = await e.post("/v1/chat/completions", CHAT)
            assert st == 400 and err_of(doc)["message"] == "stub 400"

    run(go)


@pytest.mark.parametrize(("field", "value"), [
    ("max_tokens", "abc"), ("max_tokens", -1), ("max_tokens", 0), ("max_tokens", True),
    ("max_completion_tokens", 1.5), ("temperature", 3), ("temperature", "hot"),
    ("top_p", 1.5), ("n", 0), ("stop", 5), ("stop", [1]), ("seed", "x"),
    ("stream_options", []), ("stream_options", {"include_usage": "yes"}),
    ("presence_penalty", -3),
])
def test_bad_common_fields_are_400_before_any_engine(field: str, value: Any) -> None:
    async def go() -> None:
        async with env(1) as e:
            st, doc, _ = await e.post("/v1/chat/completions", {**CHAT, field: value})
            assert st == 400, doc
            assert err_of(doc)["param"] in (field, f"{field}.include_usage")
            assert e.stubs[0].seen == []

    run(go)


def test_json_sent_as_text_plain_reaches_the_engine_as_json() -> None:
    async def go() -> None:
        async with env(1) as e:
            st, doc, _ = await e.post("/v1/chat/completions", CHAT,
                                      headers={"Content-Type": "text/plain"})
            assert st == 200, doc
            assert e.stubs[0].seen[0].headers["content-type"] == "application/json"

    run(go)


def test_usage_chunk_when_asked_and_none_from_the_engine() -> None:
    async def go() -> None:
        async with env(1) as e:
            # The stub sends usage itself when asked: it is passed as is.
            st, doc, _ = await e.post("/v1/chat/completions", {
                **CHAT, "stream": True, "stream_options": {"include_usage": True}})
            assert st == 200
            events = [ln for ln in doc.split(b"\n\n") if ln.startswith(b"data: {")]
            usages = [json.loads(ev[6:]).get("usage") for ev in events]
            assert usages.count(None) == len(usages) - 1 and usages[-1]["completion_tokens"] == 3

    run(go)


def test_embeddings_and_chat_engines_under_one_model() -> None:
    from swarmd.testing.local_engines import SimEngines
    from swarmd.testing.swarm_snapshot import snapshot

    def snap(engines: SimEngines) -> Any:
        engines.capabilities = {"e0": ["chat", "completions"], "e1": ["embeddings"]}
        return snapshot(engines.records())

    async def go() -> None:
        async with env(2, snap=snap) as e:
            for _ in range(6):
                st, _, hdrs = await e.post("/v1/chat/completions", CHAT)
                assert st == 200 and hdrs["X-Swarmd-Engine"] == "e0"
                st, _, hdrs = await e.post("/v1/embeddings", {"model": "tiny", "input": [1, 2]})
                assert st == 200 and hdrs["X-Swarmd-Engine"] == "e1"
            async with e.http.get(e.base + "/v1/models") as r:
                doc = await r.json()
            caps = doc["data"][0]["swarmd"]["capabilities"]
            assert caps == ["chat", "completions", "embeddings"]

    run(go)


def test_capability_nobody_has_is_400() -> None:
    from swarmd.testing.local_engines import SimEngines
    from swarmd.testing.swarm_snapshot import snapshot

    def snap(engines: SimEngines) -> Any:
        engines.capabilities = {"e0": ["embeddings"]}
        return snapshot(engines.records())

    async def go() -> None:
        async with env(1, snap=snap) as e:
            st, doc, _ = await e.post("/v1/chat/completions", CHAT)
            assert st == 400 and err_of(doc)["code"] == "model_not_supported"
            assert e.stubs[0].seen == []

    run(go)


def test_client_closing_a_finished_stream_is_not_an_error(
        caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        async with env(1) as e:
            reader, writer = await asyncio.open_connection("127.0.0.1", e.server.port)
            body = json.dumps({**CHAT, "stream": True}).encode()
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
            data = b""
            while b"[DONE]" not in data:
                data += await reader.read(65536)
            writer.transport.abort()  # gone right after [DONE]
            await asyncio.sleep(0.2)

    with caplog.at_level(logging.WARNING):
        run(go)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def _raw_http(port: int, data: bytes) -> tuple[int, dict[str, Any]]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_oversized_header_and_garbage_get_an_error_object(
        caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        async with env(1) as e:
            port = e.server.port
            big = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 \
                + b"\r\n\r\n"
            st, doc = await asyncio.to_thread(_raw_http, port, big)
            assert st == 431 and doc["error"]["code"] == "request_header_too_large"
            st, doc = await asyncio.to_thread(_raw_http, port, b"\x16\x03\x01garbage\r\n\r\n")
            assert st == 400 and doc["error"]["type"] == "invalid_request_error"

    with caplog.at_level(logging.INFO):
        run(go)
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_every_request_is_reported_with_its_usage() -> None:
    from swarmd.api.usage import UsageEvent

    async def go() -> None:
        async with env(1) as e:
            seen: list[UsageEvent] = []
            e.server.proxy.on_usage = seen.append
            await e.post("/v1/chat/completions", CHAT)
            await e.post("/v1/chat/completions", {**CHAT, "stream": True,
                                                  "stream_options": {"include_usage": True}})
            await e.post("/v1/chat/completions", {**CHAT, "model": "ghost"})
            assert [ev.status for ev in seen] == [200, 200, 404]
            assert (seen[0].prompt_tokens, seen[0].completion_tokens) == (1, 1)
            assert (seen[1].prompt_tokens, seen[1].completion_tokens) == (5, 3)
            assert seen[0].engine_id == "e0" and seen[0].ttft_s is not None
            assert seen[2].engine_id == "" and seen[2].model == "ghost"

    run(go)
