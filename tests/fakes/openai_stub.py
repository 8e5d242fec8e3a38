"""A scriptable OpenAI-style engine (aiohttp) for API and forwarding tests.

Each :class:`StubEngine` records the requests it got (path, headers, raw
body) and answers according to ``mode`` (or the next entry of ``script``):

- ``ok``: chat/completions/embeddings JSON; with ``"stream": true`` an SSE
  stream of SSE_CHUNKS (plus a usage chunk when stream_options.include_usage)
  written as separate chunks, then ``data: [DONE]``.
- ``status:<n>``: that status with an OpenAI error body (Retry-After: 2 for 429/503).
- ``drop``: close the connection without answering.
- ``hang``: never answer (until the client gives up).
- ``midfail``: start an SSE stream, send two chunks, then close the connection.
- ``slow``: SSE with a pause of ``delay`` between chunks.
- ``traceback500``: a plain-text 500 carrying an engine-internal path.
- ``detail422``: a FastAPI-style ``{"detail": ...}`` 422 (not OpenAI's shape).

:class:`StubEngines` implements the API's ``LocalEngines`` protocol over
stubs, keyed by engine id, and counts in-flight requests.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from swarmd.core.routing import EngineLoad

SSE_CHUNKS = [
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
    b'{"role":"assistant","content":""}}]}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
    b'{"content":"Hel"}}]}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
    b'{"content":"lo \\u00e9\xe2\x9c\x93"}}]}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
    b'"finish_reason":"stop"}]}\n\n',
]
USAGE_CHUNK = (b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],'
               b'"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}\n\n')
DONE = b"data: [DONE]\n\n"


def sse_bytes(include_usage: bool = False) -> bytes:
    return b"".join(SSE_CHUNKS) + (USAGE_CHUNK if include_usage else b"") + DONE


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class StubEngine:
    engine_id: str
    model: str = "tiny"
    mode: str = "ok"
    script: deque[str] = field(default_factory=deque)
    delay: float = 0.05
    seen: list[Seen] = field(default_factory=list)
    cancelled: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    def next_mode(self) -> str:
        return self.script.popleft() if self.script else self.mode

    async def start(self) -> StubEngine:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            app.router.add_post(path, self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(Seen(request.path, {k.lower(): v for k, v in request.headers.items()}, raw))
        mode = self.next_mode()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        try:
            return await self._answer(request, mode, body)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def _answer(self, request: web.Request, mode: str,
                      body: dict[str, Any]) -> web.StreamResponse:
        if mode == "traceback500":
            return web.Response(status=500, content_type="text/plain",
                                text="Traceback (most recent call last):\n  File "
                                     "\"/opt/engine/site-packages/llama_cpp/llama.py\"")
        if mode == "detail422":
            return web.json_response({"detail": "field required: messages.0.role"}, status=422)
        if mode.startswith("status:"):
            status = int(mode.split(":")[1])
            hdrs = {"Retry-After": "2"} if status in (429, 503) else {}
            return web.json_response(
                {"error": {"message": f"stub {status}", "type": "x", "param": None,
                           "code": None}}, status=status, headers=hdrs)
        if mode == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "headhang":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await asyncio.sleep(3600)
        if body.get("stream") or mode in ("midfail", "slow"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
            await resp.prepare(request)
            chunks = list(SSE_CHUNKS)
            opts = body.get("stream_options") or {}
            if isinstance(opts, dict) and opts.get("include_usage"):
                chunks.append(USAGE_CHUNK)
            chunks.append(DONE)
            for i, chunk in enumerate(chunks):
                if mode == "midfail" and i == 2:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                await resp.write(chunk)
                if mode == "slow":
                    await asyncio.sleep(self.delay)
                else:
                    await asyncio.sleep(0)
            await resp.write_eof()
            return resp
        if request.path.endswith("/embeddings"):
            return web.json_response({"object": "list", "model": body.get("model"),
                                      "data": [{"object": "embedding", "index": 0,
                                                "embedding": [0.1, 0.2]}]})
        return web.json_response({
            "id": "cmpl-1", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })


@dataclass(frozen=True)
class _Req:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


class StubEngines:
    """LocalEngines over stubs: engine id -> StubEngine."""

    def __init__(self, engines: list[StubEngine]) -> None:
        self.by_id = {e.engine_id: e for e in engines}
        self.inflight_now: dict[str, int] = {}
        self.inflight_max: dict[str, int] = {}
        self.results: list[tuple[str, bool]] = []
        #: engine id -> capacity (gossiped, and the node's gate); default 4 gossiped, no gate
        self.capacities: dict[str, int] = {}
        #: engine id -> capabilities to gossip (absent: not said)
        self.capabilities: dict[str, list[str]] = {}

    def request(self, engine_id: str, route: str, body: bytes,
                headers: Mapping[str, str]) -> _Req:
        eng = self.by_id[engine_id]
        return _Req("POST", eng.url + route, dict(headers), body)

    @contextmanager
    def inflight(self, engine_id: str) -> Iterator[None]:
        n = self.inflight_now.get(engine_id, 0) + 1
        self.inflight_now[engine_id] = n
        self.inflight_max[engine_id] = max(n, self.inflight_max.get(engine_id, 0))
        try:
            yield
        finally:
            self.inflight_now[engine_id] -= 1

    def current_load(self, engine_id: str) -> EngineLoad | None:
        if engine_id not in self.by_id:
            return None
        return EngineLoad(running=self.inflight_now.get(engine_id, 0), waiting=0,
                          capacity=self.capacities.get(engine_id, 4))

    def capacity(self, engine_id: str) -> int | None:
        return self.capacities.get(engine_id)  # None: any number at once (no gate)

    async def count_tokens(self, engine_id: str, model: str, text: str) -> int | None:
        return None

    def note_result(self, engine_id: str, ok: bool) -> None:
        self.results.append((engine_id, ok))

    def records(self, healthy: bool = True) -> list[dict[str, Any]]:
        """The record's ``engines`` entries (protocol/records.md) of these stubs."""
        out: list[dict[str, Any]] = []
        for e in self.by_id.values():
            rec: dict[str, Any] = {
                "id": e.engine_id, "kind": "simulated", "healthy": healthy,
                "models": [e.model],
                "load": {"running": 0, "waiting": 0, "kv_cache": None,
                         "capacity": self.capacities.get(e.engine_id, 4)}}
            if e.engine_id in self.capabilities:
                rec["capabilities"] = self.capabilities[e.engine_id]
            out.append(rec)
        return out
