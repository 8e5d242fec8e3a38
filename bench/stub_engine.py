"""A minimal OpenAI-style engine for the benchmarks, used only until
``swarmd-simengine`` (swarmd/engines/simulated.py) is installed.

Theory of operation: one aiohttp server answers ``GET /v1/models``,
``GET /health`` and ``POST /v1/chat/completions`` / ``/v1/completions``.
With ``--ttft-ms 0 --tps 0`` it answers at once (a zero-delay engine: what
is measured in front of it is the proxy's cost).  Otherwise a request waits
for one of ``--concurrency`` slots, then ``ttft`` seconds, then emits
``max_tokens`` (default ``--tokens``) tokens at ``--tps`` tokens/s each
(streamed as SSE chunks when ``"stream": true``).  The command line matches
``swarmd-simengine``'s options that the benchmarks use, so the two are
interchangeable.

    python bench/stub_engine.py --port P [--model M] [--ttft-ms 0] [--tps 0]
                                [--max-tokens 16] [--concurrency 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import web


class Engine:
    def __init__(self, model: str, ttft_ms: float, tps: float, tokens: int,
                 concurrency: int) -> None:
        self.model = model
        self.ttft = ttft_ms / 1000.0
        self.tps = tps
        self.tokens = tokens
        self.slots = asyncio.Semaphore(concurrency) if concurrency > 0 else None
        self.served = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_post("/v1/chat/completions", self.complete)
        app.router.add_post("/v1/completions", self.complete)
        return app

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "owned_by": "bench"}]})

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def complete(self, request: web.Request) -> web.StreamResponse:
        try:
            body: Any = json.loads(await request.read())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"error": {"message": "bad JSON", "type":
                                                "invalid_request_error", "param": None,
                                                "code": None}}, status=400)
        n = body.get("max_tokens") or self.tokens
        n = n if isinstance(n, int) and n > 0 else self.tokens
        if self.slots is None:
            return await self._answer(request, body, n)
        async with self.slots:
            return await self._answer(request, body, n)

    async def _answer(self, request: web.Request, body: dict[str, Any],
                      n: int) -> web.StreamResponse:
        self.served += 1
        if self.ttft:
            await asyncio.sleep(self.ttft)
        chat = request.path.endswith("/chat/completions")
        if not body.get("stream"):
            if self.tps:
                await asyncio.sleep(n / self.tps)
            text = "x " * n
            choice: dict[str, Any] = ({"index": 0, "finish_reason": "length",
                                       "message": {"role": "assistant", "content": text}}
                                      if chat else
                                      {"index": 0, "finish_reason": "length", "text": text})
            return web.json_response({
                "id": "cmpl-b", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": self.model, "choices": [choice],
                "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        t0 = time.monotonic()
        for i in range(n):
            if self.tps:
                delay = t0 + (i + 1) / self.tps - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            delta = {"delta": {"content": "x "}} if chat else {"text": "x "}
            chunk = {"id": "cmpl-b", "object": "chat.completion.chunk", "model": self.model,
                     "choices": [{"index": 0, **delta, "finish_reason": None}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default="bench")
    ap.add_argument("--ttft-ms", type=float, default=0.0)
    ap.add_argument("--tps", type=float, default=0.0)
    ap.add_argument("--max-tokens", "--tokens", dest="tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=0)
    a = ap.parse_args()
    eng = Engine(a.model, a.ttft_ms, a.tps, a.tokens, a.concurrency)
    web.run_app(eng.app(), host=a.host, port=a.port, access_log=None, print=None,
                backlog=2048)


if __name__ == "__main__":
    main()
