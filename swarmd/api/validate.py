"""Checks on an incoming OpenAI request body, before any routing.

Only what routing needs is checked -- JSON object, ``model`` a string, the
route's required input present with a plausible type, ``stream`` a boolean
-- everything else (tools, response_format, logprobs, seed, unknown fields)
is the engine's business and passes through.  The body bytes are forwarded
unchanged, except when ``model`` names an alias: then the body is
re-serialised with only ``model`` replaced (key order and values kept).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from swarmd.api.errors import ApiError, bad_request

#: Route -> (required field, allowed JSON types, description of the types).
ROUTES: dict[str, tuple[str, tuple[type, ...], str]] = {
    "/v1/chat/completions": ("messages", (list,), "an array of message objects"),
    "/v1/completions": ("prompt", (str, list), "a string or an array"),
    "/v1/embeddings": ("input", (str, list), "a string or an array"),
}


@dataclass(frozen=True)
class ParsedRequest:
    route: str
    body: Mapping[str, Any]
    raw: bytes  # what is sent upstream
    model: str  # after alias rewriting
    requested_model: str
    stream: bool


def _type_error(param: str, want: str) -> ApiError:
    return bad_request(f"'{param}' must be {want}", param=param, code="invalid_type")


def parse_request(route: str, raw: bytes, aliases: Mapping[str, str]) -> ParsedRequest:
    """Validate ``raw`` for ``route``; ApiError(400) if it will not do."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", code="invalid_json")
    if "model" not in body:
        raise bad_request("you must provide a model parameter", param="model",
                          code="missing_required_parameter")
    model = body["model"]
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a non-empty string")
    field, types, desc = ROUTES[route]
    if field not in body:
        raise bad_request(f"'{field}' is a required property", param=field,
                          code="missing_required_parameter")
    value = body[field]
    if not isinstance(value, types) or isinstance(value, bool):
        raise _type_error(field, desc)
    if isinstance(value, list) and route == "/v1/chat/completions":
        if not value:
            raise bad_request("'messages' must not be empty", param="messages",
                              code="invalid_value")
        if not all(isinstance(m, dict) for m in value):
            raise _type_error("messages", desc)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _type_error("stream", "a boolean")
    if "stream_options" in body and body["stream_options"] is not None and not isinstance(
        body["stream_options"], dict
    ):
        raise _type_error("stream_options", "an object")
    target = aliases.get(model, model)
    if target != model:
        body["model"] = target
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return ParsedRequest(route=route, body=body, raw=raw, model=target,
                         requested_model=model, stream=stream)
