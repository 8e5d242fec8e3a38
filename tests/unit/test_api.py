"""The OpenAI API against stub engines, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from swarmd.api.app import ApiDeps, ApiServer
from swarmd.config import ApiSection, RoutingSection
from swarmd.core.routing import Router
from swarmd.core.snapshot import Snapshot
from swarmd.testing.local_engines import SimEngines
from swarmd.testing.sim_engine import SSE_CHUNKS, SimEngine, sse_bytes
from swarmd.testing.swarm_snapshot import snapshot

pytestmark = pytest.mark.timeout(30)

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


class Env:
    def __init__(self, server: ApiServer, stubs: list[SimEngine], engines: SimEngines,
                 http: aiohttp.ClientSession) -> None:
        self.server = server
        self.stubs = stubs
        self.engines = engines
        self.http = http
        self.base = f"http://127.0.0.1:{server.port}"

    async def post(self, path: str, body: Any = None, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        data = raw if raw is not None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        async with self.http.post(self.base + path, data=data, headers=hdrs) as r:
            text = await r.read()
            try:
                doc = json.loads(text)
            except ValueError:
                doc = text
            return r.status, doc, r.headers


@asynccontextmanager
async def env(n: int = 1, *, api: ApiSection | None = None,
              aliases: dict[str, str] | None = None,
              snap: Callable[[SimEngines], Snapshot] | None = None,
              seed: int = 1, queue_timeout: float = 120.0) -> AsyncIterator[Env]:
    stubs = [await SimEngine(f"e{i}", canned=True).start() for i in range(n)]
    engines = SimEngines(stubs)
    snapshot_now = snap(engines) if snap else snapshot(engines.records())
    deps = ApiDeps(api=api or ApiSection(listen="127.0.0.1:0"),
                   routing=RoutingSection(aliases=aliases or {},
                                          queue_timeout=queue_timeout),
                   snapshot=lambda: snapshot_now, local=engines,
                   router=Router(rng=random.Random(seed)))
    server = ApiServer(deps)
    await server.start()
    http = aiohttp.ClientSession()
    try:
        yield Env(server, stubs, engines, http)
    finally:
        await http.close()
        await server.stop()
        for s in stubs:
            await s.stop()


def run(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(fn(), 20))


def err_of(doc: Any) -> dict[str, Any]:
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    e = doc["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    return e  # type: ignore[no-any-return]


# -- validation errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param", "code"),
    [
        ("/v1/chat/completions", b"{not json", None, "invalid_json"),
        ("/v1/chat/completions", b"[1, 2]", None, "invalid_json"),
        ("/v1/chat/completions", b'{"messages": []}', "model", "missing_required_parameter"),
        ("/v1/chat/completions", b'{"model": 5, "messages": []}', "model", "invalid_type"),
        ("/v1/chat/completions", b'{"model": "tiny"}', "messages", "missing_required_parameter"),
        ("/v1/chat/completions", b'{"model": "tiny", "messages": "hi"}', "messages",
         "invalid_type"),
        ("/v1/chat/completions", b'{"model": "tiny", "messages": [1]}', "messages",
         "invalid_type"),
        ("/v1/chat/completions",
         b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
         "stream", "invalid_type"),
        ("/v1/completions", b'{"model": "tiny"}', "prompt", "missing_required_parameter"),
        ("/v1/completions", b'{"model": "tiny", "prompt": 7}', "prompt", "invalid_type"),
        ("/v1/embeddings", b'{"model": "tiny"}', "input", "missing_required_parameter"),
        ("/v1/embeddings", b'{"model": "tiny", "input": {"a": 1}}', "input", "invalid_type"),
    ],
)
def test_bad_requests_get_400(path: str, body: bytes, param: str | None, code: str) -> None:
    async def go() -> None:
        async with env() as e:
            status, doc, _ = await e.post(path, raw=body)
            assert status == 400
            err = err_of(doc)
            assert err["type"] == "invalid_request_error"
            assert err["param"] == param and err["code"] == code
            assert e.stubs[0].seen == []

    run(go)


def test_unknown_model_404_and_body_too_large_413() -> None:
    async def go() -> None:
        async with env(api=ApiSection(listen="127.0.0.1:0", max_body_bytes=2048)) as e:
            status, doc, _ = await e.post("/v1/chat/completions", {**CHAT, "model": "nope"})
            assert status == 404 and err_of(doc)["code"] == "model_not_found"
            big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4000}]}
            status, doc, _ = await e.post("/v1/chat/completions", big)
            assert status == 413 and err_of(doc)["code"] == "request_too_large"
            status, doc, _ = await e.post("/v1/nothing", CHAT)
            assert status == 404 and err_of(doc)["code"] == "not_found"
            async with e.http.get(e.base + "/v1/chat/completions") as r:
                assert r.status == 405
                assert err_of(await r.json())["code"] == "method_not_allowed"

    run(go)


# -- pass-through ------------------------------------------------------------------


def test_non_stream_and_unknown_fields_pass_through_untouched() -> None:
    async def go() -> None:
        async with env() as e:
            raw = (b'{"model":"tiny","messages":[{"role":"user","content":"hi"}],'
                   b'"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],'
                   b'"response_format":{"type":"json_object"},"logprobs":true,"seed":42,'
                   b'"x_vendor":{"a":[1,2.50,null]},   "temperature":0.7}')
            status, doc, hdrs = await e.post("/v1/chat/completions", raw=raw)
            assert status == 200, doc
            assert doc["choices"][0]["message"]["content"] == "hi"
            assert hdrs["X-Swarmd-Engine"] == "e0" and hdrs["X-Request-Id"]
            seen = e.stubs[0].seen[-1]
            assert seen.body == raw  # byte for byte, whitespace included
            assert seen.headers["x-request-id"] == hdrs["X-Request-Id"]
            for path, body in (("/v1/completions", {"model": "tiny", "prompt": "a"}),
                               ("/v1/embeddings", {"model": "tiny", "input": ["a"]})):
                status, doc, _ = await e.post(path, body)
                assert status == 200 and e.stubs[0].seen[-1].path == path

    run(go)


def test_alias_rewrites_model_only() -> None:
    async def go() -> None:
        async with env(aliases={"gpt-4o": "tiny"}) as e:
            body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "é"}],
                    "seed": 1, "zz": {"k": [1, 2]}}
            status, doc, _ = await e.post("/v1/chat/completions", body)
            assert status == 200
            sent = e.stubs[0].seen[-1].json()
            assert sent == {**body, "model": "tiny"}
            assert list(sent) == list(body)  # key order kept

    run(go)


@pytest.mark.parametrize("usage", [False, True])
def test_sse_stream_is_byte_exact(usage: bool) -> None:
    async def go() -> None:
        async with env() as e:
            body: dict[str, Any] = {**CHAT, "stream": True}
            if usage:
                body["stream_options"] = {"include_usage": True}
            async with e.http.post(e.base + "/v1/chat/completions", json=body) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/event-stream")
                got = await r.read()
            assert got == sse_bytes(include_usage=usage)

    run(go)


# -- retries and upstream failures ------------------------------------------------


def test_failing_first_candidate_is_retried_on_another() -> None:
    async def go() -> None:
        async with env(2) as e:
            e.stubs[0].mode = "drop"
            for _ in range(8):
                status, doc, hdrs = await e.post("/v1/chat/completions", CHAT)
                assert status == 200, doc
                assert hdrs["X-Swarmd-Engine"] == "e1"
            assert len(e.stubs[0].seen) >= 1  # it was tried first at least once
            assert len(e.stubs[1].seen) == 8
            proxy = e.server.proxy
            assert proxy.stats.retries == len(e.stubs[0].seen)
            assert e.engines.inflight_now == {"e0": 0, "e1": 0}

    run(go)


@pytest.mark.parametrize(
    ("mode", "status", "code", "retry_after"),
    [
        ("status:429", 429, "queue_timeout", "5"),
        ("status:503", 503, "no_healthy_engine", "2"),
        ("drop", 502, "upstream_error", None),
        ("hang", 504, "upstream_timeout", None),
        ("headhang", 504, "upstream_timeout", None),
    ],
)
def test_every_candidate_failing(mode: str, status: int, code: str,
                                 retry_after: str | None) -> None:
    async def go() -> None:
        api = ApiSection(listen="127.0.0.1:0", first_byte_timeout=0.3, idle_timeout=0.3)
        # Engines that all answer 429 are full: the request queues (here
        # for 0.5 s), trying none again before their Retry-After (2 s).
        async with env(2, api=api, queue_timeout=0.5) as e:
            for s in e.stubs:
                s.mode = mode
            st, doc, hdrs = await e.post("/v1/chat/completions", {**CHAT, "stream": True})
            assert st == status, doc
            err = err_of(doc)
            assert err["code"] == code
            assert hdrs.get("Retry-After") == retry_after
            assert sum(len(s.seen) for s in e.stubs) == 2  # both tried
            if mode == "status:429":  # now known saturated: queued without a try
                st, doc, hdrs = await e.post("/v1/chat/completions", CHAT)
                assert st == 429 and err_of(doc)["code"] == "queue_timeout"
                assert sum(len(s.seen) for s in e.stubs) == 2

    run(go)


def test_unhealthy_or_draining_gives_503_with_retry_after() -> None:
    async def go() -> None:
        async with env(snap=lambda en: snapshot(en.records(healthy=False))) as e:
            st, doc, hdrs = await e.post("/v1/chat/completions", CHAT)
            assert st == 503 and err_of(doc)["code"] == "no_healthy_engine"
            assert int(hdrs["Retry-After"]) >= 1
        async with env(snap=lambda en: snapshot(en.records(), draining=True)) as e:
            st, doc, hdrs = await e.post("/v1/chat/completions", CHAT)
            assert st == 503 and "Retry-After" in hdrs
            assert e.stubs[0].seen == []

    run(go)


async def read_until_closed(resp: aiohttp.ClientResponse) -> tuple[bytes, BaseException | None]:
    got = b""
    try:
        async for chunk in resp.content.iter_any():
            got += chunk
    except aiohttp.ClientPayloadError as exc:
        return got, exc
    return got, None


def test_midstream_failure_gives_sse_error_event_then_close() -> None:
    async def go() -> None:
        async with env() as e:
            e.stubs[0].mode = "midfail"
            async with e.http.post(e.base + "/v1/chat/completions",
                                   json={**CHAT, "stream": True}) as r:
                assert r.status == 200
                got, exc = await read_until_closed(r)
            assert got.startswith(SSE_CHUNKS[0] + SSE_CHUNKS[1])
            tail = got[len(SSE_CHUNKS[0] + SSE_CHUNKS[1]):]
            assert tail.startswith(b"data: {\"error\"")
            event = json.loads(tail[len(b"data: "):].split(b"\n\n")[0])
            assert event["error"]["code"] == "upstream_error"
            assert b"[DONE]" not in got
            assert exc is not None  # the connection was closed, not ended cleanly

    run(go)


def test_total_timeout_mid_stream_ends_with_timeout_event() -> None:
    async def go() -> None:
        api = ApiSection(listen="127.0.0.1:0", request_timeout=0.25)
        async with env(api=api) as e:
            e.stubs[0].mode = "slow"
            e.stubs[0].delay = 0.1
            async with e.http.post(e.base + "/v1/chat/completions",
                                   json={**CHAT, "stream": True}) as r:
                got, _ = await read_until_closed(r)
            assert b'"code": "upstream_timeout"' in got and b"[DONE]" not in got

    run(go)


def test_client_disconnect_cancels_the_upstream() -> None:
    async def go() -> None:
        async with env() as e:
            stub = e.stubs[0]
            stub.mode, stub.delay = "slow", 0.2
            async with e.http.post(e.base + "/v1/chat/completions",
                                   json={**CHAT, "stream": True}) as r:
                await r.content.readany()
                r.close()  # the client goes away mid-stream
            for _ in range(100):
                if stub.cancelled and e.engines.inflight_now["e0"] == 0:
                    break
                await asyncio.sleep(0.02)
            assert stub.cancelled == 1
            assert e.engines.inflight_now["e0"] == 0
            assert e.server.proxy.router.inflight(next(iter(_targets(e)))) == 0

    run(go)


def _targets(e: Env) -> Sequence[Any]:
    from swarmd.core.routing import Target

    return [Target(e.server.deps.snapshot().node_id, s.engine_id) for s in e.stubs]


# -- models, health, readiness ------------------------------------------------------


def test_models_listing_union_and_aliases() -> None:
    from swarmd.testing.swarm_snapshot import node

    other = node("12D3KooWOther", [
        {"id": "llamacpp-8080", "kind": "llamacpp", "healthy": True, "models": ["tiny", "big"]},
        {"id": "sick", "kind": "vllm", "healthy": False, "models": ["hidden"]},
        "garbage", {"id": 3}, {"id": "x", "models": "notalist"},  # type: ignore[list-item]
    ])
    dead = node("12D3KooWDead", [{"id": "e", "kind": "k", "healthy": True,
                                  "models": ["ghost"]}], state="dead")

    async def go() -> None:
        async with env(aliases={"gpt-4o": "tiny", "nothing": "absent"},
                       snap=lambda en: snapshot(en.records(), [other, dead])) as e:
            async with e.http.get(e.base + "/v1/models") as r:
                doc = await r.json()
            assert doc["object"] == "list"
            ids = [m["id"] for m in doc["data"]]
            assert ids == ["big", "gpt-4o", "tiny"]
            tiny = doc["data"][2]
            assert tiny["object"] == "model" and tiny["owned_by"] == "swarmd"
            assert tiny["swarmd"]["nodes"] == sorted(["12D3KooWOther", "12D3KooWSelf"])
            assert {"node_id": "12D3KooWOther", "engine_id": "llamacpp-8080",
                    "kind": "llamacpp", "capabilities": ["chat", "completions", "embeddings"],
                    } in tiny["swarmd"]["engines"]
            assert tiny["swarmd"]["capabilities"] == ["chat", "completions", "embeddings"]
            assert doc["data"][1]["swarmd"]["alias_of"] == "tiny"
            async with e.http.get(e.base + "/v1/models/big") as r:
                assert (await r.json())["id"] == "big"
            async with e.http.get(e.base + "/v1/models/ghost") as r:
                assert r.status == 404
                assert err_of(await r.json())["code"] == "model_not_found"

    run(go)


def test_health_and_ready() -> None:
    async def go() -> None:
        async with env() as e:
            async with e.http.get(e.base + "/health") as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
            async with e.http.get(e.base + "/ready") as r:
                doc = await r.json()
                assert r.status == 200 and doc["ready"] is True
                assert doc["engines_local"] == 1 and doc["models"] == 1
        async with env(snap=lambda en: snapshot(seq=0)) as e:
            async with e.http.get(e.base + "/ready") as r:
                assert r.status == 503 and (await r.json())["ready"] is False

    run(go)


# -- the openai SDK ------------------------------------------------------------------


def test_openai_sdk_chat_stream_and_midstream_error() -> None:
    openai = pytest.importorskip("openai")

    async def go() -> None:
        async with env() as e:
            client = openai.AsyncOpenAI(base_url=e.base + "/v1", api_key="unused",
                                        max_retries=0)
            out = await client.chat.completions.create(model="tiny", messages=[
                {"role": "user", "content": "hi"}])
            assert out.choices[0].message.content == "hi"
            stream = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True,
                stream_options={"include_usage": True})
            text, usage = "", None
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                usage = chunk.usage or usage
            assert text == "Hello \u00e9\u2713" and usage is not None
            assert usage.total_tokens == 8
            e.stubs[0].mode = "midfail"
            with pytest.raises(openai.APIError):
                stream = await client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True)
                async for _ in stream:
                    pass
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="nope", messages=[
                    {"role": "user", "content": "hi"}])
            await client.close()

    run(go)
