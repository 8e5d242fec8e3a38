"""The shared pieces of the client-API translators: SSE reading, chat deltas,
answers, and the edge cases the golden vectors do not spell out."""

from __future__ import annotations

import json

import pytest

from swarmd.api.translate import anthropic, ollama, responses
from swarmd.api.translate.common import (
    ChatDeltas,
    Failure,
    Finish,
    Reasoning,
    SseReader,
    Text,
    ToolArgs,
    ToolStart,
    TranslateError,
    Usage,
    answer_of,
    args_object,
    dumps,
    encode_str,
    image_data_url,
    require_object,
)


def test_sse_reader_handles_crlf_comments_multiline_and_utf8_cuts() -> None:
    raw = (": keep-alive\r\n\r\nevent: x\r\ndata: {\"a\":\r\ndata: \"é✓\"}\r\n\r\n"
           "data: [DONE]\r\n\r\n").encode()
    for size in range(1, len(raw) + 1):
        r = SseReader()
        out = []
        for i in range(0, len(raw), size):
            out += r.feed(raw[i:i + size])
        assert out == [{"a": "é✓"}] and r.done, size


def test_sse_reader_blank_line_runs_whitespace_and_bytes_that_are_not_utf8() -> None:
    r = SseReader()
    # Runs of newlines cut where the first blank line is; odd ones leave a newline.
    assert r.feed(b'data: {"a":1}\n\n\ndata:  {"b":2} \n\n\n\n') == [{"a": 1}, {"b": 2}]
    assert r.feed(b'data:\t{"c":3}\n\n') == [{"c": 3}]  # whitespace before the value
    assert r.feed(b"data:  [DONE] \n\n") == [] and r.done
    # One event that is not UTF-8: the events before it count, it is a 502.
    r = SseReader()
    with pytest.raises(TranslateError) as info:
        r.feed(b'data: {"a":1}\n\ndata: {"b":"\xff"}\n\ndata: {"c":3}\n\ndata: {"d"')
    assert info.value.status == 502
    assert r._buf == b'data: {"c":3}\n\ndata: {"d"'  # what came after the bad event


def test_dumps_is_the_compact_encoder_and_iso_time_is_strftime() -> None:
    from datetime import UTC, datetime

    enc = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    docs: list[object] = [{"a": [1, 2.5, None, True], "é": "\u2028\"\\\n😀"}, "text", 3, [],
                          {"n": float("nan"), "big": 10 ** 30, "f": 1e16}]
    for doc in docs:
        assert dumps(doc) == enc.encode(doc).encode()
    assert encode_str('a"é') == enc.encode('a"é')
    for t in (0.0, 1700000000.0, 1700000000.1234565, 1700000000.9999996, 2e9 + 0.5):
        assert ollama.iso_time(t) == \
            datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize("bad", [b"data: {nope\n\n", b"data: [1]\n\n"])
def test_sse_reader_rejects_non_object_events_as_502(bad: bytes) -> None:
    with pytest.raises(TranslateError) as info:
        SseReader().feed(bad)
    assert info.value.status == 502


def test_chat_deltas_tool_calls_whole_or_split_and_without_index() -> None:
    d = ChatDeltas()
    evs = d.feed({"id": "c", "model": "m", "choices": [{"delta": {"tool_calls": [
        {"id": "a", "function": {"name": "f", "arguments": "{}"}},
        {"id": "b", "function": {"name": "g", "arguments": ""}}]}}]})
    assert evs == [ToolStart(0, "a", "f"), ToolArgs(0, "{}"), ToolStart(1, "b", "g")]
    evs = d.feed({"choices": [{"delta": {"reasoning": "r", "content": "t"},
                               "finish_reason": "tool_calls"}],
                  "usage": {"prompt_tokens": 2, "completion_tokens": 1}})
    assert evs == [Reasoning("r"), Text("t"), Finish("tool_calls"), Usage(2, 1)]
    assert d.id == "c" and d.model == "m" and d.finished == "tool_calls"
    assert d.feed({"error": {"message": "boom", "code": "x"}}) == [Failure("boom", "x")]


def test_completions_chunks_and_answers_read_as_text() -> None:
    assert ChatDeltas().feed({"choices": [{"text": "abc", "index": 0}]}) == [Text("abc")]
    ans = answer_of({"choices": [{"text": "abc", "finish_reason": "length"}]})
    assert ans.text == "abc" and ans.finish == "length" and ans.usage == Usage(0, 0)


@pytest.mark.parametrize("doc", [None, {}, {"choices": []}, {"choices": ["x"]}])
def test_answer_without_choices_is_a_502(doc: object) -> None:
    with pytest.raises(TranslateError) as info:
        answer_of(doc)
    assert info.value.status == 502


def test_small_helpers() -> None:
    assert args_object('{"a": 1}') == {"a": 1}
    assert args_object("") == {}
    assert args_object("[1]") == {"_arguments": "[1]"}
    assert args_object("{cut") == {"_arguments": "{cut"}
    assert image_data_url("/9j/xx").startswith("data:image/jpeg;base64,")
    assert image_data_url("zzz").startswith("data:image/png;base64,")
    with pytest.raises(TranslateError):
        require_object(b"\xff")
    with pytest.raises(TranslateError):
        require_object(b"[]")


def test_ollama_tool_message_answers_explicit_id_then_by_name() -> None:
    body = {"model": "m", "stream": False, "messages": [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "x1", "function": {"name": "f", "arguments": "{}"}},
            {"function": {"name": "g", "arguments": {}}}]},
        {"role": "tool", "content": "G", "tool_name": "g"},
        {"role": "tool", "content": "F", "tool_call_id": "x1"}]}
    msgs = ollama.chat_request(body, "m").body["messages"]
    assert msgs[0]["tool_calls"][1]["id"] == "call_0_1"
    assert [m["tool_call_id"] for m in msgs[1:]] == ["call_0_1", "x1"]


def test_ollama_native_body_resolves_only_the_model() -> None:
    body = {"model": "alias", "options": {"num_ctx": 8}, "keep_alive": -1}
    assert json.loads(ollama.native_body(body, "real")) == {**body, "model": "real"}
    assert json.loads(ollama.native_body(body, "alias")) == body


def test_ollama_stream_failure_and_finish_without_done() -> None:
    s = ollama.NdjsonStream(model="m", chat=True, start=0.0)
    out = s.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n', 0.5, 0.0)
    assert json.loads(out)["message"]["content"] == "a"
    final = json.loads(s.finish(1.0, 0.0))  # the body ended without [DONE]
    assert final["done"] is True and final["eval_duration"] == 500_000_000
    assert s.finish(2.0, 0.0) == b""
    bad = ollama.NdjsonStream(model="m", chat=False, start=0.0)
    assert json.loads(bad.feed(b"data: {x\n\n", 0.1, 0.0)) == {
        "error": "engine sent a stream event that is not JSON"}
    assert bad.failed and bad.feed(b"data: {}\n\n", 0.2, 0.0) == b""


def test_responses_history_of_a_function_call_response() -> None:
    resp = {"output": [{"type": "reasoning"},
                       {"type": "function_call", "call_id": "c", "name": "f",
                        "arguments": "{}"}]}
    hist = responses.history_of([{"role": "user", "content": "q"}], resp)
    assert hist == [{"role": "user", "content": "q"},
                    {"role": "assistant", "content": "",
                     "tool_calls": [{"id": "c", "type": "function",
                                     "function": {"name": "f", "arguments": "{}"}}]}]


def test_responses_empty_stream_still_has_one_message_item() -> None:
    s = responses.EventStream({"model": "m", "input": "x"}, "resp_ab_N", "m", 1)
    s.start()
    out = s.feed(b"data: [DONE]\n\n")
    kinds = [json.loads(line[6:])["type"] for line in out.decode().splitlines()
             if line.startswith("data: ")]
    assert kinds[-1] == "response.completed" and "response.output_item.done" in kinds
    assert s.response is not None and s.response["output"][0]["type"] == "message"


def test_anthropic_error_types_by_status() -> None:
    assert anthropic.error_body("m", 400)["error"]["type"] == "invalid_request_error"
    assert anthropic.error_body("m", 404)["error"]["type"] == "not_found_error"
    assert anthropic.error_body("m", 429)["error"]["type"] == "rate_limit_error"
    assert anthropic.error_body("m", 503)["error"]["type"] == "overloaded_error"
    assert anthropic.error_body("m", 502)["error"]["type"] == "api_error"
    assert anthropic.error_body("m", 413)["error"]["type"] == "request_too_large"
