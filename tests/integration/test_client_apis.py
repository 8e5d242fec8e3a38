"""Other clients' APIs end to end: real daemons, real llama.cpp, real SDKs.

Node ``a`` has no engine; node ``b`` fronts a real llama.cpp server
(llama-cpp-python on the Gemma 3 270M model, ``--chat_format gemma``, model
id ``gemma3``) and an Ollama-speaking SIMULATED engine (swarmd/testing/ollama_sim.py,
kind ``ollama``: ``sim-llama:latest``, ``sim-embed:latest``).  Every request
goes to ``a`` (so through the forward protocol to ``b``) except the
Responses follow-up, which goes to ``b`` with a ``previous_response_id``
that ``a`` stored.  Clients: ``ollama``, ``anthropic``, ``openai``
(``responses``) and LangChain's ``ChatOpenAI``.  Generations are short
(at most 16 tokens) to keep CI time down; the model's words are not
asserted, only structure and counts.

``[api] ollama_listen`` is checked on one node with only the simulated
Ollama engine (no llama.cpp needed).
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmd.testing.daemon import Daemon, free_port, wait_for
from swarmd.testing.hub_servers import gemma_gguf
from swarmd.testing.llama_server import SKIP_REASON, llama_available, start
from swarmd.testing.ollama_sim import OllamaSim, ollama_sim_thread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
#: The tests on the llama.cpp pair.
needs_llama = pytest.mark.skipif(not llama_available(), reason=SKIP_REASON)

MODEL = "gemma3"
WEATHER_SCHEMA = {"type": "object", "required": ["city"],
                  "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}}}


class Pair:
    def __init__(self, a: Daemon, b: Daemon, sim: OllamaSim) -> None:
        self.a, self.b, self.sim = a, b, sim


def _models(d: Daemon) -> set[str]:
    with urllib.request.urlopen(d.api_url + "/v1/models", timeout=5) as r:
        return {m["id"] for m in json.load(r)["data"]}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("client-apis")
    model, _ = gemma_gguf()
    with start(model, alias=MODEL, n_ctx=1024, extra_args=["--chat_format", "gemma"],
               log_dir=root) as llama, ollama_sim_thread(max_tokens=8) as sim:
        secret = secrets.token_hex(32)
        engines = (f'[[engines]]\nid = "gemma"\nkind = "llamacpp"\nurl = "{llama.base_url}"\n'
                   f'[[engines]]\nid = "oll"\nkind = "ollama"\nurl = "{sim.url}"\n')
        b = Daemon(root, "b", secret=secret, extra_toml=engines).start()
        a = Daemon(root, "a", secret=secret, seeds=[b.seed]).start()
        try:
            wait_for(lambda: {MODEL, "sim-llama:latest", "sim-embed:latest"} <= _models(a),
                     60, what="models gossiped to a")
            yield Pair(a, b, sim)
        finally:
            for d in (a, b):
                if d.alive():
                    d.kill()


@pytest.mark.llama
@needs_llama
def test_ollama_client(pair: Pair) -> None:
    import ollama

    c = ollama.Client(host=pair.a.api_url, timeout=60)
    names = {m.model for m in c.list().models}
    assert {MODEL, "sim-llama:latest", "sim-embed:latest"} <= names
    assert {m.model for m in c.ps().models} >= {MODEL}
    assert "completion" in (c.show(MODEL).capabilities or [])
    msgs = [{"role": "user", "content": "Say hello."}]
    r = c.chat(MODEL, msgs, options={"num_predict": 8, "temperature": 0})
    assert r.done and r.message.role == "assistant"
    assert 0 < (r.eval_count or 0) <= 8 and (r.prompt_eval_count or 0) > 0
    assert (r.total_duration or 0) > 0
    parts = list(c.chat(MODEL, msgs, stream=True, options={"num_predict": 8}))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert 0 < (parts[-1].eval_count or 0) <= 8
    g = c.generate(MODEL, "The sky is", options={"num_predict": 6})
    assert g.done and 0 < (g.eval_count or 0) <= 6
    gparts = list(c.generate(MODEL, "One, two,", stream=True, options={"num_predict": 6}))
    assert gparts[-1].done and "".join(p.response for p in gparts).strip()
    j = c.chat(MODEL, [{"role": "user", "content": "Give a JSON object with a key a."}],
               format="json", options={"num_predict": 16, "temperature": 0})
    assert j.done and j.message.content.lstrip().startswith("{")
    # An Ollama engine gets the client's request natively, across the forward hop.
    nat = c.chat("sim-llama:latest", msgs, options={"num_ctx": 8192, "num_predict": 3})
    assert nat.done and len(nat.message.content.split()) == 3
    path, body = pair.sim.native_requests[-1]
    assert path == "/api/chat" and body["options"]["num_ctx"] == 8192
    emb = c.embed("sim-embed:latest", ["hello", "world"])
    assert len(emb.embeddings) == 2 and pair.sim.native_requests[-1][0] == "/api/embed"


@pytest.mark.llama
@needs_llama
def test_anthropic_sdk(pair: Pair) -> None:
    import anthropic

    c = anthropic.Anthropic(base_url=pair.a.api_url, api_key="unused", max_retries=0,
                            timeout=60)
    msg = c.messages.create(model=MODEL, max_tokens=8, system="Answer briefly.",
                            messages=[{"role": "user", "content": "Say hello."}])
    assert msg.role == "assistant" and msg.stop_reason in ("end_turn", "max_tokens")
    assert 0 < msg.usage.output_tokens <= 8 and msg.usage.input_tokens > 0
    with c.messages.stream(model=MODEL, max_tokens=8,
                           messages=[{"role": "user", "content": "Count to three."}]) as s:
        texts = list(s.text_stream)
        final = s.get_final_message()
    assert "".join(texts) == (final.content[0].text if final.content else "")
    assert 0 < final.usage.output_tokens <= 8 and final.usage.input_tokens > 0
    # One tool round trip; the tool is forced so that the small model calls it
    # (llama.cpp then constrains the arguments to the schema).
    tool = {"name": "get_weather", "description": "Weather of a city",
            "input_schema": WEATHER_SCHEMA}
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = c.messages.create(model=MODEL, max_tokens=16, tools=[tool], messages=ask,
                              tool_choice={"type": "tool", "name": "get_weather"})
    uses = [b for b in first.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather"
    assert uses[0].input.get("city") in ("Paris", "Oslo")
    follow = c.messages.create(model=MODEL, max_tokens=8, tools=[tool], messages=[
        *ask, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                      "content": "Sunny, 21 C"}]}])
    assert follow.role == "assistant" and follow.usage.output_tokens > 0


@pytest.mark.llama
@needs_llama
def test_openai_responses(pair: Pair) -> None:
    import openai

    a = openai.OpenAI(base_url=pair.a.api_url + "/v1", api_key="unused", max_retries=0,
                      timeout=60)
    b = openai.OpenAI(base_url=pair.b.api_url + "/v1", api_key="unused", max_retries=0,
                      timeout=60)
    r = a.responses.create(model=MODEL, input="My name is Ada. Say hi.", max_output_tokens=8)
    assert r.status in ("completed", "incomplete") and r.usage is not None
    assert 0 < r.usage.output_tokens <= 8
    a_id = pair.a.node_id
    assert r.id.endswith("_" + a_id)
    events = list(a.responses.create(model=MODEL, input="Say hi.", max_output_tokens=8,
                                     stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].response.output_text == text
    # The follow-up goes to b, which fetches a's stored response.
    r2 = b.responses.create(model=MODEL, input="What is my name?", previous_response_id=r.id,
                            max_output_tokens=8)
    assert r2.previous_response_id == r.id and r2.id.endswith("_" + pair.b.node_id)
    assert r2.usage is not None and r2.usage.input_tokens > r.usage.input_tokens
    # One function-call round trip (forced, as above).
    tool = {"type": "function", "name": "get_weather", "description": "Weather of a city",
            "parameters": WEATHER_SCHEMA}
    fc = a.responses.create(model=MODEL, input="Weather in Oslo?", tools=[tool],
                            tool_choice={"type": "function", "name": "get_weather"},
                            max_output_tokens=16)
    calls = [o for o in fc.output if o.type == "function_call"]
    assert calls and json.loads(calls[0].arguments).get("city") in ("Paris", "Oslo")
    out = b.responses.create(model=MODEL, previous_response_id=fc.id, tools=[tool],
                             max_output_tokens=8, input=[{
                                 "type": "function_call_output", "call_id": calls[0].call_id,
                                 "output": "Snow, -3 C"}])
    assert out.status in ("completed", "incomplete") and out.usage is not None


@pytest.mark.llama
@needs_llama
def test_langchain_chat_openai(pair: Pair) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=pair.a.api_url + "/v1", api_key="unused", model=MODEL,
                     max_tokens=8)  # type: ignore[call-arg]
    reply = llm.invoke("Say hello.")
    assert isinstance(reply.content, str)
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream("Say hi."))
    assert chunks


def _post(url: str, body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.llama
@needs_llama
def test_malformed_bodies_get_each_apis_error_shape(pair: Pair) -> None:
    base = pair.a.api_url
    status, doc = _post(base + "/api/chat", b"{nope")
    assert status == 400 and set(doc) == {"error"} and isinstance(doc["error"], str)
    status, doc = _post(base + "/v1/messages", b'{"model": "gemma3"}')
    assert status == 400 and doc["type"] == "error"
    assert doc["error"]["type"] == "invalid_request_error"
    status, doc = _post(base + "/v1/responses", b'{"model": "gemma3", "input": 3}')
    assert status == 400 and doc["error"]["param"] == "input"
    assert doc["error"]["type"] == "invalid_request_error"


def test_ollama_listen_serves_ollamas_api_on_its_own_port(tmp_path: Path) -> None:
    port = free_port()
    with ollama_sim_thread(max_tokens=4) as sim:
        engines = f'[[engines]]\nid = "oll"\nkind = "ollama"\nurl = "{sim.url}"\n'
        node = Daemon(tmp_path, "n", secret=secrets.token_hex(32), extra_toml=engines,
                      api_toml=f'ollama_listen = "127.0.0.1:{port}"').start()
        base = f"http://127.0.0.1:{port}"
        try:
            def tags() -> set[str]:
                try:
                    with urllib.request.urlopen(base + "/api/tags", timeout=5) as r:
                        assert r.headers["X-Swarmd"] == "1"
                        return {m["name"] for m in json.load(r)["models"]}
                except urllib.error.URLError:
                    return set()

            wait_for(lambda: {"sim-llama:latest", "sim-embed:latest"} <= tags(), 30,
                     what="the engine's models on the Ollama listener")
            with urllib.request.urlopen(base + "/", timeout=5) as r:
                assert r.read() == b"Ollama is running" and r.headers["X-Swarmd"] == "1"
            status, doc = _post(base + "/api/chat", json.dumps({
                "model": "sim-llama:latest", "stream": False,
                "messages": [{"role": "user", "content": "hi"}]}).encode())
            assert status == 200 and doc["done"] and doc["swarmd_sim"] == "native"
            with pytest.raises(urllib.error.HTTPError) as err:  # only Ollama's routes there
                urllib.request.urlopen(base + "/v1/models", timeout=5)
            assert err.value.code == 404
        finally:
            node.stop()
