"""HTTP-level errors (before any handler runs) in OpenAI's error shape.

aiohttp answers a request it cannot parse -- a garbage request line, a
header over ``max_field_size`` (8 KiB), too many headers -- with a plain-text
page and logs a traceback at ERROR.  A client of an OpenAI port expects the
error object, and such requests are the client's fault, not the daemon's.
:func:`install` swaps the server's request handler for one whose
``handle_error`` answers ``{"error": {...}}`` (400, or 431 for oversized
headers) and logs one line at INFO.  Errors inside handlers never reach
here: the API's middleware turns them into error objects already.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

log = logging.getLogger("swarmd.api")


class _JsonErrorHandler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        if isinstance(exc, LineTooLong) or (
                isinstance(exc, BadHttpMessage) and "too long" in str(exc).lower()):
            status, code = 431, "request_header_too_large"
            text = "request line or a header is too large"
        elif status < 500:
            code = "bad_http_request"
            text = f"malformed HTTP request: {type(exc).__name__ if exc else 'bad request'}"
        else:
            code = "internal_error"
            text = "internal error in swarmd"
        if status >= 500:
            log.error("HTTP error from %s", request.remote, exc_info=exc)
        else:
            log.info("bad HTTP request from %s: %s", request.remote,
                     (str(exc) or type(exc).__name__)[:200] if exc else message)
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": text, "type": kind, "param": None, "code": code}}
        resp = web.Response(status=status, body=json.dumps(body).encode(),
                            content_type="application/json",
                            reason=HTTPStatus(status).phrase)
        resp.force_close()
        return resp


class _JsonErrorServer(Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


def install(runner: web.BaseRunner) -> None:
    """After ``runner.setup()``: answer unparsable requests with error objects."""
    server = runner.server
    if server is not None and type(server) is Server:
        server.__class__ = _JsonErrorServer
