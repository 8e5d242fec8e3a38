"""The testing kit's simulated engine speaking Ollama's native API too.

Theory of operation: :class:`OllamaSim` is the kit's simulated OpenAI
engine (:class:`swarmd.testing.sim_engine.SimEngine`: deterministic words
from a hash of the prompt, OpenAI routes under ``/v1``, the same fault modes
and request log) with Ollama's own routes added on the same app, the way a
real Ollama serves both: ``GET /`` (``Ollama is
running``), ``/api/tags``, ``/api/ps``, ``POST /api/show`` (capabilities:
``completion`` and ``tools``, or ``embedding`` for models named
``*embed*``), ``/api/chat`` and ``/api/generate`` (NDJSON when ``stream`` is
not false, Ollama's default), ``/api/embed`` and ``/api/embeddings``;
``GET /api/version`` answers :attr:`OllamaSim.version`, and from
:data:`RESPONSES_SINCE` on ``POST /v1/responses`` is served too (stateless,
as Ollama's: a Response with one ``output_text``, or its SSE events).

Native answers carry what a real Ollama's do -- ``created_at``, ``done``,
``done_reason``, counts and durations -- plus ``"swarmd_sim": "native"``
so tests can tell a natively served answer from a translated one; every
native request is kept in :attr:`OllamaSim.native_requests`.

Tool calls (simulated): on ``/v1/chat/completions`` or ``/api/chat`` with
``tools`` and no tool result among the messages yet, the answer calls the
first tool with a string ``"x"`` for each required property of its schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from swarmd.engines.simulated import count_tokens, embedding, words_for
from swarmd.testing.sim_engine import SimEngine

#: The first Ollama version serving ``/v1/responses`` (as plugins/swarmd_engines/ollama.py).
RESPONSES_SINCE = (0, 13, 3)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000000Z"


def _tool_args(tool: dict[str, Any]) -> dict[str, Any]:
    params = (tool.get("function") or {}).get("parameters") or {}
    return {k: "x" for k in params.get("required") or []}


def _wants_tool(doc: dict[str, Any]) -> dict[str, Any] | None:
    tools = doc.get("tools")
    msgs = doc.get("messages") or []
    if not tools or any(isinstance(m, dict) and m.get("role") == "tool" for m in msgs):
        return None
    choice = doc.get("tool_choice")
    if choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        for t in tools:
            if (t.get("function") or {}).get("name") == name:
                return dict(t)
    return dict(tools[0])


class OllamaSim(SimEngine):
    """The simulated engine plus Ollama's native routes."""

    def __init__(self, models: tuple[str, ...] = ("sim-llama:latest", "sim-embed:latest"),
                 engine_id: str = "ollama", version: str = "0.9.0", **sim: Any) -> None:
        super().__init__(engine_id, models=models, **sim)
        self.version = version
        self.native_requests: list[tuple[str, dict[str, Any]]] = []

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)  # OpenAI's routes; chat adds simulated tool calls (_chat)
        app.router.add_get("/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/chat", self._api_chat)
        app.router.add_post("/api/generate", self._api_generate)
        app.router.add_post("/api/embed", self._api_embed)
        app.router.add_post("/api/embeddings", self._api_embeddings)
        if tuple(int(x) for x in self.version.split(".")[:3]) >= RESPONSES_SINCE:
            app.router.add_post("/v1/responses", self._responses)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> OllamaSim:
        await super().start(host, port)
        return self

    # -- listings ---------------------------------------------------------------------

    def _entry(self, name: str) -> dict[str, Any]:
        return {"name": name, "model": name, "modified_at": _iso(0), "size": 1234,
                "digest": "0" * 64,
                "details": {"parent_model": "", "format": "gguf", "family": "sim",
                            "families": ["sim"], "parameter_size": "1M",
                            "quantization_level": "Q4_K_M"}}

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version})

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [self._entry(m) for m in self.config.models]})

    async def _ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [
            {**self._entry(m), "expires_at": _iso(time.time() + 300), "size_vram": 1234,
             "context_length": 4096} for m in self.config.models]})

    async def _show(self, request: web.Request) -> web.Response:
        doc = await request.json()
        name = doc.get("model") or doc.get("name")
        if name not in self.config.models:
            return web.json_response({"error": f"model '{name}' not found"}, status=404)
        caps = ["embedding"] if "embed" in name else ["completion", "tools"]
        return web.json_response({"modelfile": "", "parameters": "", "template": "",
                                  "details": self._entry(name)["details"], "model_info": {},
                                  "capabilities": caps})

    # -- generation ---------------------------------------------------------------------

    async def _native_body(self, request: web.Request, path: str) -> dict[str, Any] | web.Response:
        try:
            doc = await request.json()
        except ValueError:
            return web.json_response({"error": "invalid JSON"}, status=400)
        self.native_requests.append((path, doc))
        if doc.get("model") not in self.config.models:
            return web.json_response(
                {"error": f"model \"{doc.get('model')}\" not found, try pulling it first"},
                status=404)
        return dict(doc)

    def _num_predict(self, doc: dict[str, Any]) -> int:
        n = (doc.get("options") or {}).get("num_predict")
        cap = self.config.max_tokens
        return min(n, cap) if isinstance(n, int) and n >= 0 else cap

    async def _native(self, request: web.Request, chat: bool) -> web.StreamResponse:
        path = "/api/chat" if chat else "/api/generate"
        doc = await self._native_body(request, path)
        if isinstance(doc, web.Response):
            return doc
        if chat:
            prompt = "\n".join(str(m.get("content", "")) for m in doc.get("messages") or [])
        else:
            prompt = str(doc.get("prompt", ""))
        tool = _wants_tool(doc) if chat else None
        n = 0 if tool else self._num_predict(doc)
        words = words_for(prompt, n)
        t0 = time.monotonic()
        base = {"model": doc["model"], "created_at": _iso(time.time())}

        def piece(text: str, calls: list[Any] | None = None) -> dict[str, Any]:
            if chat:
                msg: dict[str, Any] = {"role": "assistant", "content": text}
                if calls:
                    msg["tool_calls"] = calls
                return {**base, "message": msg, "done": False}
            return {**base, "response": text, "done": False}

        calls = None
        if tool:
            calls = [{"function": {"name": tool["function"]["name"],
                                   "arguments": _tool_args(tool)}}]
        final = {**piece(""), "done": True,
                 "done_reason": "length" if n and n == len(words) and
                 self._num_predict(doc) < self.config.max_tokens else "stop",
                 "total_duration": int((time.monotonic() - t0) * 1e9) + 1, "load_duration": 0,
                 "prompt_eval_count": count_tokens(prompt), "prompt_eval_duration": 1,
                 "eval_count": len(words), "eval_duration": 1, "swarmd_sim": "native"}
        if doc.get("stream", True) is False:
            text = "".join(words)
            body = {**final, **piece(text, calls), "done": True}
            return web.json_response(body)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        lines = [piece(w) for w in words]
        if calls:
            lines.append(piece("", calls))
        lines.append(final)
        await resp.write(b"".join(json.dumps(x).encode() + b"\n" for x in lines))
        await resp.write_eof()
        return resp

    async def _api_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, chat=True)

    async def _api_generate(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, chat=False)

    async def _api_embed(self, request: web.Request) -> web.Response:
        doc = await self._native_body(request, "/api/embed")
        if isinstance(doc, web.Response):
            return doc
        raw = doc.get("input")
        inputs = [raw] if isinstance(raw, str) else list(raw or [])
        dim = self.config.embedding_dim
        return web.json_response({"model": doc["model"],
                                  "embeddings": [embedding(t, dim) for t in inputs],
                                  "total_duration": 1, "load_duration": 0,
                                  "prompt_eval_count": sum(count_tokens(t) for t in inputs),
                                  "swarmd_sim": "native"})

    async def _api_embeddings(self, request: web.Request) -> web.Response:
        doc = await self._native_body(request, "/api/embeddings")
        if isinstance(doc, web.Response):
            return doc
        return web.json_response({"embedding": embedding(str(doc.get("prompt", "")),
                                                         self.config.embedding_dim)})

    # -- OpenAI chat with simulated tool calls ------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        tool = _wants_tool(doc) if isinstance(doc, dict) else None
        if tool is None:
            return await super()._chat(request)
        self.last_request = {"route": "/v1/chat/completions",
                                 "headers": dict(request.headers), "body": doc}
        assert isinstance(doc, dict)
        call = {"id": "call_" + uuid.uuid4().hex[:8], "type": "function",
                "function": {"name": tool["function"]["name"],
                             "arguments": json.dumps(_tool_args(tool))}}
        usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        cid, created = "chatcmpl-" + uuid.uuid4().hex[:12], int(time.time())
        if doc.get("stream") is not True:
            return web.json_response({
                "id": cid, "object": "chat.completion", "created": created,
                "model": doc.get("model"), "usage": usage,
                "choices": [{"index": 0, "finish_reason": "tool_calls",
                             "message": {"role": "assistant", "content": None,
                                         "tool_calls": [call]}}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": doc.get("model")}
        args = call["function"]["arguments"]  # type: ignore[index]
        half = len(args) // 2
        deltas = [
            {"role": "assistant", "content": None,
             "tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                             "function": {"name": call["function"]["name"],  # type: ignore[index]
                                          "arguments": ""}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": args[:half]}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": args[half:]}}]},
        ]
        out = b""
        for d in deltas:
            out += b"data: " + json.dumps({**base, "choices": [
                {"index": 0, "delta": d, "finish_reason": None}]}).encode() + b"\n\n"
        out += b"data: " + json.dumps({**base, "choices": [
            {"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}).encode() + b"\n\n"
        opts = doc.get("stream_options") or {}
        if opts.get("include_usage"):
            out += b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() \
                + b"\n\n"
        await resp.write(out + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


    # -- OpenAI Responses (Ollama >= 0.13.3: stateless) ----------------------------------

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        doc = await self._native_body(request, "/v1/responses")
        if isinstance(doc, web.Response):
            return doc
        raw = doc.get("input")
        prompt = raw if isinstance(raw, str) else json.dumps(raw)
        cap = doc.get("max_output_tokens")
        n = min(cap, self.config.max_tokens) if isinstance(cap, int) and cap >= 0 \
            else self.config.max_tokens
        words = words_for(prompt, n)
        rid = "resp_sim" + uuid.uuid4().hex[:12]
        usage = {"input_tokens": count_tokens(prompt), "output_tokens": n,
                 "total_tokens": count_tokens(prompt) + n}
        text = "".join(words)
        done = {"id": rid, "object": "response", "created_at": int(time.time()),
                "status": "completed", "model": doc["model"], "usage": usage,
                "output": [{"type": "message", "id": "msg_sim", "role": "assistant",
                            "status": "completed",
                            "content": [{"type": "output_text", "text": text,
                                         "annotations": []}]}],
                "swarmd_sim": "native"}
        if doc.get("stream") is not True:
            return web.json_response(done)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": {**done, "status": "in_progress",
                                               "output": []}})]
        events += [("response.output_text.delta",
                    {"item_id": "msg_sim", "output_index": 0, "content_index": 0, "delta": w})
                   for w in words]
        events.append(("response.completed", {"response": done}))
        out = b"".join(
            f"event: {t}\ndata: ".encode()
            + json.dumps({"type": t, "sequence_number": i, **d}).encode() + b"\n\n"
            for i, (t, d) in enumerate(events))
        await resp.write(out)
        await resp.write_eof()
        return resp


@contextlib.contextmanager
def ollama_sim_thread(**kw: Any) -> Iterator[OllamaSim]:
    """An :class:`OllamaSim` served from its own event loop in a thread (for tests
    whose swarmd daemons are subprocesses)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sim = asyncio.run_coroutine_threadsafe(OllamaSim(**kw).start(), loop).result(10)
    try:
        yield sim
    finally:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
