"""Relaying a committed exchange to the OpenAI client (the proxy's last step).

Headers (with ``X-Request-Id`` and where it ran), then the body as it comes.
The headers go out with the first body bytes (an exchange is committed only
once its first bytes came, so this delays nothing), and the last bytes go out
together with the end of the message, so a small answer, JSON or a stream that
came at once, is one send to the client instead of three.  The request is
*booked* -- the exchange closed, which writes its usage record and settles
its limits -- before the client can see the answer end: before the final
``data: [DONE]`` event of a stream, before the last chunk of a JSON body.
So a node killed right after a client got its answer has that request on
disk.  A failure mid-stream ends an SSE stream with an error event; either
way the connection is closed so the client sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from swarmd.api.client_common import HeadersWithBody
from swarmd.api.errors import ApiError, sse_error_event
from swarmd.api.exchange import Exchange
from swarmd.api.upstream import UpstreamError

log = logging.getLogger("swarmd.api")


async def relay(request: web.Request, ex: Exchange, rid: str,
                count_error: Callable[[str], None]) -> web.StreamResponse:
    sse = any(k.lower() == "content-type" and v.startswith("text/event-stream")
              for k, v in ex.headers)
    resp = HeadersWithBody(status=ex.status)
    for k, v in ex.headers:
        resp.headers.add(k, v)
    resp.headers["X-Request-Id"] = rid
    resp.headers["X-Swarmd-Node"] = ex.node_id
    resp.headers["X-Swarmd-Engine"] = ex.engine_id
    resp.headers["X-Swarmd-Queue-Wait"] = f"{ex.queue_wait:.3f}"
    last = b""  # the final bytes, sent with the end of the message
    try:
        await resp.prepare(request)
        ex.sent_status = resp.status
        chunk = await ex.read()
        if sse:
            while chunk:
                if chunk.endswith(b"data: [DONE]\n\n"):
                    # The last event: read to the end and book the request
                    # (usage record, limits) before the client can see it
                    # finished, so a crash right after loses nothing.
                    rest = await ex.read()
                    while rest:
                        chunk += rest
                        rest = await ex.read()
                    await ex.aclose()
                    last = chunk
                    break
                await resp.write(chunk)
                chunk = await ex.read()
        else:
            # A JSON body may carry Content-Length, so its client is done at
            # its last byte: hold each chunk until the next one comes, and
            # book the request before the last goes out.
            while chunk:
                nxt = await ex.read()
                if not nxt:
                    await ex.aclose()
                    last = chunk
                    break
                await resp.write(chunk)
                chunk = nxt
        await ex.aclose()  # booked before the final bytes (write_eof) go out
    except UpstreamError as exc:
        code = "upstream_timeout" if exc.kind == "timeout" else "upstream_error"
        count_error("midstream_" + code)
        log.warning("engine %s on node %s failed mid-response (%s): %s",
                    ex.engine_id, ex.node_id[-8:], exc.kind, exc.message)
        if sse:
            err = ApiError(504 if exc.kind == "timeout" else 502,
                           f"the engine failed mid-stream: {exc.message}", code=code)
            try:
                await resp.write(sse_error_event(err))
            except ConnectionError:
                pass
        _close_connection(request)
        return resp
    except ConnectionError:
        # The client went away (closing the exchange cancels the upstream).
        log.debug("client went away during the answer", extra={"request_id": rid})
        return resp
    try:
        await resp.write_eof(last)
    except ConnectionError:
        pass  # the client closed a finished answer: not an error
    return resp


def _close_connection(request: web.Request) -> None:
    """End the HTTP exchange abruptly (flushes what was written, then closes)."""
    transport = request.transport
    if transport is not None:
        transport.close()
