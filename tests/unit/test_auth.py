"""swarmd.api.auth: modes, key checks, scopes, error shapes, slowing guessers."""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from swarmd.api.auth import LOOPBACK, PRINCIPAL_KEY, Auth, check_model, scope_of
from swarmd.core.hlc import Stamp
from swarmd.core.keys import KeyInfo, key_value, make_key, parse_key
from swarmd.core.replica import Entry


def _key(**kw: Any) -> tuple[str, str, dict[str, Any]]:
    kid, key = make_key(os.urandom(6), os.urandom(32))
    args: dict[str, Any] = {"name": "t", "scopes": ["inference"], **kw}
    return kid, key, key_value(key_id=kid, key=key, **args)


class Keys:
    def __init__(self) -> None:
        self.table: dict[str, Entry] = {}

    def add(self, kid: str, value: dict[str, Any] | None) -> None:
        self.table = {**self.table, kid: Entry(kid, Stamp(1, 0, "n"), value)}

    def snapshot(self) -> Any:
        return SimpleNamespace(tables={"keys": self.table})


async def _app(auth: Auth) -> TestClient:
    async def ok(request: web.Request) -> web.Response:
        p = request.get(PRINCIPAL_KEY) or {}
        return web.json_response({"key_id": p.get("key_id")})

    app = web.Application(middlewares=[auth.middleware])
    for path in ("/v1/models", "/v1/chat/completions", "/v1/keys", "/api/tags", "/api/chat",
                 "/v1/messages", "/health", "/v1/usage"):
        app.router.add_route("*", path, ok)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_scopes_of_routes() -> None:
    assert scope_of("GET", "/health") is None and scope_of("HEAD", "/") is None
    assert scope_of("GET", "/v1/models") == "list" and scope_of("GET", "/api/tags") == "list"
    assert scope_of("POST", "/v1/chat/completions") == "inference"
    assert scope_of("POST", "/api/generate") == "inference"
    assert scope_of("POST", "/v1/keys") == "admin" and scope_of("POST", "/api/pull") == "admin"
    assert scope_of("GET", "/v1/usage") == "read"


@pytest.mark.parametrize("mode", ["required", "loopback-open"])
def test_required_from_afar_401_in_each_apis_shape(mode: str) -> None:
    keys = Keys()

    async def main() -> None:
        c = await _app(Auth(mode, keys.snapshot, loopback=frozenset()))  # nobody is local
        try:
            r = await c.post("/v1/chat/completions")
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "missing_api_key"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            r = await c.post("/api/chat")
            assert r.status == 401 and isinstance((await r.json())["error"], str)
            r = await c.post("/v1/messages")
            doc = await r.json()
            assert r.status == 401 and doc["error"]["type"] == "authentication_error"
            assert (await c.get("/health")).status == 200
        finally:
            await c.close()

    _run(main())


def test_loopback_open_lets_local_callers_in_and_ignores_placeholders() -> None:
    keys = Keys()
    kid, key, value = _key()
    keys.add(kid, value)

    async def main() -> None:
        c = await _app(Auth("loopback-open", keys.snapshot))
        try:
            r = await c.post("/v1/chat/completions")
            assert r.status == 200 and (await r.json())["key_id"] is None
            r = await c.post("/v1/chat/completions", headers={"x-api-key": "sk-ant-dummy"})
            assert r.status == 200  # an SDK's placeholder, from loopback
            r = await c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"})
            assert (await r.json())["key_id"] == kid  # a real key is still read
            bad = key[:-4] + "AAAA"
            r = await c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {bad}"})
            assert r.status == 401  # a swarmd key that is wrong is refused even locally
        finally:
            await c.close()

    _run(main())


def test_required_checks_scopes_revocation_and_expiry() -> None:
    keys = Keys()
    inf_id, inf, v1 = _key()
    read_id, read, v2 = _key(scopes=["read"])
    adm_id, adm, v3 = _key(scopes=["admin"])
    old_id, old, v4 = _key(expires=time.time() - 1)
    for kid, v in ((inf_id, v1), (read_id, v2), (adm_id, v3), (old_id, v4)):
        keys.add(kid, v)

    async def main() -> None:
        c = await _app(Auth("required", keys.snapshot))
        try:
            def h(k: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {k}"}
            assert (await c.post("/v1/chat/completions", headers=h(inf))).status == 200
            assert (await c.get("/v1/models", headers=h(read))).status == 200
            r = await c.post("/v1/chat/completions", headers=h(read))
            assert r.status == 403 and (await r.json())["error"]["code"] == "insufficient_scope"
            assert (await c.post("/v1/keys", headers=h(read))).status == 403
            assert (await c.post("/v1/keys", headers=h(inf))).status == 403
            assert (await c.post("/v1/keys", headers=h(adm))).status == 200
            assert (await c.get("/v1/usage", headers=h(adm))).status == 200
            assert (await c.get("/v1/models", headers={"x-api-key": inf})).status == 200
            assert (await c.get("/v1/models", headers=h(old))).status == 401  # expired
            keys.add(inf_id, None)  # revoked: the next request sees the new table
            assert (await c.post("/v1/chat/completions", headers=h(inf))).status == 401
            assert (await c.post("/v1/chat/completions")).status == 401
        finally:
            await c.close()

    _run(main())


def test_failed_attempts_from_one_source_are_slowed() -> None:
    keys = Keys()

    async def main() -> None:
        auth = Auth("required", keys.snapshot)
        c = await _app(auth)
        try:
            bad = {"Authorization": "Bearer sk-swarm-0123456789ab_" + "A" * 43}
            t0 = time.monotonic()
            for _ in range(5):
                assert (await c.get("/v1/models", headers=bad)).status == 401
            fast = time.monotonic() - t0
            t0 = time.monotonic()
            for _ in range(4):
                assert (await c.get("/v1/models", headers=bad)).status == 401
            slow = time.monotonic() - t0
            assert auth.stats["delayed"] == 4
            assert slow >= 0.05 + 0.1 + 0.2 + 0.4 - 0.01 and slow > fast
        finally:
            await c.close()

    _run(main())


def test_model_globs() -> None:
    kid, key, v = _key(models=["llama-*", "qwen2.5:7b"])
    info = parse_key(kid, v)
    assert isinstance(info, KeyInfo)
    p = {"key": info}
    assert check_model(p, "llama-3-8b") is None and check_model(p, "qwen2.5:7b") is None
    assert "may not use" in (check_model(p, "gemma3") or "")
    assert check_model({}, "anything") is None
    assert "127.0.0.1" in LOOPBACK
