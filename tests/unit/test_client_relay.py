"""The translated stream relay (swarmd.api.client_common.relay_stream): the request
is booked (the exchange closed) before the client can see the stream's last event,
and what is already there goes out in one write."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from swarmd.api.client_common import StreamTranslator, relay_stream
from swarmd.api.translate import anthropic
from swarmd.api.upstream import UpstreamError

pytestmark = pytest.mark.timeout(30)

EVENTS = b"".join(
    b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"%s"},'
    b'"finish_reason":null}]}\n\n' % w for w in (b"a", b" b")) + (
    b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":2}}\n\n')
DONE = b"data: [DONE]\n\n"


class FakeExchange:
    status = 200
    headers: tuple[tuple[str, str], ...] = ()
    node_id = "node"
    engine_id = "engine"
    engine_kind = "openai"
    route = "/v1/chat/completions"

    def __init__(self, reads: list[bytes | Exception], log: list[Any]) -> None:
        self._reads = list(reads)
        self.log = log

    async def read(self) -> bytes:
        await asyncio.sleep(0)
        if not self._reads:
            return b""
        r = self._reads.pop(0)
        if isinstance(r, Exception):
            raise r
        return r

    async def aclose(self) -> None:
        self.log.append(("booked",))


async def _relay(reads: list[bytes | Exception]) -> tuple[list[Any], bytes]:
    log: list[Any] = []
    stream = anthropic.EventStream("msg_1", "m")

    async def handler(request: web.Request) -> web.StreamResponse:
        ex = FakeExchange(reads, log)
        return await relay_stream(request, ex, "rid", "text/event-stream", stream.start(),
                                  StreamTranslator(feed=stream.feed, finish=stream.finish,
                                                   fail=lambda m: stream.fail(m, 502),
                                                   ended=lambda: stream.ended))

    write, write_eof = web.StreamResponse.write, web.StreamResponse.write_eof

    async def logged_write(self: web.StreamResponse, data: bytes) -> None:
        log.append(("write", bytes(data)))
        await write(self, data)

    async def logged_eof(self: web.StreamResponse, data: bytes = b"") -> None:
        if not any(e[0] == "eof" for e in log):  # aiohttp's own second call: a no-op
            log.append(("eof", bytes(data)))
        await write_eof(self, data)

    app = web.Application()
    app.router.add_post("/s", handler)
    mp = pytest.MonkeyPatch()
    mp.setattr(web.StreamResponse, "write", logged_write)
    mp.setattr(web.StreamResponse, "write_eof", logged_eof)
    try:
        async with TestClient(TestServer(app)) as client:
            r = await client.post("/s")
            body = b""
            try:
                async for chunk in r.content.iter_any():
                    body += chunk
            except aiohttp.ClientPayloadError:  # the relay closed a broken stream
                pass
    finally:
        mp.undo()
    return log, body


def _expected(parts: list[bytes]) -> bytes:
    s = anthropic.EventStream("msg_1", "m")
    return s.start() + b"".join(s.feed(p) for p in parts) + s.finish()


def test_an_answer_that_came_at_once_is_booked_then_sent_in_one_write() -> None:
    log, body = asyncio.run(_relay([EVENTS + DONE]))
    assert body == _expected([EVENTS + DONE])
    assert log[0] == ("booked",)  # before any byte of the answer went out
    assert log[1:] == [("eof", body)]


def test_tokens_go_out_as_they_come_and_the_end_after_booking() -> None:
    parts = [EVENTS[:120], EVENTS[120:], DONE]
    log, body = asyncio.run(_relay(list(parts)))
    assert body == _expected(parts)
    booked = log.index(("booked",))
    assert [k for k, *_ in log[:booked]] == ["write", "write"]
    sent_before = b"".join(d for k, d in log[:booked])
    assert b"message_stop" not in sent_before and b"text_delta" in sent_before
    assert log[booked + 1:] == [("eof", body[len(sent_before):])]
    assert body[len(sent_before):].endswith(b"event: message_stop\ndata: "
                                            b'{"type":"message_stop"}\n\n')


def test_an_engine_failing_mid_stream_gets_the_error_event_and_no_booking_here() -> None:
    log, body = asyncio.run(_relay([EVENTS[:120], UpstreamError("upstream", "boom")]))
    assert ("booked",) not in log  # the handler's own close books it
    assert body.endswith(b'"message":"the engine failed mid-stream: boom"}}\n\n')
