"""Parameter translation per engine kind (protocol/engines.md)."""

from __future__ import annotations

import json

import pytest

from swarmd.engines.base import EngineSpec
from swarmd.engines.registry import EngineRegistry

REG = EngineRegistry(eps=[])


def _req(kind: str, body: dict[str, object], headers: dict[str, str] | None = None,
         **spec: object) -> tuple[dict[str, object], dict[str, str]]:
    eng = REG.create(EngineSpec(kind=kind, url="http://127.0.0.1:9", **spec))  # type: ignore[arg-type]
    up = eng.request("/v1/chat/completions", json.dumps(body).encode(), headers or {})
    return json.loads(up.body), dict(up.headers)


@pytest.mark.parametrize("kind", ["llamacpp", "ollama", "tgi", "mlx"])
def test_max_completion_tokens_becomes_max_tokens(kind: str) -> None:
    body, _ = _req(kind, {"model": "m", "messages": [], "max_completion_tokens": 7})
    assert body["max_tokens"] == 7 and "max_completion_tokens" not in body
    # An explicit max_tokens wins.
    body, _ = _req(kind, {"model": "m", "max_tokens": 3, "max_completion_tokens": 7})
    assert body["max_tokens"] == 3 and "max_completion_tokens" not in body


@pytest.mark.parametrize("kind", ["vllm", "openai"])
def test_kinds_that_know_max_completion_tokens_get_it_unchanged(kind: str) -> None:
    raw = {"model": "m", "max_completion_tokens": 7}
    body, _ = _req(kind, raw)
    assert body == raw


def test_content_type_is_always_json_and_client_auth_dropped() -> None:
    _, hdrs = _req("openai", {"model": "m"}, {"Content-Type": "text/plain",
                                             "Authorization": "Bearer client"},
                   api_key="sk-upstream")
    assert hdrs["Content-Type"] == "application/json"
    assert hdrs["Authorization"] == "Bearer sk-upstream"


def test_rename_and_translation_together() -> None:
    body, _ = _req("llamacpp", {"model": "pub", "max_completion_tokens": 2},
                   options={"rename": {"/models/x.gguf": "pub"}})
    assert body == {"model": "/models/x.gguf", "max_tokens": 2}
