"""Checks on an incoming OpenAI request body, before any routing.

What routing needs is checked -- JSON object (whatever the Content-Type
said), ``model`` a string, the route's required input present with a
plausible type, ``stream`` a boolean -- and so are the types and ranges of
the common sampling fields (:data:`FIELDS`: ``max_tokens``,
``max_completion_tokens``, ``temperature``, ``top_p``, ``n``, ``stop``,
``seed``, ``stream_options``, penalties), as OpenAI checks them, so a bad
value gets a 400 naming the parameter before any engine sees it (an engine
would answer with its own 500, or run away on ``max_tokens: -1``).
Everything else (tools, response_format, logprobs, unknown fields) is the
engine's business and passes through.  The body bytes are forwarded
unchanged, except when ``model`` names an alias: then the body is
re-serialised with only ``model`` replaced (key order and values kept).

Embeddings ``input`` may be a string, an array of strings, an array of
token ids or an array of token-id arrays, as OpenAI accepts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _int_range(lo: int, hi: int | None) -> Callable[[str, Any], None]:
    def check(param: str, v: Any) -> None:
        if not _is_int(v):
            raise _type_error(param, "an integer")
        if v < lo or (hi is not None and v > hi):
            want = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise bad_request(f"'{param}' must be {want}, got {v}", param=param,
                              code="invalid_value")
    return check


def _num_range(lo: float, hi: float) -> Callable[[str, Any], None]:
    def check(param: str, v: Any) -> None:
        if not _is_num(v):
            raise _type_error(param, "a number")
        if not lo <= v <= hi:
            raise bad_request(f"'{param}' must be between {lo:g} and {hi:g}, got {v}",
                              param=param, code="invalid_value")
    return check


def _check_stop(param: str, v: Any) -> None:
    if isinstance(v, str):
        return
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _type_error(param, "a string or an array of strings")
    if len(v) > 16:
        raise bad_request(f"'{param}' holds at most 16 sequences", param=param,
                          code="invalid_value")


def _check_seed(param: str, v: Any) -> None:
    if not _is_int(v):
        raise _type_error(param, "an integer")


def _check_stream_options(param: str, v: Any) -> None:
    if not isinstance(v, dict):
        raise _type_error(param, "an object")
    iu = v.get("include_usage")
    if iu is not None and not isinstance(iu, bool):
        raise _type_error("stream_options.include_usage", "a boolean")


#: Field -> check (null always passes: "not set").  Ranges are OpenAI's.
FIELDS: dict[str, Callable[[str, Any], None]] = {
    "max_tokens": _int_range(1, None),
    "max_completion_tokens": _int_range(1, None),
    "temperature": _num_range(0.0, 2.0),
    "top_p": _num_range(0.0, 1.0),
    "n": _int_range(1, 128),
    "stop": _check_stop,
    "seed": _check_seed,
    "stream_options": _check_stream_options,
    "presence_penalty": _num_range(-2.0, 2.0),
    "frequency_penalty": _num_range(-2.0, 2.0),
}


def _check_embedding_input(value: Any) -> None:
    """A string, strings, token ids, or arrays of token ids (OpenAI's forms)."""
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise _type_error("input", "a non-empty string or array")
    if all(isinstance(x, str) for x in value):
        return
    if all(_is_int(x) for x in value):
        return
    if all(isinstance(x, list) and x and all(_is_int(t) for t in x) for x in value):
        return
    raise _type_error("input", "a string, an array of strings, an array of token ids, "
                               "or an array of token-id arrays")


def parse_request(route: str, raw: bytes, aliases: Mapping[str, str]) -> ParsedRequest:
    """Validate ``raw`` for ``route``; ApiError(400) if it will not do."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", code="invalid_json")
    return _parse(route, body, raw, aliases)


def parse_doc(route: str, body: dict[str, Any], aliases: Mapping[str, str]) -> ParsedRequest:
    """As :func:`parse_request` for a body already parsed (translated APIs)."""
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", code="invalid_json")
    return _parse(route, body, None, aliases)


def _parse(route: str, body: dict[str, Any], raw: bytes | None,
           aliases: Mapping[str, str]) -> ParsedRequest:
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
    if route == "/v1/embeddings":
        _check_embedding_input(value)
    elif not isinstance(value, types) or isinstance(value, bool):
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
    for name, check in FIELDS.items():
        v = body.get(name)
        if v is not None:
            check(name, v)
    target = aliases.get(model, model)
    if target != model:
        body["model"] = target
        raw = None
    if raw is None:
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return ParsedRequest(route=route, body=body, raw=raw, model=target,
                         requested_model=model, stream=stream)
