"""Regenerate protocol/vectors/client-apis/*.json (golden translation vectors).

Run: PYTHONPATH=. .venv/bin/python protocol/vectors/client-apis/make_vectors.py
Tests (tests/unit/test_translate_vectors.py) compare the translators against
the committed files, never against this script; review a diff before
committing regenerated vectors.

Each file: ``{"version": 1, "requests": [...], "answers": [...], "streams": [...]}``.
- request: ``{"name", "fn", "model", "body", "expect": {...}}`` or ``"error":
  {"status", "param"}``.
- answer: ``{"name", "fn", "openai": <OpenAI answer>, "args": {...}, "expect": {...}}``.
- stream: ``{"name", "args": {...}, "sse": [<network chunks>], "expect": "<output>"}``;
  Ollama streams take ``now`` = 0.1 s per chunk (start 0) and ``wall`` 1700000000.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarmd.api.translate import anthropic, ollama, responses
from swarmd.api.translate.common import TranslateError, answer_of

HERE = Path(__file__).parent
WALL = 1700000000.0
IMG = "iVBORw0KGgoAAAANSUhEUg=="
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def sse(*objs: Any, done: bool = True) -> str:
    out = "".join(f"data: {json.dumps(o, separators=(',', ':'))}\n\n" for o in objs)
    return out + ("data: [DONE]\n\n" if done else "")


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          usage: dict[str, int] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                           "created": 1, "model": "m"}
    doc["choices"] = [] if delta is None else [
        {"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        doc["usage"] = usage
    return doc


USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
TEXT_STREAM = sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
                  chunk({"content": "lo é✓"}), chunk({}, "stop"), chunk(usage=USAGE))
TOOL_STREAM = sse(
    chunk({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chunk({}, "tool_calls"), chunk(usage=USAGE))
THINK_STREAM = sse(chunk({"role": "assistant", "reasoning_content": "hmm"}),
                   chunk({"content": "ok"}), chunk({}, "length"), chunk(usage=USAGE))
FAIL_STREAM = sse(chunk({"content": "Hel"}), done=False) + \
    'data: {"error":{"message":"the engine failed mid-stream: reset","type":"server_error",' \
    '"param":null,"code":"upstream_error"}}\n\n'


def split(text: str, at: int) -> list[str]:
    """Two network chunks: the text cut at character ``at`` (mid-event).  Cuts
    inside a UTF-8 sequence are tested in test_translate_common.py."""
    return [text[:at], text[at:]]


def ANSWER(content: str | None = "Hello", *, calls: list[Any] | None = None,
           finish: str = "stop", reasoning: str | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        msg["tool_calls"] = calls
    if reasoning:
        msg["reasoning_content"] = reasoning
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
            "usage": USAGE}


CALL = {"id": "call_a", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}


def req(fn: Callable[..., Any], name: str, body: dict[str, Any], model: str = "m",
        **kw: Any) -> dict[str, Any]:
    case: dict[str, Any] = {"name": name, "fn": fn.__name__, "model": model, "body": body}
    if kw:
        case["kwargs"] = kw
    try:
        out = fn(body, model, **kw)
    except TranslateError as exc:
        case["error"] = {"status": exc.status, "param": exc.param}
        return case
    if isinstance(out, tuple):
        case["expect"] = {"body": out[0], "inputs": out[1]}
    else:
        case["expect"] = {k: v for k, v in vars(out).items()}
    return case


def ollama_vectors() -> dict[str, Any]:
    chat = ollama.chat_request
    gen = ollama.generate_request
    emb = ollama.embed_request
    requests = [
        req(chat, "chat_options_json_stream_default", {
            "model": "m", "format": "json",
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "hi"}],
            "options": {"num_predict": 5, "temperature": 0.1, "top_k": 3, "top_p": 0.9,
                        "min_p": 0.05, "repeat_penalty": 1.1, "seed": 1, "stop": ["x"],
                        "num_ctx": 4096, "mirostat": 1}, "keep_alive": "5m"}),
        req(chat, "chat_images_tools_schema_think", {
            "model": "alias", "stream": False, "think": "high", "tools": [TOOL],
            "format": {"type": "object", "properties": {"a": {"type": "string"}}},
            "messages": [
                {"role": "user", "content": "look", "images": [IMG, "/9j/4AAQ"]},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
                {"role": "assistant", "content": "It is sunny.", "thinking": "easy"}]}),
        req(chat, "chat_no_messages_loads", {"model": "m", "messages": []}),
        req(chat, "chat_num_predict_unlimited", {
            "model": "m", "stream": False, "options": {"num_predict": -1},
            "messages": [{"role": "user", "content": "x"}]}),
        req(gen, "generate_templated", {"model": "m", "prompt": "once", "system": "sys",
                                        "stream": False, "options": {"num_predict": 2}}),
        req(gen, "generate_raw_suffix", {"model": "m", "prompt": "def f(", "suffix": "):",
                                         "raw": True}),
        req(gen, "generate_empty_loads", {"model": "m"}),
        req(emb, "embed_list", {"model": "m", "input": ["a", "b"], "dimensions": 8},
            legacy=False),
        req(emb, "embeddings_legacy", {"model": "m", "prompt": "a"}, legacy=True),
        req(chat, "error_messages_not_array", {"model": "m", "messages": "hi"}),
        req(chat, "error_bad_role", {"model": "m", "messages": [{"role": "bot"}]}),
        req(chat, "error_num_predict_type", {"model": "m", "options": {"num_predict": "5"},
                                             "messages": [{"role": "user"}]}),
        req(chat, "error_format", {"model": "m", "format": 5,
                                   "messages": [{"role": "user"}]}),
        req(chat, "error_no_model", {"messages": [{"role": "user"}]}),
        req(gen, "error_prompt_type", {"model": "m", "prompt": ["a"]}),
        req(emb, "error_embed_input", {"model": "m", "input": []}, legacy=False),
    ]
    timing = ollama.Timing(0.0, 0.25, 1.0)
    answers = [
        {"name": "chat_text_reasoning", "fn": "chat_response",
         "openai": ANSWER("Hello", reasoning="think"),
         "expect": ollama.chat_response(answer_of(ANSWER("Hello", reasoning="think")),
                                        "m", WALL, timing)},
        {"name": "chat_tool_calls", "fn": "chat_response",
         "openai": ANSWER(None, calls=[CALL], finish="tool_calls"),
         "expect": ollama.chat_response(answer_of(ANSWER(None, calls=[CALL],
                                                         finish="tool_calls")),
                                        "m", WALL, timing)},
        {"name": "generate_length", "fn": "generate_response",
         "openai": ANSWER("Hi", finish="length"),
         "expect": ollama.generate_response(answer_of(ANSWER("Hi", finish="length")),
                                            "m", WALL, timing)},
        {"name": "embed", "fn": "embed_response",
         "openai": {"object": "list", "model": "m", "usage": {"prompt_tokens": 2},
                    "data": [{"index": 1, "embedding": [0.5]},
                             {"index": 0, "embedding": [0.25]}]},
         "expect": ollama.embed_response(
             {"object": "list", "model": "m", "usage": {"prompt_tokens": 2},
              "data": [{"index": 1, "embedding": [0.5]}, {"index": 0, "embedding": [0.25]}]},
             "m", timing, legacy=False)},
    ]
    streams = []
    for name, text, chat_shape in (("chat_text", TEXT_STREAM, True),
                                   ("generate_text", TEXT_STREAM, False),
                                   ("chat_tool", TOOL_STREAM, True),
                                   ("chat_thinking", THINK_STREAM, True),
                                   ("chat_fail", FAIL_STREAM, True)):
        parts = split(text, 150)
        s = ollama.NdjsonStream(model="m", chat=chat_shape, start=0.0)
        out = b"".join(s.feed(p.encode(), 0.1 * (i + 1), WALL)
                       for i, p in enumerate(parts))
        out += s.finish(0.1 * (len(parts) + 1), WALL) if not s.failed else b""
        streams.append({"name": name, "args": {"chat": chat_shape}, "sse": parts,
                        "expect": out.decode()})
    return {"version": 1, "requests": requests, "answers": answers, "streams": streams}


def responses_vectors() -> dict[str, Any]:
    fn = responses.chat_request
    fc_tool = {"type": "function", "name": "get_weather", "description": "weather",
               "parameters": TOOL["function"]["parameters"], "strict": True}
    requests = [
        req(fn, "string_input_instructions_stream", {
            "model": "m", "input": "hi", "instructions": "be brief", "stream": True,
            "max_output_tokens": 16, "temperature": 0.2, "top_p": 0.9, "store": False,
            "tools": [fc_tool], "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "strict": True,
                                "schema": {"type": "object"}}},
            "reasoning": {"effort": "low"}}),
        req(fn, "items", {"model": "m", "input": [
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "see"},
                {"type": "input_image", "image_url": "data:image/png;base64," + IMG}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "calling"}]},
            {"type": "function_call", "call_id": "call_a", "name": "get_weather",
             "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "call_b", "name": "get_weather",
             "arguments": '{"city":"Oslo"}'},
            {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_b", "output": "snow"}],
            "text": {"format": {"type": "json_object"}}}),
        req(fn, "with_history", {"model": "m", "input": "and now?",
                                 "previous_response_id": "resp_x_N"},
            history=[{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "hello"}]),
        req(fn, "error_item_reference", {"model": "m",
                                         "input": [{"type": "item_reference", "id": "x"}]}),
        req(fn, "error_builtin_tool", {"model": "m", "input": "x",
                                       "tools": [{"type": "web_search"}]}),
        req(fn, "error_file_image", {"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_image", "file_id": "file-1"}]}]}),
        req(fn, "error_background", {"model": "m", "input": "x", "background": True}),
        req(fn, "error_no_input", {"model": "m"}),
        req(fn, "error_max_output_tokens", {"model": "m", "input": "x",
                                            "max_output_tokens": 0}),
    ]
    rid = "resp_0123456789abcdef01234567_12D3KooWNode"
    body = {"model": "m", "input": "hi", "max_output_tokens": 16, "metadata": {"k": "v"}}
    answers = []
    for name, oa in (("text", ANSWER("Hello")),
                     ("tool_calls_length", ANSWER("", calls=[CALL], finish="length")),
                     ("reasoning", ANSWER("ok", reasoning="think"))):
        answers.append({"name": name, "fn": "response_object", "openai": oa,
                        "args": {"body": body, "resp_id": rid, "created_at": 1700000000},
                        "expect": responses.response_object(answer_of(oa), body, rid, "m",
                                                            1700000000)})
    streams = []
    for name, text in (("text", TEXT_STREAM), ("tool", TOOL_STREAM),
                       ("thinking_length", THINK_STREAM), ("fail", FAIL_STREAM)):
        parts = split(text, 150)
        s = responses.EventStream(body, rid, "m", 1700000000)
        out = s.start() + b"".join(s.feed(p.encode()) for p in parts)
        out += s.finish()
        streams.append({"name": name, "args": {"body": body, "resp_id": rid,
                                               "created_at": 1700000000},
                        "sse": parts, "expect": out.decode()})
    return {"version": 1, "requests": requests, "answers": answers, "streams": streams}


def anthropic_vectors() -> dict[str, Any]:
    fn = anthropic.chat_request
    tool = {"name": "get_weather", "description": "weather",
            "input_schema": TOOL["function"]["parameters"]}
    requests = [
        req(fn, "system_blocks_stream_stop", {
            "model": "m", "max_tokens": 32, "stream": True, "stop_sequences": ["END"],
            "system": [{"type": "text", "text": "be"}, {"type": "text", "text": "brief"}],
            "temperature": 0.5, "top_p": 0.9, "top_k": 4, "metadata": {"user_id": "u"},
            "messages": [{"role": "user", "content": "hi"}]}),
        req(fn, "blocks_tools", {
            "model": "m", "max_tokens": 32, "tools": [tool],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}},
                              "effort": "low"},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": IMG}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1",
                     "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom",
                     "is_error": True},
                    {"type": "text", "text": "so?"}]}]}),
        req(fn, "count_tokens", {"model": "m", "tools": [tool],
                                 "messages": [{"role": "user", "content": "hi"}]},
            count_only=True),
        req(fn, "tool_choice_named_none", {
            "model": "m", "max_tokens": 1, "tools": [tool],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "messages": [{"role": "user", "content": "x"}]}),
        req(fn, "error_no_max_tokens", {"model": "m", "messages": [
            {"role": "user", "content": "x"}]}),
        req(fn, "error_document", {"model": "m", "max_tokens": 4, "messages": [
            {"role": "user", "content": [{"type": "document", "source": {}}]}]}),
        req(fn, "error_role", {"model": "m", "max_tokens": 4, "messages": [
            {"role": "system", "content": "x"}]}),
        req(fn, "error_server_tool", {"model": "m", "max_tokens": 4, "messages": [
            {"role": "user", "content": "x"}], "tools": [
            {"type": "web_search_20250305", "name": "web_search"}]}),
    ]
    answers = []
    for name, oa in (("text", ANSWER("Hello")),
                     ("tool_use", ANSWER("calling", calls=[CALL], finish="tool_calls")),
                     ("thinking_max_tokens", ANSWER("ok", reasoning="think", finish="length"))):
        answers.append({"name": name, "fn": "message_object", "openai": oa,
                        "args": {"msg_id": "msg_1"},
                        "expect": anthropic.message_object(answer_of(oa), "msg_1", "m")})
    streams = []
    for name, text in (("text", TEXT_STREAM), ("tool", TOOL_STREAM),
                       ("thinking", THINK_STREAM), ("fail", FAIL_STREAM)):
        parts = split(text, 150)
        s = anthropic.EventStream("msg_1", "m")
        out = s.start() + b"".join(s.feed(p.encode()) for p in parts)
        out += s.finish()
        streams.append({"name": name, "args": {"msg_id": "msg_1"}, "sse": parts,
                        "expect": out.decode()})
    return {"version": 1, "requests": requests, "answers": answers, "streams": streams}


def main() -> None:
    for name, make in (("ollama", ollama_vectors), ("responses", responses_vectors),
                       ("anthropic", anthropic_vectors)):
        doc = make()
        (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        print(name, {k: len(v) for k, v in doc.items() if isinstance(v, list)})


if __name__ == "__main__":
    main()
