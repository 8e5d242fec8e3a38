"""OpenAI-style error objects and the HTTP responses that carry them.

Every error the API returns is ``{"error": {"message", "type", "param",
"code"}}`` with a matching status; 429 and 503 carry ``Retry-After``
(whole seconds, at least 1).  Types follow OpenAI's: ``invalid_request_error``
(4xx caused by the request), ``rate_limit_error`` (429), ``server_error``
(5xx).
"""

from __future__ import annotations

import json
import math

from aiohttp import web


class ApiError(Exception):
    """An error answer; raise it anywhere in a handler."""

    def __init__(self, status: int, message: str, *, type: str | None = None,
                 param: str | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        if status == 429 and type is None:
            self.type = "rate_limit_error"
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        hdrs = dict(headers or {})
        if self.retry_after is not None:
            hdrs["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return web.Response(status=self.status, body=json.dumps(self.body()).encode(),
                            content_type="application/json", headers=hdrs)


def sse_error_event(err: ApiError) -> bytes:
    """The SSE event sent when a stream fails after it started (then the
    connection is closed, with no ``data: [DONE]``)."""
    return b"data: " + json.dumps(err.body()).encode() + b"\n\n"


def bad_request(message: str, *, param: str | None = None,
                code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, param=param, code=code)
