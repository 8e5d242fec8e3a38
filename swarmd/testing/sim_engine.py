"""The testing kit's simulated OpenAI engine: swarmd's SIMULATED engine with fault modes.

Theory of operation
-------------------
:class:`SimEngine` is :class:`swarmd.engines.simulated.SimulatedEngine` --
deterministic words from a hash of the prompt, ``ttft_ms``/``tps`` pacing
(*slow*), a concurrency limit with a bounded queue past which it answers 429
with ``Retry-After`` (*capacity*), Prometheus load figures -- plus what tests
and benchmarks need to provoke and observe the rest:

- a request log: every POST as a :class:`Seen` (path, lower-cased headers,
  raw body) in :attr:`SimEngine.seen`; :attr:`SimEngine.cancelled` counts
  handlers cancelled because the client went away (the server cancels a
  handler on disconnect, as real engines stop generating);
- a fault mode per POST: :attr:`SimEngine.mode`, or the next entry of
  :attr:`SimEngine.script` while it has one (see :data:`MODES`):

  ``ok``
      answer normally;
  ``status:<n>``
      that status with an OpenAI error body (``Retry-After: 2`` for 429/503);
  ``traceback500`` / ``detail422``
      a plain-text 500 carrying an engine-internal path / a FastAPI-style
      ``{"detail": ...}`` 422 (not OpenAI's error shape);
  ``drop``
      close the connection without answering;
  ``hang`` / ``headhang``
      never answer / send SSE headers and then nothing (*stall*);
  ``midfail``
      answer as an SSE stream, close the connection after two events
      (*mid-stream break*);
  ``slow``
      answer as an SSE stream with :attr:`SimEngine.delay` seconds after
      each event;

- :attr:`SimEngine.stall`: seconds every GET (health, model and metrics
  polls) waits before answering, as a saturated engine does;
- canned answers (``canned=True``): fixed bytes instead of simulated words,
  for tests that compare what a proxy relays byte for byte -- a stream is
  :data:`SSE_CHUNKS` (plus :data:`USAGE_CHUNK` when
  ``stream_options.include_usage``) and ``data: [DONE]``, each event its own
  write (:func:`sse_bytes`); chat and completions answer ``"hi"``, embeddings
  ``[0.1, 0.2]``; the model name is not checked.

:mod:`swarmd.testing.local_engines` puts engines behind the API's
``LocalEngines`` protocol; :mod:`swarmd.testing.ollama_sim` adds Ollama's
native routes to this engine.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from swarmd.engines.simulated import SimConfig, SimulatedEngine

#: The fault modes (``status:<n>`` takes any HTTP status).
MODES = ("ok", "status:<n>", "traceback500", "detail422", "drop", "hang", "headhang",
         "midfail", "slow")
#: Modes that answer as an SSE stream whatever the request asked.
STREAM_FAULTS = frozenset({"midfail", "slow"})

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
    """The whole canned stream, as a client receives it."""
    return b"".join(SSE_CHUNKS) + (USAGE_CHUNK if include_usage else b"") + DONE


@dataclass
class Seen:
    """One POST the engine received."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _openai_error(status: int, message: str) -> web.Response:
    hdrs = {"Retry-After": "2"} if status in (429, 503) else {}
    return web.json_response({"error": {"message": message, "type": "x", "param": None,
                                        "code": None}}, status=status, headers=hdrs)


class SimEngine(SimulatedEngine):
    """The simulated engine with fault modes and a request log (see the module doc).

    ``config`` are :class:`swarmd.engines.simulated.SimConfig` fields
    (``ttft_ms``, ``tps``, ``max_tokens``, ``concurrency``, ``queue``, ...);
    ``models`` overrides the single ``model``.
    """

    cancel_on_disconnect = True

    def __init__(self, engine_id: str = "sim", model: str = "tiny", *, mode: str = "ok",
                 script: Iterable[str] = (), delay: float = 0.05, stall: float = 0.0,
                 canned: bool = False, models: Iterable[str] | None = None,
                 **config: Any) -> None:
        names = tuple(models) if models is not None else (model,)
        super().__init__(replace(SimConfig(), models=names, **config))
        self.engine_id = engine_id
        self.mode = mode
        self.script: deque[str] = deque(script)
        self.delay = delay
        self.stall = stall
        self.canned = canned
        self.seen: list[Seen] = []
        self.cancelled = 0
        self._modes: dict[int, str] = {}  # id(request) -> its fault mode, while it runs

    @property
    def model(self) -> str:
        """The first (usually only) model served."""
        return self.config.models[0]

    def next_mode(self) -> str:
        return self.script.popleft() if self.script else self.mode

    def _mode_of(self, request: web.Request) -> str:
        return self._modes.get(id(request), "ok")

    # -- serving ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._faults])
        self.add_routes(app)
        return app

    def add_routes(self, app: web.Application) -> None:
        if not self.canned:
            super().add_routes(app)
            return
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            app.router.add_post(path, self._canned)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> SimEngine:
        await super().start(host, port)
        return self

    @web.middleware
    async def _faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method != "POST":
            if self.stall:
                await asyncio.sleep(self.stall)  # busy: polls answer late
            resp: web.StreamResponse = await handler(request)
            return resp
        raw = await request.read()
        self.seen.append(Seen(request.path,
                              {k.lower(): v for k, v in request.headers.items()}, raw))
        mode = self.next_mode()
        self._modes[id(request)] = mode
        try:
            early = await self._early(request, mode)
            if early is not None:
                return early
            resp = await handler(request)
            return resp
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self._modes.pop(id(request), None)

    async def _early(self, request: web.Request, mode: str) -> web.StreamResponse | None:
        """The answer of a fault that replaces the engine's own; None to answer."""
        if mode in ("ok", *STREAM_FAULTS):
            return None
        if mode == "traceback500":
            return web.Response(status=500, content_type="text/plain",
                                text="Traceback (most recent call last):\n  File "
                                     "\"/opt/engine/site-packages/llama_cpp/llama.py\"")
        if mode == "detail422":
            return web.json_response({"detail": "field required: messages.0.role"}, status=422)
        if mode.startswith("status:"):
            status = int(mode.split(":", 1)[1])
            return _openai_error(status, f"stub {status}")
        if mode == "drop":
            if request.transport is not None:
                request.transport.close()
            return web.Response()
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "headhang":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await asyncio.sleep(3600)
        return web.Response(status=500, content_type="text/plain",
                            text=f"SimEngine: unknown mode {mode!r} (modes: {', '.join(MODES)})")

    # -- streams: the simulated answer, or a fault ----------------------------------------

    def _streams(self, request: web.Request, doc: dict[str, Any]) -> bool:
        return self._mode_of(request) in STREAM_FAULTS or super()._streams(request, doc)

    async def _write_stream(self, request: web.Request, resp: web.StreamResponse,
                            events: list[tuple[int | None, bytes]], start: float,
                            ttft: float) -> None:
        if self._mode_of(request) not in STREAM_FAULTS:
            await super()._write_stream(request, resp, events, start, ttft)
            return
        await self._write_each(request, resp, events, start, ttft)

    async def _write_each(self, request: web.Request, resp: web.StreamResponse,
                          events: list[tuple[int | None, bytes]], start: float,
                          ttft: float) -> None:
        """Each event its own write (``midfail``: close after two; ``slow``: a pause
        after each)."""
        mode = self._mode_of(request)
        for i, (tok, data) in enumerate(events):
            if mode == "midfail" and i == 2:
                if request.transport is not None:
                    request.transport.close()
                return
            if tok is not None:
                await self._pace(start, ttft, tok)
            await resp.write(data)
            await asyncio.sleep(self.delay if mode == "slow" else 0)
        await resp.write_eof()

    # -- canned answers ------------------------------------------------------------------

    async def _canned(self, request: web.Request) -> web.StreamResponse:
        try:
            body: Any = json.loads(await request.read())
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        self.requests_total += 1
        if body.get("stream") or self._mode_of(request) in STREAM_FAULTS:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
            await resp.prepare(request)
            chunks = list(SSE_CHUNKS)
            opts = body.get("stream_options") or {}
            if isinstance(opts, dict) and opts.get("include_usage"):
                chunks.append(USAGE_CHUNK)
            chunks.append(DONE)
            await self._write_each(request, resp, [(None, c) for c in chunks], 0.0, 0.0)
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


async def start_sim_engine(engine_id: str = "sim", model: str = "tiny",
                           **kw: Any) -> SimEngine:
    """Start a :class:`SimEngine` in the running loop on 127.0.0.1 and a free port."""
    return await SimEngine(engine_id, model, **kw).start()
