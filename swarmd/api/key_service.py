"""Making, listing, revoking and rotating API keys (asyncio side, both front doors).

The control socket (``swarmctl keys``) and the API port's admin routes
(``/v1/keys``, admin scope) both call :class:`KeyService`.  A write goes to
the trio side through ``write`` (the node machine's replicated ``keys``
table: persisted on this node at once, spread to every node by gossip);
reads come from the latest snapshot.  The key itself exists only in the
answer to :meth:`create` / :meth:`rotate`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from swarmd.core.keys import KEYS_TABLE, KeyInfo, key_value, make_key, parse_key
from swarmd.core.replica import Entry
from swarmd.core.snapshot import Snapshot

Write = Callable[[str, str, Any], Awaitable[Entry]]

#: Most escrow holders recorded for a key's budget (the alive nodes at creation).
MAX_HOLDERS = 64


class KeyError_(ValueError):
    """A bad request to the key service (HTTP 400/404 with this message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class KeyService:
    def __init__(self, snapshot: Callable[[], Snapshot], write: Write, *,
                 wall: Callable[[], float] = time.time,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._snapshot = snapshot
        self._write = write
        self._wall = wall
        self._random = random_bytes

    def _infos(self) -> dict[str, KeyInfo]:
        out = {}
        for kid, e in self._snapshot().tables.get(KEYS_TABLE, {}).items():
            if e.value is not None:
                info = parse_key(kid, e.value)
                if info is not None:
                    out[kid] = info
        return out

    def list(self) -> list[dict[str, Any]]:
        wall = self._wall()
        rows = []
        for info in sorted(self._infos().values(), key=lambda i: (i.created, i.id)):
            d = info.public()
            d["expired"] = info.expired(wall)
            rows.append(d)
        return rows

    async def create(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Make a key from a JSON spec (see protocol/control-api.md ``POST /v1/keys``)."""
        args = _spec_args(spec)
        snap = self._snapshot()
        holders = sorted(n.node_id for n in snap.alive())[:MAX_HOLDERS] or [snap.node_id]
        kid, key = make_key(self._random(6), self._random(32))
        wall = self._wall()
        expires_in = args.pop("expires_in", 0.0)
        try:
            value = key_value(key_id=kid, key=key, created=wall,
                              expires=wall + expires_in if expires_in else 0.0,
                              created_on=snap.node_id, holders=holders, **args)
        except ValueError as exc:
            raise KeyError_(400, str(exc)) from None
        await self._write(KEYS_TABLE, kid, value)
        info = parse_key(kid, value)
        assert info is not None
        return {**info.public(), "key": key}

    async def revoke(self, key_id: str) -> dict[str, Any]:
        table = self._snapshot().tables.get(KEYS_TABLE, {})
        e = table.get(key_id)
        if e is None:
            raise KeyError_(404, f"no key {key_id!r}")
        if e.value is not None:
            await self._write(KEYS_TABLE, key_id, None)
        return {"id": key_id, "revoked": True}

    async def rotate(self, key_id: str) -> dict[str, Any]:
        """A new key with the same settings; the old one is revoked."""
        info = self._infos().get(key_id)
        if info is None:
            raise KeyError_(404, f"no live key {key_id!r}")
        spec = {k: v for k, v in info.public().items()
                if k in ("name", "scopes", "models", "user", "project", "rpm", "tpm",
                         "budget_tokens_day", "budget_usd_day", "budget_usd_month")}
        if info.expires:
            spec["expires_in"] = max(1.0, info.expires - self._wall())
        out = await self.create(spec)
        await self.revoke(key_id)
        out["rotated_from"] = key_id
        return out


_INT_FIELDS = ("rpm", "tpm", "budget_tokens_day")
_FLOAT_FIELDS = ("budget_usd_day", "budget_usd_month", "expires_in")
_STR_FIELDS = ("name", "user", "project")


def _spec_args(spec: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise KeyError_(400, "body must be a JSON object")
    known = {*_INT_FIELDS, *_FLOAT_FIELDS, *_STR_FIELDS, "scopes", "models"}
    for k in spec:
        if k not in known:
            raise KeyError_(400, f"unknown field {k!r} (known: {', '.join(sorted(known))})")
    args: dict[str, Any] = {}
    for k in _STR_FIELDS:
        if k in spec:
            if not isinstance(spec[k], str):
                raise KeyError_(400, f"{k!r} must be a string")
            args[k] = spec[k]
    for k in _INT_FIELDS:
        if k in spec:
            v = spec[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise KeyError_(400, f"{k!r} must be a non-negative integer")
            args[k] = v
    for k in _FLOAT_FIELDS:
        if k in spec:
            v = spec[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise KeyError_(400, f"{k!r} must be a non-negative number")
            args[k] = float(v)
    for k in ("scopes", "models"):
        if k in spec:
            v = spec[k]
            if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
                raise KeyError_(400, f"{k!r} must be a list of strings")
            args[k] = list(v)
    args.setdefault("scopes", ["inference"])
    if "name" not in args:
        raise KeyError_(400, "'name' is required")
    return args


def register_key_routes(app: web.Application, service: Callable[[], KeyService | None],
                        prefix: str = "/v1") -> None:
    """``GET/POST {prefix}/keys``, ``DELETE {prefix}/keys/{id}``, ``POST .../{id}/rotate``.

    Used by the control socket and (behind the admin scope) the API port.
    Errors are OpenAI-shaped.
    """

    async def call(fn: Callable[[KeyService], Awaitable[Any]], status: int = 200
                   ) -> web.Response:
        s = service()
        if s is None:
            return _error(503, "keys are not available on this node yet")
        try:
            return web.json_response(await fn(s), status=status)
        except KeyError_ as exc:
            return _error(exc.status, str(exc))

    async def list_keys(request: web.Request) -> web.Response:
        async def go(s: KeyService) -> Any:
            return {"keys": s.list()}
        return await call(go)

    async def create(request: web.Request) -> web.Response:
        try:
            spec = await request.json()
        except ValueError:
            return _error(400, "body is not valid JSON")
        return await call(lambda s: s.create(spec), 201)

    async def revoke(request: web.Request) -> web.Response:
        return await call(lambda s: s.revoke(request.match_info["id"]))

    async def rotate(request: web.Request) -> web.Response:
        return await call(lambda s: s.rotate(request.match_info["id"]), 201)

    app.router.add_get(f"{prefix}/keys", list_keys)
    app.router.add_post(f"{prefix}/keys", create)
    app.router.add_delete(f"{prefix}/keys/{{id}}", revoke)
    app.router.add_post(f"{prefix}/keys/{{id}}/rotate", rotate)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                        "param": None, "code": None}}, status=status)


# -- user and project budgets ---------------------------------------------------------


class BudgetService:
    """``/v1/budgets``: a user's or project's token and USD limits (replicated table)."""

    def __init__(self, snapshot: Callable[[], Snapshot], write: Write) -> None:
        self._snapshot = snapshot
        self._write = write

    def list(self) -> list[dict[str, Any]]:
        from swarmd.core.escrow import BUDGETS_TABLE, parse_budget

        rows = []
        for k, e in sorted(self._snapshot().tables.get(BUDGETS_TABLE, {}).items()):
            spec = parse_budget(k, e.value) if e.value is not None else None
            if spec is not None:
                rows.append({"scope": spec.scope, "name": spec.name, **spec.value()})
        return rows

    async def set(self, body: Mapping[str, Any]) -> dict[str, Any]:
        from swarmd.core.escrow import BUDGETS_TABLE, BudgetSpec, parse_budget

        if not isinstance(body, Mapping):
            raise KeyError_(400, "body must be a JSON object")
        scope, name = body.get("scope"), body.get("name")
        if scope not in ("user", "project") or not isinstance(name, str) or not name:
            raise KeyError_(400, '"scope" (user or project) and "name" are required')
        snap = self._snapshot()
        holders = sorted(n.node_id for n in snap.alive())[:MAX_HOLDERS] or [snap.node_id]
        value = {k: body[k] for k in ("tokens_day", "usd_day", "usd_month", "warn")
                 if k in body}
        value["holders"] = holders
        spec = parse_budget(f"{scope}:{name}", value)
        if spec is None:
            raise KeyError_(400, "tokens_day must be a non-negative integer; usd_day and "
                                 "usd_month non-negative numbers; warn a fraction in [0, 1]")
        assert isinstance(spec, BudgetSpec)
        await self._write(BUDGETS_TABLE, spec.key, spec.value())
        return {"scope": scope, "name": name, **spec.value()}

    async def delete(self, scope: str, name: str) -> dict[str, Any]:
        from swarmd.core.escrow import BUDGETS_TABLE

        key = f"{scope}:{name}"
        e = self._snapshot().tables.get(BUDGETS_TABLE, {}).get(key)
        if e is None or e.value is None:
            raise KeyError_(404, f"no budget for {scope} {name!r}")
        await self._write(BUDGETS_TABLE, key, None)
        return {"scope": scope, "name": name, "removed": True}


def register_budget_routes(app: web.Application, service: Callable[[], BudgetService | None],
                           prefix: str = "/v1") -> None:
    async def call(fn: Callable[[BudgetService], Awaitable[Any]]) -> web.Response:
        s = service()
        if s is None:
            return _error(503, "budgets are not available on this node yet")
        try:
            return web.json_response(await fn(s))
        except KeyError_ as exc:
            return _error(exc.status, str(exc))

    async def list_(request: web.Request) -> web.Response:
        async def go(s: BudgetService) -> Any:
            return {"budgets": s.list()}
        return await call(go)

    async def put(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not valid JSON")
        return await call(lambda s: s.set(body))

    async def delete(request: web.Request) -> web.Response:
        return await call(lambda s: s.delete(request.match_info["scope"],
                                             request.match_info["name"]))

    app.router.add_get(f"{prefix}/budgets", list_)
    app.router.add_post(f"{prefix}/budgets", put)
    app.router.add_delete(f"{prefix}/budgets/{{scope}}/{{name}}", delete)
