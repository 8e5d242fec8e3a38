"""A real llama.cpp engine on a generated tiny model, driven by the openai SDK.

No swarmd here: this pins down what the engine that swarmd forwards to
actually answers (structure, usage counts, SSE chunks, embeddings, errors,
queuing), so that fakes elsewhere can be checked against it. The model's
weights are random, so text content is never asserted.
"""

from __future__ import annotations

import threading

import openai
import pytest
from openai import OpenAI

from swarmd.testing.llama_server import SKIP_REASON, LlamaServer, llama_available
from swarmd.testing.tiny_gguf import N_EMBD

pytestmark = [
    pytest.mark.llama,
    pytest.mark.integration,
    pytest.mark.skipif(not llama_available(), reason=SKIP_REASON),
    pytest.mark.timeout(120),
]


def client(server: LlamaServer) -> OpenAI:
    return OpenAI(base_url=server.openai_base_url, api_key="unused", max_retries=0, timeout=30)


def test_models_lists_the_alias(llama_server: LlamaServer) -> None:
    models = client(llama_server).models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_chat_completion(llama_server: LlamaServer) -> None:
    resp = client(llama_server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello world"}],
        max_tokens=16,
        temperature=0,
    )
    assert resp.object == "chat.completion"
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert 0 < resp.usage.completion_tokens <= 16
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_stream(llama_server: LlamaServer) -> None:
    stream = client(llama_server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert len(chunks) >= 2
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")
    assert all(f is None for f in finishes[:-1])
    deltas = [c.choices[0].delta.content for c in chunks if c.choices]
    assert any(d for d in deltas), "no content delta in the stream"


def test_completion_counts_tiny_vocabulary_tokens(llama_server: LlamaServer) -> None:
    # "<s>" + " hello", " world", " the", " cat", "." : the generated vocabulary
    # holds these words, so the real tokenizer must produce exactly 6 tokens.
    resp = client(llama_server).completions.create(
        model="tiny", prompt="hello world the cat.", max_tokens=16, temperature=0
    )
    assert resp.object == "text_completion"
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert isinstance(resp.choices[0].text, str)
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 6
    assert 0 < resp.usage.completion_tokens <= 16


def test_greedy_completion_is_deterministic(llama_server: LlamaServer) -> None:
    c = client(llama_server)
    texts = {
        c.completions.create(model="tiny", prompt="the dog", max_tokens=12, temperature=0)
        .choices[0]
        .text
        for _ in range(2)
    }
    assert len(texts) == 1


def test_prompt_longer_than_context_is_a_400(llama_server: LlamaServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(llama_server).completions.create(model="tiny", prompt="hello " * 600, max_tokens=4)
    assert info.value.status_code == 400


def test_concurrent_streams_queue_and_both_finish(llama_server: LlamaServer) -> None:
    # The server runs one request at a time; with interrupt_requests off
    # (see tests.fakes.llama_server) the second waits instead of cutting the first.
    results: dict[int, list[str | None]] = {}

    def run(i: int) -> None:
        stream = client(llama_server).chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": f"cat {i}"}],
            max_tokens=24,
            stream=True,
        )
        results[i] = [c.choices[0].finish_reason for c in stream if c.choices]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [0, 1]
    for finishes in results.values():
        assert finishes[-1] in ("stop", "length")


def test_embeddings(llama_embed_server: LlamaServer) -> None:
    resp = client(llama_embed_server).embeddings.create(
        model="tiny-embed", input=["hello world", "the cat"]
    )
    assert resp.object == "list"
    assert [d.index for d in resp.data] == [0, 1]
    for d in resp.data:
        assert d.object == "embedding"
        assert len(d.embedding) == N_EMBD
        assert all(isinstance(x, float) for x in d.embedding)
    assert resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage.prompt_tokens > 0
