"""swarmd.api.usage: usage for every answer, sans-IO."""

from __future__ import annotations

import json

from swarmd.api.usage import SseUsage, ensure_body_usage, estimate_tokens, prompt_text


def _ev(doc: object) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


CHUNKS = [
    _ev({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
    _ev({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
    _ev({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]}),
    _ev({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
]
DONE = b"data: [DONE]\n\n"


def _run(watch: SseUsage, data: bytes, split: int, prompt: int | None) -> bytes:
    """Feed ``data`` in pieces of ``split`` bytes, as a caller would."""
    out = bytearray()
    for i in range(0, len(data), split):
        got, at_done = watch.feed(data[i:i + split])
        out += got
        if at_done:
            out += watch.finish(prompt)
            out += watch.tail
            rest = data[i + split:]
            out += rest
            break
    return bytes(out)


def test_usage_chunk_added_before_done_when_engine_sends_none() -> None:
    data = b"".join(CHUNKS) + DONE
    for split in (1, 7, 64, len(data)):
        w = SseUsage(inject=True)
        out = _run(w, data, split, prompt=11)
        assert out.startswith(b"".join(CHUNKS))
        assert out.endswith(DONE)
        usage_ev = out[len(b"".join(CHUNKS)):-len(DONE)]
        doc = json.loads(usage_ev[len(b"data: "):])
        assert doc["choices"] == [] and doc["id"] == "c1" and doc["model"] == "m"
        assert doc["usage"] == {"prompt_tokens": 11, "completion_tokens": 2,
                                "total_tokens": 13, "swarmd_counted": True}


def test_engine_usage_is_kept_and_nothing_added() -> None:
    usage = _ev({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3,
                                                      "completion_tokens": 2,
                                                      "total_tokens": 5}})
    data = b"".join(CHUNKS) + usage + DONE
    w = SseUsage(inject=True)
    out = _run(w, data, 5, prompt=99)
    assert out == data
    u = w.usage()
    assert (u.prompt_tokens, u.completion_tokens, u.counted) == (3, 2, False)


def test_no_chunk_when_client_did_not_ask_but_usage_counted() -> None:
    data = b"".join(CHUNKS) + DONE
    w = SseUsage(inject=False)
    out = _run(w, data, 9, prompt=4)
    assert out == data
    assert w.usage(4).completion_tokens == 2


def test_llama_server_timings_win_over_counting() -> None:
    timings = _ev({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                   "timings": {"prompt_n": 17, "predicted_n": 40}})
    w = SseUsage(inject=True)
    out = _run(w, b"".join(CHUNKS[:2]) + timings + DONE, 1000, prompt=None)
    assert w.needs_prompt_count is False
    doc = json.loads(out.split(b"\n\n")[-3][len(b"data: "):])
    assert doc["usage"]["prompt_tokens"] == 17 and doc["usage"]["completion_tokens"] == 40


def test_non_json_or_huge_event_passes_through() -> None:
    w = SseUsage(inject=True)
    junk = b"x" * (5 * 1024 * 1024)
    out, at_done = w.feed(junk)
    assert out == junk and not at_done and w.done


def test_body_usage_added_or_kept() -> None:
    raw = json.dumps({"choices": [{"message": {"content": "abcdefgh"}}]}).encode()
    body, u = ensure_body_usage(raw, 5, None)
    assert u is not None and u.counted and u.completion_tokens == estimate_tokens("abcdefgh")
    assert json.loads(body)["usage"]["prompt_tokens"] == 5
    kept = json.dumps({"choices": [], "usage": {"prompt_tokens": 1,
                                                "completion_tokens": 2}}).encode()
    assert ensure_body_usage(kept, 9, 9)[0] == kept
    assert ensure_body_usage(b"not json", 1, 1) == (b"not json", None)


def test_prompt_text() -> None:
    body = {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert prompt_text("/v1/chat/completions", body) == "be brief\nhi"
    assert prompt_text("/v1/completions", {"prompt": ["a", "b"]}) == "a\nb"
