"""Who may use the API port: keys, scopes, the ``[api] auth`` mode, and slowing guessers.

Theory of operation
-------------------
An aiohttp middleware in front of every route.  It finds the key in
``Authorization: Bearer <key>`` or ``x-api-key: <key>`` (Anthropic's
header), looks its id up in the replicated key table the snapshot carries
(:class:`KeyRing`, rebuilt only when the table changes) and checks the
secret in constant time (:func:`swarmd.core.keys.check_secret`).  Each
route needs one scope (:func:`scope_of`): health and version checks need
none, model lists any valid key, usage and metrics ``read``, the client
routes ``inference`` (the key's model
globs are checked by the proxy once it knows the model, see
:func:`check_model`), key and model management ``admin``.

Modes (``[api] auth``): ``"required"`` -- every route but the open ones
needs a key; ``"loopback-open"`` (the default) -- a request from 127.0.0.1
or ::1 without a key is let through as the node's own user, anything else
needs a key; ``"off"`` -- no checks (a warning at start when the port is
not loopback).  A swarmd key (``sk-swarm-...``) that is presented is always
checked, so budgets and usage apply to it even from loopback; from loopback
in ``loopback-open`` any other value (the placeholder an SDK insists on) is
read as no key.

Errors come in the caller's API's own shape (:func:`error_response`):
OpenAI's for ``/v1/*``, Anthropic's for ``/v1/messages``, Ollama's for
``/api/*``: 401 for a missing, unknown, expired or revoked key, 403 for a
key outside its scope.  Failed attempts are counted per source address;
past :data:`FREE_FAILURES` in a minute each further one waits
``50 ms * 2**n`` (at most :data:`MAX_DELAY` s) before its 401, so guessing
is slow and a client with a typo is not locked out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from swarmd.core.keys import (
    KEY_PREFIX,
    KEYS_TABLE,
    KeyInfo,
    check_secret,
    key_id_of,
    parse_key,
)
from swarmd.core.snapshot import Snapshot
from swarmd.metrics import RequestMetrics

log = logging.getLogger("swarmd.auth")

__all__ = ["AUTH_MODES", "Auth", "KeyRing", "Principal", "check_model", "error_response",
           "scope_of"]

AUTH_MODES = ("required", "loopback-open", "off")
Principal = dict[str, Any]
#: Where the middleware leaves the caller: ``request.get(PRINCIPAL_KEY)`` is a
#: Principal (``key_id``, ``user``, ``project``, ``key``: the KeyInfo) or None.
PRINCIPAL_KEY = web.RequestKey("swarmd.principal", dict)
FREE_FAILURES = 5
MAX_DELAY = 2.0
_TRACKED = 10_000
LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})

OPEN_ROUTES = frozenset({("GET", "/health"), ("GET", "/ready"), ("GET", "/"), ("HEAD", "/"),
                         ("GET", "/api/version")})
#: Model lists: any scope may read them (an inference client lists models first).
LIST_PREFIXES = ("/v1/models", "/api/tags", "/api/ps", "/api/show")
READ_PREFIXES = ("/metrics", "/v1/usage")
ADMIN_PREFIXES = ("/v1/keys", "/v1/budgets", "/api/pull", "/api/delete", "/api/copy", "/api/create",
                  "/api/push")


def scope_of(method: str, path: str) -> str | None:
    """The scope a route needs (None: open to anyone)."""
    if (method, path) in OPEN_ROUTES:
        return None
    if path.startswith(ADMIN_PREFIXES):
        return "admin"
    if path.startswith(LIST_PREFIXES):
        return "list"
    if path.startswith(READ_PREFIXES):
        return "read"
    return "inference"


def principal_of(info: KeyInfo) -> Principal:
    return {"key_id": info.id, "user": info.user, "project": info.project, "key": info}


def check_model(principal: Mapping[str, Any], model: str) -> str | None:
    """None if the caller may use ``model``, else the reason (for a 403)."""
    info = principal.get("key")
    if isinstance(info, KeyInfo) and not info.allows_model(model):
        return (f"key {info.prefix}... may not use model {model!r} "
                f"(allowed: {', '.join(info.models)})")
    return None


class KeyRing:
    """The live keys of the latest snapshot, parsed once per table change."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot
        self._table: object = None
        self._keys: dict[str, KeyInfo] = {}

    def keys(self) -> dict[str, KeyInfo]:
        table = self._snapshot().tables.get(KEYS_TABLE)
        if table is not self._table:
            keys: dict[str, KeyInfo] = {}
            for kid, e in (table or {}).items():
                if e.value is not None:
                    info = parse_key(kid, e.value)
                    if info is not None:
                        keys[kid] = info
            self._table, self._keys = table, keys
        return self._keys

    def lookup(self, presented: str, wall: float) -> KeyInfo | None:
        kid = key_id_of(presented)
        if kid is None:
            return None
        info = self.keys().get(kid)
        if info is None or not check_secret(info, presented) or info.expired(wall):
            return None
        return info


def presented_key(request: web.Request) -> str | None:
    h = request.headers.get("Authorization", "")
    if h[:7].lower() == "bearer ":
        return h[7:].strip() or None
    k = request.headers.get("x-api-key", "").strip()
    return k or None


def error_response(path: str, status: int, message: str, code: str) -> web.Response:
    """An auth error in the shape of the API the caller speaks."""
    if path.startswith("/api/") or path == "/":
        body: dict[str, Any] = {"error": message}
    elif path.startswith("/v1/messages"):
        body = {"type": "error", "error": {
            "type": "authentication_error" if status == 401 else "permission_error",
            "message": message}}
    else:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                          "code": code}}
    headers = {"WWW-Authenticate": 'Bearer realm="swarmd"'} if status == 401 else {}
    return web.Response(status=status, body=json.dumps(body).encode(),
                        content_type="application/json", headers=headers)


class Auth:
    """The middleware and its state (one per API app)."""

    def __init__(self, mode: str, snapshot: Callable[[], Snapshot],
                 wall: Callable[[], float] = time.time,
                 loopback: frozenset[str] = LOOPBACK,
                 metrics: RequestMetrics | None = None) -> None:
        if mode not in AUTH_MODES:
            raise ValueError(f"auth mode must be one of {', '.join(AUTH_MODES)}")
        self.mode = mode
        self.loopback = loopback  # addresses counted as this machine (tests change it)
        self.metrics = metrics
        self.ring = KeyRing(snapshot)
        self._wall = wall
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.stats = {"ok": 0, "open": 0, "missing": 0, "invalid": 0, "forbidden": 0,
                      "delayed": 0}

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if self.mode == "off":
            return await handler(request)
        scope = scope_of(request.method, request.path)
        presented = presented_key(request)
        local = request.remote in self.loopback
        if (presented is not None and self.mode == "loopback-open" and local
                and not presented.startswith(KEY_PREFIX)):
            # SDKs insist on some key; from loopback a placeholder ("x",
            # "ollama", "sk-ant-...") that is no swarmd key means "no key".
            presented = None
        if presented is None:
            if scope is None or (self.mode == "loopback-open" and local):
                self.stats["open"] += 1
                return await handler(request)
            self.stats["missing"] += 1
            self._count(401)
            return error_response(request.path, 401,
                                  "an API key is required (Authorization: Bearer sk-swarm-...)",
                                  "missing_api_key")
        info = self.ring.lookup(presented, self._wall())
        if info is None:
            self.stats["invalid"] += 1
            self._count(401)
            await self._slow_down(request.remote or "?")
            return error_response(request.path, 401, "the API key is not valid "
                                  "(unknown, revoked or expired)", "invalid_api_key")
        if scope is not None and scope != "list" and not info.allows_scope(scope):
            self.stats["forbidden"] += 1
            self._count(403)
            return error_response(request.path, 403,
                                  f"key {info.prefix}... lacks the {scope!r} scope "
                                  f"(it has: {', '.join(info.scopes)})", "insufficient_scope")
        self.stats["ok"] += 1
        request[PRINCIPAL_KEY] = principal_of(info)
        return await handler(request)

    def _count(self, status: int) -> None:
        if self.metrics is not None:
            self.metrics.auth_failures.labels(str(status)).inc()

    async def _slow_down(self, source: str) -> None:
        now = time.monotonic()
        start, n = self._failures.pop(source, (now, 0))
        if now - start > 60.0:
            start, n = now, 0
        n += 1
        self._failures[source] = (start, n)
        while len(self._failures) > _TRACKED:
            self._failures.popitem(last=False)
        if n > FREE_FAILURES:
            self.stats["delayed"] += 1
            await asyncio.sleep(min(MAX_DELAY, 0.05 * 2 ** (n - FREE_FAILURES - 1)))
