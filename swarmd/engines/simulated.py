"""The SIMULATED engine: an OpenAI-compatible server that fakes inference.

Theory of operation
-------------------
A product feature for demos, benchmarks and tests: it behaves like an
inference engine -- time to first token, a token rate, a concurrency limit
with a bounded queue, Prometheus load figures -- without a model.  Text is a
deterministic sequence of words derived from a hash of the prompt.

Admission: at most ``concurrency`` requests generate at once (0: unlimited);
up to ``queue`` more wait for a slot; past that the answer is ``429`` with
``Retry-After`` and an OpenAI error object.  A generating request waits
``ttft_ms`` before its first token and then emits tokens at ``tps`` tokens/s
(0: no delay).  Both zero is the zero-delay mode: no timers at all, so what is
measured in front of it is the proxy's own cost.

Prefix cache (``prefix_cache`` > 0 entries, LRU): a chat request whose leading
messages (all but the last) were seen recently -- as a previous request's
messages or as that request plus the assistant reply -- waits only
``ttft_ms * prefix_hit_factor``.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions``, ``POST /v1/embeddings`` (vectors of ``embedding_dim``
floats from SHA-256, unit length), ``GET /metrics`` (``simengine_requests_running``,
``simengine_requests_waiting``, ``simengine_requests_total``,
``simengine_rejected_total``, ``simengine_concurrency`` (absent: unlimited),
``simengine_prefix_cache_usage`` (0..1), ``simengine_prefix_hits_total``) and ``GET /debug/last_request`` (the last
POST: route, headers, JSON body) for tests.  Streams are SSE exactly like
OpenAI's: ``data: {json}\\n\\n`` chunks, then ``data: [DONE]\\n\\n``;
``stream_options.include_usage`` adds the usage chunk (empty ``choices``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

WORDS = ("the", "swarm", "hums", "and", "every", "node", "answers", "quickly", "with",
         "tokens", "of", "simulated", "thought", "while", "models", "rest")
OWNED_BY = "swarmd-simulated"


@dataclass(frozen=True)
class SimConfig:
    models: tuple[str, ...] = ("sim-model",)
    ttft_ms: float = 0.0
    tps: float = 0.0  # tokens per second; 0 = unlimited
    max_tokens: int = 16  # default and upper bound of tokens per answer
    concurrency: int = 0  # 0 = unlimited
    queue: int = 64
    embedding_dim: int = 16
    prefix_cache: int = 0  # LRU entries; 0 = off
    prefix_hit_factor: float = 0.1
    retry_after_s: int = 1
    api_key: str = field(default="", repr=False)  # when set, required as Bearer


class _Reject(Exception):
    def __init__(self, status: int, message: str, etype: str, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.etype, self.code, self.param = (
            status, message, etype, code, param)


def _error(status: int, message: str, etype: str, code: str | None = None,
           param: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _sse(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def count_tokens(text: str) -> int:
    """The simulated tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def words_for(seed: str, n: int) -> list[str]:
    """``n`` deterministic words for ``seed`` (each but the first with a leading space)."""
    h = hashlib.sha256(seed.encode()).digest()
    out = []
    for i in range(n):
        w = WORDS[(h[i % len(h)] + i) % len(WORDS)]
        out.append(w if i == 0 else " " + w)
    return out


def embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector of ``dim`` floats for ``text``."""
    raw = b""
    counter = 0
    while len(raw) < dim * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    vals = [(v / 2**31) - 1.0 for v in struct.unpack(f"<{dim}I", raw[: dim * 4])]
    norm = math.sqrt(sum(v * v for v in vals)) or 1.0
    return [round(v / norm, 6) for v in vals]


def _prefix_key(messages: Sequence[Any]) -> str:
    return hashlib.sha256(_dumps(list(messages))).hexdigest()


class SimulatedEngine:
    """One simulated engine server.  Use :func:`start_simulated_engine` or
    :meth:`app` with any aiohttp runner."""

    #: Cancel a request's handler when its client disconnects (:meth:`start`).
    cancel_on_disconnect = False

    def __init__(self, config: SimConfig) -> None:
        if not config.models:
            raise ValueError("the simulated engine needs at least one model")
        self.config = config
        self.running = 0
        self.waiting = 0
        self.requests_total = 0
        self.rejected_total = 0
        self.prefix_hits = 0
        self.last_request: dict[str, Any] | None = None
        self._slots = asyncio.Semaphore(config.concurrency) if config.concurrency > 0 else None
        self._prefixes: OrderedDict[str, None] = OrderedDict()
        self._runner: web.AppRunner | None = None
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- serving ---------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.add_routes(app)
        return app

    def add_routes(self, app: web.Application) -> None:
        """The engine's routes, on ``app`` (so a subclass can build its own app)."""
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/debug/last_request", self._last)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> SimulatedEngine:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               handler_cancellation=self.cancel_on_disconnect)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=2048)
        await site.start()
        self._runner = runner
        self.host = host
        server = site._server  # the bound socket tells the real port when port=0
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- small routes ------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "engine": OWNED_BY})

    async def _models(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        now = int(time.time())
        data = [{"id": m, "object": "model", "created": now, "owned_by": OWNED_BY}
                for m in self.config.models]
        return web.json_response({"object": "list", "data": data})

    async def _metrics(self, request: web.Request) -> web.Response:
        cap = self.config.concurrency
        n = self.config.prefix_cache
        usage = round(len(self._prefixes) / n, 4) if n > 0 else 0.0
        lines = [
            "# TYPE simengine_requests_running gauge",
            f"simengine_requests_running {self.running}",
            "# TYPE simengine_requests_waiting gauge",
            f"simengine_requests_waiting {self.waiting}",
            "# TYPE simengine_prefix_cache_usage gauge",
            f"simengine_prefix_cache_usage {usage}",
            "# TYPE simengine_requests_total counter",
            f"simengine_requests_total {self.requests_total}",
            "# TYPE simengine_rejected_total counter",
            f"simengine_rejected_total {self.rejected_total}",
            "# TYPE simengine_prefix_hits_total counter",
            f"simengine_prefix_hits_total {self.prefix_hits}",
        ]
        if cap > 0:
            lines += ["# TYPE simengine_concurrency gauge", f"simengine_concurrency {cap}"]
        return web.Response(text="\n".join(lines) + "\n",
                            content_type="text/plain", charset="utf-8")

    async def _last(self, request: web.Request) -> web.Response:
        if self.last_request is None:
            return _error(404, "no request yet", "invalid_request_error")
        return web.json_response(self.last_request)

    # -- helpers -----------------------------------------------------------------

    def _auth(self, request: web.Request) -> web.Response | None:
        key = self.config.api_key
        if key and request.headers.get("Authorization") != f"Bearer {key}":
            return _error(401, "invalid API key", "invalid_request_error", "invalid_api_key")
        return None

    async def _body(self, request: web.Request, route: str) -> dict[str, Any]:
        raw = await request.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            raise _Reject(400, "request body is not valid JSON", "invalid_request_error") from None
        if not isinstance(doc, dict):
            raise _Reject(400, "request body must be a JSON object", "invalid_request_error")
        self.last_request = {"route": route, "headers": dict(request.headers), "body": doc}
        model = doc.get("model")
        if not isinstance(model, str) or not model:
            raise _Reject(400, "you must provide a model parameter", "invalid_request_error",
                          param="model")
        if model not in self.config.models:
            raise _Reject(404, f"The model `{model}` does not exist", "invalid_request_error",
                          "model_not_found", "model")
        return doc

    def _n_tokens(self, doc: dict[str, Any]) -> tuple[int, bool]:
        """Tokens to emit and whether the client's max_tokens limited them."""
        cap = self.config.max_tokens
        asked = doc.get("max_completion_tokens", doc.get("max_tokens"))
        if isinstance(asked, int) and not isinstance(asked, bool) and asked >= 0:
            return min(asked, cap), asked <= cap
        return cap, False

    async def _admit(self) -> None:
        self.requests_total += 1
        if self._slots is None:
            self.running += 1
            return
        if self._slots.locked():
            if self.waiting >= self.config.queue:
                self.rejected_total += 1
                raise _Reject(429, "the simulated engine is at capacity; retry later",
                              "server_error", "rate_limit_exceeded")
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.running += 1

    def _release(self) -> None:
        self.running -= 1
        if self._slots is not None:
            self._slots.release()

    def _ttft(self, messages: Sequence[Any] | None) -> float:
        base = self.config.ttft_ms / 1000.0
        n = self.config.prefix_cache
        if n <= 0 or not messages or len(messages) < 2:
            return base
        key = _prefix_key(messages[:-1])
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            self.prefix_hits += 1
            return base * self.config.prefix_hit_factor
        return base

    def _remember(self, *prefixes: Sequence[Any]) -> None:
        n = self.config.prefix_cache
        if n <= 0:
            return
        for p in prefixes:
            key = _prefix_key(p)
            self._prefixes[key] = None
            self._prefixes.move_to_end(key)
        while len(self._prefixes) > n:
            self._prefixes.popitem(last=False)

    async def _pace(self, start: float, ttft: float, i: int) -> None:
        """Sleep until token ``i`` (0-based) is due."""
        tps = self.config.tps
        due = start + ttft + (i / tps if tps > 0 else 0.0)
        delay = due - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- generation ----------------------------------------------------------------

    async def _generate(self, request: web.Request, route: str) -> web.StreamResponse:
        if (denied := self._auth(request)) is not None:
            return denied
        try:
            doc = await self._body(request, route)
            chat = route == "/v1/chat/completions"
            if chat:
                messages = doc.get("messages")
                if not isinstance(messages, list) or not messages:
                    raise _Reject(400, "messages must be a non-empty array",
                                  "invalid_request_error", param="messages")
                prompt = "\n".join(_text_of(m.get("content")) for m in messages
                                   if isinstance(m, dict))
            else:
                messages = None
                p = doc.get("prompt", "")
                prompt = p if isinstance(p, str) else " ".join(str(x) for x in p) \
                    if isinstance(p, list) else ""
            await self._admit()
        except _Reject as r:
            headers = {"Retry-After": str(self.config.retry_after_s)} if r.status == 429 else None
            return _error(r.status, r.message, r.etype, r.code, r.param, headers)
        try:
            return await self._answer(request, doc, chat, messages, prompt)
        finally:
            self._release()

    async def _answer(self, request: web.Request, doc: dict[str, Any], chat: bool,
                      messages: list[Any] | None, prompt: str) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ttft = self._ttft(messages)
        n, limited = self._n_tokens(doc)
        words = words_for(prompt, n)
        finish = "length" if limited else "stop"
        usage = {"prompt_tokens": count_tokens(prompt), "completion_tokens": n,
                 "total_tokens": count_tokens(prompt) + n}
        model = doc["model"]
        created = int(time.time())
        cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        obj = "chat.completion.chunk" if chat else "text_completion"
        if messages is not None:
            reply = {"role": "assistant", "content": "".join(words)}
            self._remember(messages, [*messages, reply])
        if self._streams(request, doc):
            opts = doc.get("stream_options")
            include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
            await resp.prepare(request)
            base: dict[str, Any] = {"id": cid, "object": obj, "created": created,
                                    "model": model}
            if include_usage:
                base["usage"] = None

            def chunk(choice: dict[str, Any]) -> bytes:
                return _sse({**base, "choices": [{"index": 0, **choice}]})

            # (token index or None, bytes): token i is not sent before it is due.
            events: list[tuple[int | None, bytes]] = []
            if chat:
                events.append((None, chunk({"delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None})))
            for i, w in enumerate(words):
                events.append((i, chunk({"delta": {"content": w}, "logprobs": None,
                                         "finish_reason": None}) if chat else
                               chunk({"text": w, "logprobs": None, "finish_reason": None})))
            # with no token, the end waits for the first token's time
            end = None if words else 0
            if chat:
                events.append((end, chunk({"delta": {}, "logprobs": None,
                                           "finish_reason": finish})))
            else:
                events.append((end, chunk({"text": "", "logprobs": None,
                                           "finish_reason": finish})))
            if include_usage:
                events.append((None, _sse({**base, "choices": [], "usage": usage})))
            events.append((None, DONE))
            await self._write_stream(request, resp, events, start, ttft)
            return resp
        await self._pace(start, ttft, max(n - 1, 0))
        text = "".join(words)
        if chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant",
                                                              "content": text},
                                      "logprobs": None, "finish_reason": finish}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            kind = "text_completion"
        return web.json_response({"id": cid, "object": kind, "created": created,
                                  "model": model, "choices": [choice], "usage": usage},
                                 dumps=lambda o: _dumps(o).decode())

    def _streams(self, request: web.Request, doc: dict[str, Any]) -> bool:
        """Whether to answer ``doc`` as an SSE stream."""
        return doc.get("stream") is True

    async def _write_stream(self, request: web.Request, resp: web.StreamResponse,
                            events: list[tuple[int | None, bytes]], start: float,
                            ttft: float) -> None:
        """Write the stream's events, each token at its time; events with nothing to
        wait for between them go out in one write."""
        buf = b""
        for tok, data in events:
            if tok is not None and (self.config.tps > 0 or (tok == 0 and ttft > 0)):
                if buf:
                    await resp.write(buf)
                    buf = b""
                await self._pace(start, ttft, tok)
            buf += data
        await resp.write(buf)
        await resp.write_eof()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "/v1/chat/completions")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "/v1/completions")

    async def _embeddings(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        try:
            doc = await self._body(request, "/v1/embeddings")
            raw = doc.get("input")
            if isinstance(raw, str):
                inputs = [raw]
            elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
                inputs = list(raw)
            elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
                inputs = [" ".join(map(str, raw))]
            elif isinstance(raw, list) and raw and all(isinstance(x, list) for x in raw):
                inputs = [" ".join(map(str, x)) for x in raw]
            else:
                raise _Reject(400, "input must be a string or an array", "invalid_request_error",
                              param="input")
        except _Reject as r:
            return _error(r.status, r.message, r.etype, r.code, r.param)
        self.requests_total += 1
        dim = doc.get("dimensions")
        dim = dim if isinstance(dim, int) and not isinstance(dim, bool) and 0 < dim <= 4096 \
            else self.config.embedding_dim
        data = [{"object": "embedding", "index": i, "embedding": embedding(t, dim)}
                for i, t in enumerate(inputs)]
        tokens = sum(count_tokens(t) for t in inputs)
        return web.json_response({"object": "list", "data": data, "model": doc["model"],
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def start_simulated_engine(host: str = "127.0.0.1", port: int = 0,
                                 **opts: Any) -> SimulatedEngine:
    """Start a simulated engine in the running loop; ``opts`` are
    :class:`SimConfig` fields (``model="m"`` is accepted for ``models=("m",)``)."""
    if "model" in opts:
        opts["models"] = (opts.pop("model"),)
    if "models" in opts:
        opts["models"] = tuple(opts["models"])
    engine = SimulatedEngine(replace(SimConfig(), **opts))
    return await engine.start(host, port)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="swarmd-simengine",
                                 description="The swarmd SIMULATED engine (OpenAI-compatible).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--model", action="append", dest="models",
                    help="model id served (repeat for several; default sim-model)")
    ap.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    ap.add_argument("--tps", type=float, default=0.0, help="tokens per second (0: unlimited)")
    ap.add_argument("--max-tokens", "--tokens", type=int, default=16, dest="max_tokens",
                    help="tokens per answer (default and upper bound)")
    ap.add_argument("--concurrency", type=int, default=0, help="requests generating at once (0: unlimited)")
    ap.add_argument("--queue", type=int, default=64, help="requests waiting for a slot before 429")
    ap.add_argument("--embedding-dim", type=int, default=16)
    ap.add_argument("--prefix-cache", type=int, default=0,
                    help="LRU entries of the simulated prefix cache (0: off)")
    ap.add_argument("--prefix-hit-factor", type=float, default=0.1,
                    help="TTFT multiplier on a prefix-cache hit")
    ap.add_argument("--api-key", default="", help="require this Bearer key")
    return ap


def config_from_args(argv: Sequence[str] | None = None) -> tuple[str, int, SimConfig]:
    a = _parser().parse_args(argv)
    cfg = SimConfig(
        models=tuple(a.models or ("sim-model",)), ttft_ms=max(0.0, a.ttft_ms),
        tps=max(0.0, a.tps), max_tokens=max(0, a.max_tokens),
        concurrency=max(0, a.concurrency), queue=max(0, a.queue),
        embedding_dim=max(1, a.embedding_dim), prefix_cache=max(0, a.prefix_cache),
        prefix_hit_factor=max(0.0, a.prefix_hit_factor), api_key=a.api_key,
    )
    return a.host, a.port, cfg


def main(argv: Sequence[str] | None = None) -> None:
    host, port, cfg = config_from_args(argv)
    engine = SimulatedEngine(cfg)
    print(f"swarmd simulated engine on http://{host}:{port} serving {', '.join(cfg.models)}",
          flush=True)
    web.run_app(engine.app(), host=host, port=port, access_log=None, print=None,
                backlog=2048)


if __name__ == "__main__":
    main()
