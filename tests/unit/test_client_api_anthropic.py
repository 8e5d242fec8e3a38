"""Anthropic's Messages API on the API port, driven by the real ``anthropic`` SDK.

Engines are simulated (tests/fakes/client_api_env.py): ``sim-model`` answers
words, ``sim-tools`` (an OpenAI engine) calls the first tool it is given.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import pytest

from tests.fakes.client_api_env import Env, env, run

pytestmark = pytest.mark.timeout(60)

WEATHER = {"name": "get_weather", "description": "weather of a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


def client(e: Env) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=e.base, api_key="sk-unused", max_retries=0, timeout=10)


def test_create_and_stream() -> None:
    async def go() -> None:
        async with env() as e:
            c = client(e)
            msg = await asyncio.to_thread(
                c.messages.create, model="sim-model", max_tokens=3, system="be brief",
                stop_sequences=["zzz"], extra_body={"temperature": 0.5, "top_k": 3},
                messages=[{"role": "user", "content": [{"type": "text", "text": "hi there"}]}])
            assert msg.type == "message" and msg.role == "assistant"
            assert msg.stop_reason == "max_tokens"
            assert msg.content[0].type == "text" and len(msg.content[0].text.split()) == 3
            assert msg.usage.output_tokens == 3 and msg.usage.input_tokens == 4
            body = e.sim.last_request["body"]
            assert body["messages"] == [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "hi there"}]
            assert body["max_tokens"] == 3 and body["stop"] == ["zzz"]
            assert body["temperature"] == 0.5 and body["top_k"] == 3
            assert e.sim.last_request["headers"].get("x-api-key") is None

            def stream() -> tuple[list[str], Any]:
                with c.messages.stream(model="sim-model", max_tokens=4,
                                       messages=[{"role": "user", "content": "hi"}]) as s:
                    texts = list(s.text_stream)
                    return texts, s.get_final_message()

            texts, final = await asyncio.to_thread(stream)
            assert len(texts) == 4
            assert final.content[0].text == "".join(texts)
            assert final.stop_reason == "max_tokens"
            assert final.usage.output_tokens == 4 and final.usage.input_tokens == 1

            count = await asyncio.to_thread(
                c.messages.count_tokens, model="sim-model",
                messages=[{"role": "user", "content": "one two three"}])
            assert count.input_tokens == 3

    run(go)


def test_tool_round_trip() -> None:
    async def go() -> None:
        async with env() as e:
            c = client(e)
            msgs: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
            first = await asyncio.to_thread(c.messages.create, model="sim-tools",
                                            max_tokens=16, tools=[WEATHER], messages=msgs,
                                            tool_choice={"type": "any"})
            assert first.stop_reason == "tool_use"
            use = [b for b in first.content if b.type == "tool_use"][0]
            assert use.name == "get_weather" and use.input == {"city": "x"}
            sent = e.tools.last_request["body"]
            assert sent["tools"] == [{"type": "function", "function": {
                "name": "get_weather", "parameters": WEATHER["input_schema"],
                "description": "weather of a city"}}]
            assert sent["tool_choice"] == "required"
            msgs += [{"role": "assistant", "content": first.content},
                     {"role": "user", "content": [
                         {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"},
                         {"type": "text", "text": "and so?"}]}]
            second = await asyncio.to_thread(c.messages.create, model="sim-tools",
                                             max_tokens=16, tools=[WEATHER], messages=msgs)
            assert second.stop_reason in ("end_turn", "max_tokens")
            assert second.content and second.content[0].type == "text"
            sent = e.tools.last_request["body"]["messages"]
            assert sent[1] == {"role": "assistant", "content": "", "tool_calls": [
                {"id": use.id, "type": "function",
                 "function": {"name": "get_weather", "arguments": json.dumps({"city": "x"})}}]}
            assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}
            assert sent[3] == {"role": "user", "content": "and so?"}

            def stream() -> Any:
                with c.messages.stream(model="sim-tools", max_tokens=16, tools=[WEATHER],
                                       messages=msgs[:1]) as s:
                    return s.get_final_message()

            final = await asyncio.to_thread(stream)
            assert final.stop_reason == "tool_use"
            assert final.content[0].type == "tool_use"
            assert final.content[0].input == {"city": "x"}
            assert final.usage.input_tokens == 7 and final.usage.output_tokens == 5

    run(go)


@pytest.mark.parametrize(("raw", "status", "etype"), [
    (b"{not json", 400, "invalid_request_error"),
    (b'{"model": "sim-model", "messages": [{"role": "user", "content": "x"}]}', 400,
     "invalid_request_error"),  # no max_tokens
    (b'{"model": "sim-model", "max_tokens": 4, "messages": []}', 400, "invalid_request_error"),
    (b'{"model": "sim-model", "max_tokens": 4, "messages": [{"role": "system", '
     b'"content": "x"}]}', 400, "invalid_request_error"),
    (b'{"model": "sim-model", "max_tokens": 4, "messages": [{"role": "user", "content": '
     b'[{"type": "document", "source": {}}]}]}', 400, "invalid_request_error"),
    (b'{"model": "nope", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}',
     404, "not_found_error"),
])
def test_errors_have_anthropics_shape(raw: bytes, status: int, etype: str) -> None:
    async def go() -> None:
        async with env() as e:
            got, doc, _ = await e.post("/v1/messages", raw=raw,
                                       headers={"x-api-key": "k",
                                                "anthropic-version": "2023-06-01"})
            assert got == status, doc
            assert doc["type"] == "error" and set(doc) == {"type", "error"}
            assert doc["error"]["type"] == etype and doc["error"]["message"]

    run(go)


def test_sdk_raises_its_own_error_types() -> None:
    async def go() -> None:
        async with env() as e:
            c = client(e)
            with pytest.raises(anthropic.NotFoundError):
                await asyncio.to_thread(c.messages.create, model="nope", max_tokens=4,
                                        messages=[{"role": "user", "content": "x"}])
            with pytest.raises(anthropic.BadRequestError):
                await asyncio.to_thread(c.messages.create, model="sim-model", max_tokens=0,
                                        messages=[{"role": "user", "content": "x"}])

    run(go)
