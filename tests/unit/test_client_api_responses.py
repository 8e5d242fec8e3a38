"""OpenAI's Responses API on the API port, driven by the real ``openai`` SDK.

Engines are simulated (tests/fakes/client_api_env.py).  The cross-node test
runs two API servers in this process, each with its own node id and a
snapshot that gossips the other's API address, as a real swarm's does.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import openai
import pytest

from swarmd.api.app import ApiDeps, ApiServer
from swarmd.api.responses_api import ResponseStore, owner_of
from swarmd.config import ApiSection, RoutingSection
from swarmd.core.routing import Router
from swarmd.core.snapshot import NodeInfo, Snapshot
from tests.fakes.client_api_env import env, run

pytestmark = pytest.mark.timeout(60)

WEATHER = {"type": "function", "name": "get_weather", "description": "weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


def test_store_keeps_encodings_expires_and_drops_the_oldest() -> None:
    store = ResponseStore(ttl=10.0, max_items=2)
    conv = [{"role": "user", "content": "hi"}]
    store.put("resp_a_N", b'{"id":"resp_a_N","output":[]}', conv, now=0.0)
    assert store.raw("resp_a_N", 1.0) == (b'{"id":"resp_a_N","output":[]}',
                                         b'[{"role":"user","content":"hi"}]')
    assert store.get("resp_a_N", 1.0) == ({"id": "resp_a_N", "output": []}, conv)
    assert store.get("resp_a_N", 10.0) is None and len(store) == 0  # expired: gone
    for i in range(3):
        store.put(f"resp_{i}_N", b"{}", conv, now=0.0)
    assert store.raw("resp_0_N", 1.0) is None and len(store) == 2  # oldest dropped
    assert store.delete("resp_2_N") and not store.delete("resp_2_N")


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=10)


def test_create_streamed_and_not() -> None:
    async def go() -> None:
        async with env() as e:
            c = client(e.base)
            r = await asyncio.to_thread(c.responses.create, model="sim-model",
                                        instructions="be brief", input="hello there",
                                        max_output_tokens=3, temperature=0.3)
            assert r.status == "incomplete" and r.incomplete_details is not None
            assert r.incomplete_details.reason == "max_output_tokens"
            assert len(r.output_text.split()) == 3
            assert r.usage is not None and r.usage.output_tokens == 3
            assert r.usage.input_tokens == 4
            assert owner_of(r.id) == e.server.deps.snapshot().node_id
            body = e.sim.last_request["body"]
            assert body["messages"] == [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "hello there"}]
            assert body["max_tokens"] == 3 and body["temperature"] == 0.3
            got = await asyncio.to_thread(c.responses.retrieve, r.id)
            assert got.id == r.id and got.output_text == r.output_text

            events = await asyncio.to_thread(lambda: list(c.responses.create(
                model="sim-model", input=[{"role": "user", "content": [
                    {"type": "input_text", "text": "hi"}]}], stream=True)))
            kinds = [ev.type for ev in events]
            assert kinds[:4] == ["response.created", "response.in_progress",
                                 "response.output_item.added", "response.content_part.added"]
            assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                                  "response.output_item.done", "response.completed"]
            deltas = [ev.delta for ev in events if ev.type == "response.output_text.delta"]
            assert len(deltas) == 8
            done = events[-1].response
            assert done.output_text == "".join(deltas) and done.usage.output_tokens == 8
            assert [ev.sequence_number for ev in events] == list(range(len(events)))
            stored = await asyncio.to_thread(c.responses.retrieve, done.id)
            assert stored.output_text == done.output_text

            r2 = await asyncio.to_thread(
                c.responses.create, model="sim-model", input="json please",
                text={"format": {"type": "json_schema", "name": "x",
                                 "schema": {"type": "object"}, "strict": True}}, store=False)
            assert e.sim.last_request["body"]["response_format"] == {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}}
            with pytest.raises(openai.NotFoundError):
                await asyncio.to_thread(c.responses.retrieve, r2.id)

    run(go)


def test_function_call_round_trip() -> None:
    async def go() -> None:
        async with env() as e:
            c = client(e.base)
            r = await asyncio.to_thread(c.responses.create, model="sim-tools",
                                        input="weather in Paris?", tools=[WEATHER])
            calls = [o for o in r.output if o.type == "function_call"]
            assert len(calls) == 1 and calls[0].name == "get_weather"
            assert json.loads(calls[0].arguments) == {"city": "x"}
            sent = e.tools.last_request["body"]
            assert sent["tools"] == [{"type": "function", "function": {
                k: WEATHER[k] for k in ("name", "description", "parameters")}}]
            # Follow-up by previous_response_id: only the tool output is sent.
            r2 = await asyncio.to_thread(c.responses.create, model="sim-tools",
                                         previous_response_id=r.id, tools=[WEATHER],
                                         input=[{"type": "function_call_output",
                                                 "call_id": calls[0].call_id,
                                                 "output": "sunny"}])
            assert r2.output_text and r2.previous_response_id == r.id
            msgs = e.tools.last_request["body"]["messages"]
            assert msgs[0] == {"role": "user", "content": "weather in Paris?"}
            assert msgs[1]["tool_calls"][0]["id"] == calls[0].call_id
            assert msgs[2] == {"role": "tool", "tool_call_id": calls[0].call_id,
                               "content": "sunny"}
            # Streamed function call.
            events = await asyncio.to_thread(lambda: list(c.responses.create(
                model="sim-tools", input="again", tools=[WEATHER], stream=True)))
            kinds = [ev.type for ev in events]
            assert "response.function_call_arguments.delta" in kinds
            args_done = [ev for ev in events
                         if ev.type == "response.function_call_arguments.done"][0]
            assert json.loads(args_done.arguments) == {"city": "x"}
            final = events[-1].response
            assert final.output[0].type == "function_call"

    run(go)


def _node(node_id: str, engines: list[Any], api: str, is_self: bool) -> NodeInfo:
    return NodeInfo(node_id=node_id, name=node_id[-4:], state="alive", addrs=(),
                    incarnation=1, state_since=1.0, record={"engines": engines, "api": api},
                    record_version=1, is_self=is_self)


def test_previous_response_id_on_another_node() -> None:
    async def go() -> None:
        async with env() as e:
            a = e.server
            ports: dict[str, int] = {"A": a.port, "B": 0}
            engines = a.deps.local.record()  # type: ignore[union-attr]
            # Node A is the env's server (its snapshot names it 12D3KooWSelf);
            # node B is a second API server on the same engines.
            a_id = a.deps.snapshot().node_id

            def snap_b() -> Snapshot:
                return Snapshot(node_id="12D3KooWNodeB", name="b", addrs=(), coordinator=None,
                                nodes=(_node("12D3KooWNodeB", engines, f"127.0.0.1:{ports['B']}",
                                             True),
                                       _node(a_id, [], f"127.0.0.1:{ports['A']}", False)),
                                joined=True, seq=1)

            b = ApiServer(ApiDeps(api=ApiSection(listen="127.0.0.1:0"),
                                  routing=RoutingSection(), snapshot=snap_b,
                                  local=a.deps.local, router=Router(rng=random.Random(2))))
            await b.start()
            ports["B"] = b.port
            try:
                r = await asyncio.to_thread(client(e.base).responses.create,
                                            model="sim-model", input="remember me")
                assert owner_of(r.id) == a_id
                r2 = await asyncio.to_thread(client(f"http://127.0.0.1:{b.port}")
                                             .responses.create, model="sim-model",
                                             input="and now?", previous_response_id=r.id)
                assert owner_of(r2.id) == "12D3KooWNodeB"
                msgs = e.sim.last_request["body"]["messages"]
                assert msgs == [{"role": "user", "content": "remember me"},
                                {"role": "assistant", "content": r.output_text},
                                {"role": "user", "content": "and now?"}]
                # B can also retrieve A's response; a made-up id is a 404 in OpenAI's shape.
                got = await asyncio.to_thread(client(f"http://127.0.0.1:{b.port}")
                                              .responses.retrieve, r.id)
                assert got.output_text == r.output_text
                with pytest.raises(openai.NotFoundError) as info:
                    await asyncio.to_thread(client(e.base).responses.create, model="sim-model",
                                            input="x",
                                            previous_response_id="resp_00_12D3KooWGone")
                assert info.value.body["param"] == "previous_response_id"  # type: ignore[index]
            finally:
                await b.stop()

    run(go)


@pytest.mark.parametrize(("raw", "status", "param"), [
    (b"{not json", 400, None),
    (b'{"input": "x"}', 400, "model"),
    (b'{"model": "sim-model"}', 400, "input"),
    (b'{"model": "sim-model", "input": 5}', 400, "input"),
    (b'{"model": "sim-model", "input": [{"type": "item_reference", "id": "x"}]}', 400,
     "input[0]"),
    (b'{"model": "sim-model", "input": "x", "tools": [{"type": "web_search"}]}', 400,
     "tools[0]"),
    (b'{"model": "sim-model", "input": "x", "max_output_tokens": 0}', 400,
     "max_output_tokens"),
    (b'{"model": "sim-model", "input": "x", "background": true}', 400, "background"),
    (b'{"model": "nope", "input": "x"}', 404, "model"),
])
def test_errors_have_openais_shape(raw: bytes, status: int, param: str | None) -> None:
    async def go() -> None:
        async with env() as e:
            got, doc, _ = await e.post("/v1/responses", raw=raw)
            assert got == status, doc
            err = doc["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert err["param"] == param and err["message"]

    run(go)


def test_native_pass_through_to_engines_that_serve_responses() -> None:
    async def go() -> None:
        async with env(ollama_version="0.13.3") as e:  # serves /v1/responses, says so
            c = client(e.base)
            node = e.server.deps.snapshot().node_id
            r = await asyncio.to_thread(c.responses.create, model="sim-llama:latest",
                                        input="hello there", store=False,
                                        max_output_tokens=3)
            assert r.id.startswith("resp_sim") and owner_of(r.id) is None  # the engine's own
            assert len(r.output_text.split()) == 3
            path, sent = e.ollama.native_requests[-1]
            assert path == "/v1/responses"
            assert sent == {"model": "sim-llama:latest", "input": "hello there",
                            "store": False, "max_output_tokens": 3}
            events = await asyncio.to_thread(lambda: list(c.responses.create(
                model="sim-llama:latest", input="hi", store=False, stream=True)))
            assert events[0].type == "response.created"
            assert events[-1].type == "response.completed"
            assert e.ollama.native_requests[-1][0] == "/v1/responses"
            # Stored (the default): translated, so the id names this node.
            n = len(e.ollama.native_requests)
            r2 = await asyncio.to_thread(c.responses.create, model="sim-llama:latest",
                                         input="hi")
            assert owner_of(r2.id) == node and len(e.ollama.native_requests) == n
            assert e.ollama.last_request["route"] == "/v1/chat/completions"
            # A follow-up of a stored response is translated too.
            r3 = await asyncio.to_thread(c.responses.create, model="sim-llama:latest",
                                         input="more", store=False,
                                         previous_response_id=r2.id)
            assert owner_of(r3.id) == node and len(e.ollama.native_requests) == n
        async with env() as e:  # an older Ollama: no /v1/responses, always translated
            c = client(e.base)
            r = await asyncio.to_thread(c.responses.create, model="sim-llama:latest",
                                        input="hi", store=False)
            assert owner_of(r.id) == e.server.deps.snapshot().node_id
            assert all(p != "/v1/responses" for p, _ in e.ollama.native_requests)

    run(go)
