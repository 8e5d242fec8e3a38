"""The client-API translators against the golden vectors in
protocol/vectors/client-apis/ (see protocol/client-apis.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from swarmd.api.translate import anthropic, ollama, responses
from swarmd.api.translate.common import TranslateError, answer_of

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "client-apis"
MODULES = {"ollama": ollama, "responses": responses, "anthropic": anthropic}
WALL = 1700000000.0


def _load(api: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((VECTORS / f"{api}.json").read_text())
    assert doc["version"] == 1
    return doc


def _cases(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(api, c) for api in MODULES for c in _load(api)[kind]]


def _id(case: Any) -> str:
    return case[1]["name"] if isinstance(case, tuple) else str(case)


@pytest.mark.parametrize("case", _cases("requests"), ids=lambda c: f"{c[0]}-{c[1]['name']}")
def test_request_vectors(case: tuple[str, dict[str, Any]]) -> None:
    api, c = case
    fn = getattr(MODULES[api], c["fn"])
    if "error" in c:
        with pytest.raises(TranslateError) as info:
            fn(c["body"], c["model"], **c.get("kwargs", {}))
        assert info.value.status == c["error"]["status"]
        assert info.value.param == c["error"]["param"]
        return
    out = fn(c["body"], c["model"], **c.get("kwargs", {}))
    got = {"body": out[0], "inputs": out[1]} if isinstance(out, tuple) else vars(out)
    assert json.loads(json.dumps(got)) == c["expect"]


@pytest.mark.parametrize("case", _cases("answers"), ids=lambda c: f"{c[0]}-{c[1]['name']}")
def test_answer_vectors(case: tuple[str, dict[str, Any]]) -> None:
    api, c = case
    oa = c["openai"]
    timing = ollama.Timing(0.0, 0.25, 1.0)
    if c["fn"] == "embed_response":
        got = ollama.embed_response(oa, "m", timing, legacy=False)
    elif api == "ollama":
        got = getattr(ollama, c["fn"])(answer_of(oa), "m", WALL, timing)
    elif api == "responses":
        a = c["args"]
        got = responses.response_object(answer_of(oa), a["body"], a["resp_id"], "m",
                                        a["created_at"])
    else:
        got = anthropic.message_object(answer_of(oa), c["args"]["msg_id"], "m")
    assert json.loads(json.dumps(got)) == c["expect"]


def _run_stream(api: str, c: dict[str, Any], parts: list[bytes]) -> bytes:
    a = c["args"]
    if api == "ollama":
        s = ollama.NdjsonStream(model="m", chat=a["chat"], start=0.0)
        out = b"".join(s.feed(p, 0.1 * (i + 1), WALL) for i, p in enumerate(parts))
        return out + (s.finish(0.1 * (len(parts) + 1), WALL) if not s.failed else b"")
    if api == "responses":
        r = responses.EventStream(a["body"], a["resp_id"], "m", a["created_at"])
        return r.start() + b"".join(r.feed(p) for p in parts) + r.finish()
    m = anthropic.EventStream(a["msg_id"], "m")
    return m.start() + b"".join(m.feed(p) for p in parts) + m.finish()


@pytest.mark.parametrize("case", _cases("streams"), ids=lambda c: f"{c[0]}-{c[1]['name']}")
def test_stream_vectors(case: tuple[str, dict[str, Any]]) -> None:
    api, c = case
    parts = [p.encode() for p in c["sse"]]
    assert _run_stream(api, c, parts).decode() == c["expect"]


@pytest.mark.parametrize("case", [c for c in _cases("streams") if c[0] != "ollama"],
                         ids=lambda c: f"{c[0]}-{c[1]['name']}")
def test_stream_output_does_not_depend_on_how_the_bytes_were_cut(
        case: tuple[str, dict[str, Any]]) -> None:
    api, c = case
    raw = "".join(c["sse"]).encode()
    for size in (1, 7, 64, len(raw)):
        parts = [raw[i:i + size] for i in range(0, len(raw), size)]
        assert _run_stream(api, c, parts).decode() == c["expect"], size
