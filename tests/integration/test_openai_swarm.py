"""The OpenAI port end to end: real daemons, a real llama.cpp engine.

Node A has no engine; node B fronts a real llama.cpp server (llama-cpp-python
on a tiny random-weight model) for chat and completions, and a second one for
embeddings.  Through A, the official ``openai`` SDK (sync and async) lists
models, chats with and without streaming, completes and embeds.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmd.testing.daemon import Daemon, wait_for
from swarmd.testing.llama_server import LlamaServer

pytestmark = [pytest.mark.integration, pytest.mark.llama]


def _engines_toml(*urls: str) -> str:
    return "".join(f'\n[[engines]]\nkind = "llamacpp"\nurl = "{u}"\n' for u in urls)


def _models(d: Daemon) -> set[str]:
    with urllib.request.urlopen(d.api_url + "/v1/models", timeout=5) as r:
        return {m["id"] for m in json.load(r)["data"]}


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory,
    llama_server: LlamaServer,
    llama_embed_server: LlamaServer,
) -> Iterator[tuple[Daemon, Daemon]]:
    root = tmp_path_factory.mktemp("pair")
    secret = secrets.token_hex(32)
    b = Daemon(root, "b", secret=secret,
               extra_toml=_engines_toml(llama_server.base_url, llama_embed_server.base_url))
    b.start()
    a = Daemon(root, "a", secret=secret, seeds=[b.seed]).start()
    try:
        wait_for(lambda: {"tiny", "tiny-embed"} <= _models(a), 30, what="models gossiped to A")
        yield a, b
    finally:
        for d in (a, b):
            if d.alive():
                d.kill()


def test_sdk_sync_through_node_without_engine(pair: tuple[Daemon, Daemon]) -> None:
    import openai

    a, _ = pair
    client = openai.OpenAI(base_url=a.api_url + "/v1", api_key="unused", max_retries=0)
    ids = {m.id for m in client.models.list()}
    assert {"tiny", "tiny-embed"} <= ids

    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, seed=1
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and chat.usage.completion_tokens > 0

    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
            stream=True,
        )
    )
    assert len(chunks) >= 2
    assert any(c.choices and c.choices[0].delta.content for c in chunks)

    comp = client.completions.create(model="tiny", prompt="once upon", max_tokens=6)
    assert comp.choices[0].text is not None and comp.usage and comp.usage.completion_tokens > 0

    emb = client.embeddings.create(model="tiny-embed", input=["a", "b c"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 64


def test_sdk_async(pair: tuple[Daemon, Daemon]) -> None:
    import openai

    a, _ = pair

    async def go() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=a.api_url + "/v1", api_key="unused", max_retries=0)
        try:
            r1 = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=4
            )
            stream = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "y"}], max_tokens=4,
                stream=True,
            )
            parts = [c async for c in stream]
            return [r1, parts]
        finally:
            await client.close()

    r1, parts = asyncio.run(go())
    assert r1.choices[0].message is not None
    assert parts


def _post(url: str, body: bytes, ctype: str = "application/json") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_error_objects_from_real_http(pair: tuple[Daemon, Daemon]) -> None:
    a, _ = pair
    url = a.api_url + "/v1/chat/completions"
    cases: list[tuple[bytes, int, str | None]] = [
        (b"{not json", 400, None),
        (json.dumps({"messages": []}).encode(), 400, "model"),
        (json.dumps({"model": "tiny"}).encode(), 400, "messages"),
        (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(),
         404, None),
    ]
    for body, status, param in cases:
        got, doc = _post(url, body)
        assert got == status, (body, got, doc)
        err = doc["error"]
        assert {"message", "type", "param", "code"} <= set(err)
        if param:
            assert err["param"] == param
        if status == 404:
            assert err["code"] == "model_not_found"
    big = b'{"model": "tiny", "messages": [], "x": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    got, doc = _post(url, big)
    assert got == 413 and "error" in doc
    with urllib.request.urlopen(a.api_url + "/health", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(a.api_url + "/ready", timeout=5) as r:
        assert r.status == 200


def test_swarmctl_models(pair: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    a, _ = pair
    r = a.ctl("models", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    ids = {m["id"]: m for m in doc["models"]}
    assert "b" in ids["tiny"]["nodes"]
    r = a.ctl("models")
    assert r.returncode == 0 and "tiny" in r.stdout


def _scrape(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def test_prometheus_metrics_on_the_api_port(pair: tuple[Daemon, Daemon]) -> None:
    a, b = pair
    body = json.dumps({"model": "tiny", "max_tokens": 2,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(a.api_url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
    bad = urllib.request.Request(a.api_url + "/v1/chat/completions", data=b"{",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(bad, timeout=5)
    wait_for(lambda: a.status()["coordinator"] is not None, 30, what="a coordinator")
    ma = _scrape(a.api_url + "/metrics")
    assert ma["swarmd_members{state=alive}"] == 2
    assert ma["swarmd_api_requests_total{route=/v1/chat/completions,status=200}"] >= 1
    assert ma["swarmd_api_requests_total{route=/v1/chat/completions,status=400}"] >= 1
    assert ma["swarmd_api_first_byte_seconds_count{route=/v1/chat/completions}"] >= 1
    # Forwards to B went over the data plane (not the libp2p fallback).
    assert ma["swarmd_dataplane_forward_plane_total{}"] >= 1
    assert ma["swarmd_dataplane_forward_fallback_total{}"] == 0
    assert ma["swarmd_membership_probes_total{}"] >= 1
    assert ma["swarmd_coordinator_epoch{}"] >= 1
    mb = _scrape(b.api_url + "/metrics")
    assert mb["swarmd_dataplane_server_forwarded_total{}"] >= 1
    assert sum(v for k, v in mb.items() if k.startswith("swarmd_engine_healthy{")) == 2
