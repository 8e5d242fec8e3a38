"""Added latency of the translated client APIs over the plain chat route.

One zero-delay simulated engine (``swarmd-simengine --ttft-ms 0 --tps 0``,
4 tokens per answer) behind one real ``swarmd`` daemon whose ``[[engines]]``
is that engine; the client (aiohttp, keep-alive, concurrency 1) runs here.
Each round sends ``--n`` requests on every route, routes interleaved in
blocks of ``--block`` requests so drift on a shared machine hits them alike
(a block of a route takes milliseconds, not the second a whole round of it
would); the table gives each route's p50 and p99 over all rounds and its p50
minus the plain chat route's p50 of the same mode (non-streamed or
streamed).  Target: <= 0.3 ms added.

Routes: OpenAI ``/v1/chat/completions`` (the baseline), Ollama ``/api/chat``
and ``/api/generate``, Responses ``/v1/responses`` (``store: false``, so
the store's size does not grow through the run), Anthropic ``/v1/messages``;
each non-streamed and streamed.

A second table times the translators alone, in this process (no HTTP): the
request mapping plus the answer mapping of one non-streamed request, and
the stream translator over one 4-token SSE answer, in microseconds -- the
part of the added latency that is swarmd's own code, free of network noise.

Run: PYTHONPATH=. .venv/bin/python bench/client_apis.py [--n 300] [--rounds 5] [--block 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Procs, chat_ok, die_on_sigterm, start_engine, wait_until  # noqa: E402

MODEL = "sim-model"
MSGS = [{"role": "user", "content": "hello there"}]


def bodies(stream: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "openai chat": ("/v1/chat/completions", {"model": MODEL, "messages": MSGS,
                                                 "max_tokens": 4, "stream": stream}),
        "ollama chat": ("/api/chat", {"model": MODEL, "messages": MSGS, "stream": stream,
                                      "options": {"num_predict": 4}}),
        "ollama generate": ("/api/generate", {"model": MODEL, "prompt": "hello there",
                                              "stream": stream,
                                              "options": {"num_predict": 4}}),
        "responses": ("/v1/responses", {"model": MODEL, "input": "hello there",
                                        "max_output_tokens": 4, "store": False,
                                        "stream": stream}),
        "anthropic messages": ("/v1/messages", {"model": MODEL, "messages": MSGS,
                                                "max_tokens": 4, "stream": stream}),
    }


async def timed(http: aiohttp.ClientSession, url: str, raw: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with http.post(url, data=raw, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"{url}: HTTP {r.status}")
        out.append((time.perf_counter() - t0) * 1000)
    return out


def p(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def measure(base: str, n: int, rounds: int,
                  block: int = 10) -> dict[tuple[str, bool], list[float]]:
    res: dict[tuple[str, bool], list[float]] = {}
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=60)) as http:
        cases = [(name, stream, base + path, json.dumps(body).encode())
                 for stream in (False, True)
                 for name, (path, body) in bodies(stream).items()]
        for _name, _stream, url, raw in cases:  # warm-up: connections, code paths
            await timed(http, url, raw, 20)
        for r in range(rounds):
            for start in range(0, n, block):
                k = min(block, n - start)
                for name, stream, url, raw in cases:
                    res.setdefault((name, stream), []).extend(await timed(http, url, raw, k))
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return res


def table(res: dict[tuple[str, bool], list[float]]) -> str:
    lines = ["| route | mode | p50 ms | p99 ms | added p50 ms |", "|---|---|---|---|---|"]
    for stream in (False, True):
        base = statistics.median(res[("openai chat", stream)])
        for (name, s), xs in res.items():
            if s != stream:
                continue
            med = statistics.median(xs)
            added = "baseline" if name == "openai chat" else f"{med - base:+.3f}"
            lines.append(f"| {name} | {'stream' if stream else 'json'} | {med:.3f} | "
                         f"{p(xs, 0.99):.3f} | {added} |")
    return "\n".join(lines)


SSE_4 = b"".join(
    b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": MODEL,
                            "choices": [{"index": 0, "delta": d, "finish_reason": f}]}).encode()
    + b"\n\n"
    for d, f in [({"role": "assistant", "content": ""}, None), ({"content": "a"}, None),
                 ({"content": " b"}, None), ({"content": " c"}, None), ({"content": " d"}, None),
                 ({}, "stop")]) + (
    b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":4}}\n\n'
    b"data: [DONE]\n\n")
ANSWER = {"id": "c", "object": "chat.completion", "model": MODEL,
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "a b c d"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}}


def translator_costs(reps: int = 2000) -> str:
    """Microseconds per request of each translator, pure code."""
    from swarmd.api.translate import anthropic, ollama, responses
    from swarmd.api.translate.common import answer_of, dumps, require_object

    def json_cost(raw: bytes, fn: Any) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(require_object(raw))
        return (time.perf_counter() - t0) / reps * 1e6

    ans_raw = json.dumps(ANSWER).encode()
    o_raw = json.dumps(bodies(False)["ollama chat"][1]).encode()
    r_raw = json.dumps(bodies(False)["responses"][1]).encode()
    a_raw = json.dumps(bodies(False)["anthropic messages"][1]).encode()
    t = ollama.Timing(0.0, 0.1, 0.2)
    rows = {
        "ollama chat": (
            json_cost(o_raw, lambda b: dumps(ollama.chat_response(
                answer_of(json.loads(dumps(ollama.chat_request(b, MODEL).body) and ans_raw)),
                MODEL, 0.0, t))),
            lambda: ollama.NdjsonStream(MODEL, True, 0.0).feed(SSE_4, 0.1, 0.0)),
        "responses": (
            json_cost(r_raw, lambda b: dumps(responses.response_object(
                answer_of(json.loads(dumps(responses.chat_request(b, MODEL).body) and ans_raw)),
                b, "resp_0_N", MODEL, 0))),
            lambda: responses.EventStream({}, "resp_0_N", MODEL, 0).feed(SSE_4)),
        "anthropic messages": (
            json_cost(a_raw, lambda b: dumps(anthropic.message_object(
                answer_of(json.loads(dumps(anthropic.chat_request(b, MODEL).body) and ans_raw)),
                "msg_0", MODEL))),
            lambda: anthropic.EventStream("msg_0", MODEL).feed(SSE_4)),
    }
    lines = ["| translator | json request+answer us | stream of 4 tokens us |",
             "|---|---|---|"]
    for name, (jc, stream_fn) in rows.items():
        t0 = time.perf_counter()
        for _ in range(reps):
            stream_fn()
        sc = (time.perf_counter() - t0) / reps * 1e6
        lines.append(f"| {name} | {jc:.1f} | {sc:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="requests per route per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=10,
                    help="requests per route before the next route's turn")
    args = ap.parse_args()
    die_on_sigterm()
    from swarmd.testing.daemon import Daemon

    with tempfile.TemporaryDirectory(prefix="bench-client-apis-") as tmp, \
            Procs(Path(tmp)) as procs:
        url, kind = start_engine(procs, "engine", MODEL, max_tokens=4)
        d = Daemon(Path(tmp) / "daemons", "node", secret="ab" * 32, log_level="warning",
                   extra_toml=f'[[engines]]\nkind = "{kind}"\nurl = "{url}"\nid = "sim"\n')
        procs.on_close(lambda: d.kill() if d.alive() else None)
        d.start()
        wait_until(lambda: chat_ok(d.api_url, MODEL), 30, "swarmd", d.proc)
        res = asyncio.run(measure(d.api_url, args.n, args.rounds, max(1, args.block)))
    print(f"c=1, zero-delay simulated engine, 4 tokens, {args.rounds} x {args.n} requests "
          f"per route in blocks of {max(1, args.block)}, one run")
    print(table(res))
    print()
    print(translator_costs())


if __name__ == "__main__":
    main()
