"""Anthropic's Messages API: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Theory of operation
-------------------
A Messages body is mapped to chat completions
(:mod:`swarmd.api.translate.anthropic`), routed through ``Proxy.exchange``
and the answer mapped back, streamed as Anthropic's events or not.
``x-api-key`` and ``anthropic-version`` are accepted and not checked (the
API port has no keys of its own yet); ``anthropic-beta`` is ignored.

``count_tokens`` has no OpenAI equivalent: it is counted by the engine that
serves the model, as the ``prompt_tokens`` of a one-token chat completion
of the same messages, system and tools (so it is exactly that engine's
count, at the cost of one generated token).

Errors are Anthropic's ``{"type": "error", "error": {"type", "message"}}``
with the matching status (``overloaded_error`` for 503, with Retry-After).
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from swarmd.api.client_common import (
    ClientError,
    Exchanger,
    StreamTranslator,
    answer_json,
    engine_error,
    open_exchange,
    read_all,
    read_body,
    relay_stream,
    request_id,
    routed_headers,
)
from swarmd.api.translate import anthropic as tr
from swarmd.api.translate.common import (
    TranslateError,
    answer_of,
    dumps,
    require_model,
    require_object,
)

CHAT = "/v1/chat/completions"


def error_response(err: ClientError) -> web.Response:
    return web.Response(status=err.status, body=dumps(tr.error_body(err.message, err.status)),
                        content_type="application/json", headers=err.headers())


def _json(doc: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(doc), content_type="application/json", headers=headers)


class AnthropicHandlers:
    def __init__(self, proxy: Exchanger, deps: Any) -> None:
        self.proxy = proxy
        self.deps = deps

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, count_only=False)

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, count_only=True)

    async def _call(self, request: web.Request, *, count_only: bool) -> web.StreamResponse:
        rid = request_id(request)
        try:
            body = require_object(await read_body(request, self.deps.api.max_body_bytes))
            asked = require_model(body)
            model = self.deps.routing.aliases.get(asked, asked)
            mapped = tr.chat_request(body, model, count_only=count_only)
            ex = await open_exchange(self.proxy, CHAT, mapped.body, request, rid)
        except TranslateError as exc:
            return error_response(ClientError.of(exc))
        except ClientError as err:
            return error_response(err)
        msg_id = f"msg_{uuid.uuid4().hex[:24]}"
        try:
            if ex.status >= 400:
                raw, _ = await read_all(ex)
                return error_response(engine_error(ex, raw))
            if mapped.stream:
                stream = tr.EventStream(msg_id, asked)
                return await relay_stream(
                    request, ex, rid, "text/event-stream", stream.start(),
                    StreamTranslator(feed=stream.feed, finish=stream.finish,
                                     fail=lambda m: stream.fail(m, 502),
                                     ended=lambda: stream.ended))
            raw, _ = await read_all(ex)
            ans = answer_of(answer_json(ex, raw))
            if count_only:
                return _json({"input_tokens": ans.usage.prompt_tokens},
                             routed_headers(ex, rid))
            return _json(tr.message_object(ans, msg_id, asked), routed_headers(ex, rid))
        except TranslateError as exc:
            return error_response(ClientError.of(exc))
        except ClientError as err:
            return error_response(err)
        finally:
            await ex.aclose()


def register(app: web.Application, proxy: Exchanger, deps: Any) -> AnthropicHandlers:
    h = AnthropicHandlers(proxy, deps)
    app.router.add_post("/v1/messages", h.messages)
    app.router.add_post("/v1/messages/count_tokens", h.count_tokens)
    return h
