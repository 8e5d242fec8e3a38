"""OpenAI's Responses API: ``POST /v1/responses``, ``GET`` / ``DELETE /v1/responses/{id}``.

Theory of operation
-------------------
A request is mapped to chat completions (:mod:`swarmd.api.translate.responses`),
routed through ``Proxy.exchange`` and the answer mapped back, streamed or not.

Stored responses: unless ``store`` is false, the node that answered keeps
the Response and its conversation (the chat messages it was given, plus its
output) in memory for :data:`STORE_TTL_S` seconds, at most
:data:`STORE_MAX` of them (oldest dropped first).  The id names that node:
``resp_<24 hex>_<node id>``.  A request with ``previous_response_id`` on any
node reads the node id out of the id; this node's store answers at once,
another node's is fetched over HTTP from the API address it gossips
(``record.api``) at ``GET /swarmd/responses/{id}`` (this module serves it),
within :data:`FETCH_TIMEOUT_S`.  Unknown, expired or unreachable: 404
``previous_response_not_found``.  ``instructions`` are not carried over,
as with OpenAI.

Native pass-through: an engine whose capabilities for the model include
:data:`RESPONSES_CAPABILITY` serves the Responses API itself; a request that
does not use swarmd's store (``store: false`` and no
``previous_response_id``) goes to such an engine as is (``/v1/responses``,
the model alias resolved) and its answer is relayed unchanged.  The router
still decides: the translated chat body travels with the native one, and
the engine kinds of which *every* engine serving the model says it serves
Responses get the native body (:func:`native_kinds`); any other engine gets
the translation.  A stored request is always translated, so its id names
this node and a follow-up on any node finds it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

from swarmd.api import catalog
from swarmd.api.client_common import (
    ClientError,
    Exchanger,
    Native,
    StreamTranslator,
    answer_json,
    clock,
    engine_error,
    open_exchange,
    passthrough,
    read_all,
    read_body,
    relay_stream,
    request_id,
    routed_headers,
)
from swarmd.api.translate import responses as tr
from swarmd.api.translate.common import (
    JsonObj,
    TranslateError,
    answer_of,
    dumps,
    require_model,
    require_object,
)

#: The route, and the engine capability saying an engine serves it natively.
RESPONSES = "/v1/responses"
RESPONSES_CAPABILITY = "responses"
#: Seconds a stored response stays retrievable (and usable as previous_response_id).
STORE_TTL_S = 3600.0
#: Most responses one node keeps; past it the oldest are dropped.
STORE_MAX = 10_000
#: Seconds allowed to fetch a previous response from the node that stored it.
FETCH_TIMEOUT_S = 5.0


def new_id(node_id: str) -> str:
    return f"resp_{uuid.uuid4().hex[:24]}_{node_id}"


def owner_of(resp_id: str) -> str | None:
    """The node id a response id names, or None if it is not one of ours."""
    if not resp_id.startswith("resp_"):
        return None
    _hex, sep, node = resp_id[5:].partition("_")
    return node if sep and node else None


class ResponseStore:
    """Responses this node answered: id -> (expires at, response, conversation),
    each kept as its JSON encoding: a stored response is read rarely, and
    10,000 of them as bytes are a few objects for the garbage collector
    instead of hundreds of thousands (dicts and lists it would rescan)."""

    def __init__(self, ttl: float = STORE_TTL_S, max_items: int = STORE_MAX) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self._items: OrderedDict[str, tuple[float, bytes, bytes]] = OrderedDict()

    def put(self, resp_id: str, response: bytes, conversation: list[JsonObj],
            now: float) -> None:
        """Keep ``response`` (its JSON encoding) and the chat messages it was given."""
        self._items[resp_id] = (now + self.ttl, response, dumps(conversation))
        self._items.move_to_end(resp_id)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def raw(self, resp_id: str, now: float) -> tuple[bytes, bytes] | None:
        """The response's and its conversation's JSON, if kept and not expired."""
        item = self._items.get(resp_id)
        if item is None:
            return None
        if item[0] <= now:
            del self._items[resp_id]
            return None
        return item[1], item[2]

    def get(self, resp_id: str, now: float) -> tuple[JsonObj, list[JsonObj]] | None:
        found = self.raw(resp_id, now)
        return None if found is None else (json.loads(found[0]), json.loads(found[1]))

    def delete(self, resp_id: str) -> bool:
        return self._items.pop(resp_id, None) is not None

    def __len__(self) -> int:
        return len(self._items)


def error_response(err: ClientError) -> web.Response:
    return web.Response(status=err.status, content_type="application/json",
                        headers=err.headers(),
                        body=dumps(tr.error_body(err.message, status=err.status,
                                                 param=err.param, code=err.code)))


def _not_found(resp_id: str, param: str | None = None) -> ClientError:
    return ClientError(404, f"Response with id '{resp_id}' not found.", param,
                       "previous_response_not_found" if param else "not_found")


def native_kinds(snapshot: Any, model: str) -> frozenset[str]:
    """Engine kinds of which every engine serving ``model`` for chat says it serves
    the Responses API (an engine that says nothing does not)."""
    ok: dict[str, bool] = {}
    for e in catalog.engines_of(snapshot):
        if model in e.models and e.can(model, "chat"):
            says = RESPONSES_CAPABILITY in (e.caps_of(model) or ())
            ok[e.kind] = ok.get(e.kind, True) and says
    return frozenset(k for k, v in ok.items() if v)


def native_for(body: JsonObj, model: str, snapshot: Any) -> Native | None:
    """The pass-through alternative for ``body``, or None when it must be translated
    (it uses the store, or no engine serving the model serves Responses)."""
    if body.get("store") is not False or body.get("previous_response_id") is not None:
        return None
    kinds = native_kinds(snapshot, model)
    if not kinds:
        return None
    raw = dumps({**body, "model": model})
    return lambda kind: (RESPONSES, raw) if kind in kinds else None


def api_url_of(snapshot: Any, node_id: str) -> str | None:
    """``http://host:port`` of a node's API, from its gossiped record."""
    for n in snapshot.nodes:
        if n.node_id != node_id:
            continue
        listen = n.record.get("api") if isinstance(n.record, Mapping) else None
        if not isinstance(listen, str) or ":" not in listen:
            return None
        host, _, port = listen.rpartition(":")
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = next((a.split("/")[2] for a in n.addrs if a.startswith("/ip4/")), "")
        return f"http://{host}:{port}" if host else None
    return None


class ResponsesHandlers:
    def __init__(self, proxy: Exchanger, deps: Any) -> None:
        self.proxy = proxy
        self.deps = deps
        self.store = ResponseStore()
        self._http: aiohttp.ClientSession | None = None

    async def close(self, app: web.Application) -> None:
        if self._http is not None:
            await self._http.close()

    async def _fetch(self, resp_id: str) -> tuple[JsonObj, list[JsonObj]] | None:
        snap = self.deps.snapshot()
        owner = owner_of(resp_id)
        if owner is None:
            return None
        if owner == snap.node_id:
            return self.store.get(resp_id, time.monotonic())
        base = api_url_of(snap, owner)
        if base is None:
            return None
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            async with self._http.get(f"{base}/swarmd/responses/{resp_id}",
                                      timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)) as r:
                if r.status != 200:
                    return None
                doc = await r.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("response"), dict) \
                or not isinstance(doc.get("conversation"), list):
            return None
        return doc["response"], doc["conversation"]

    async def create(self, request: web.Request) -> web.StreamResponse:
        rid = request_id(request)
        try:
            body = require_object(await read_body(request, self.deps.api.max_body_bytes))
            asked = require_model(body)
            model = self.deps.routing.aliases.get(asked, asked)
            history: list[JsonObj] = []
            prev = body.get("previous_response_id")
            if prev is not None:
                if not isinstance(prev, str):
                    raise ClientError(400, "'previous_response_id' must be a string",
                                      "previous_response_id")
                found = await self._fetch(prev)
                if found is None:
                    raise _not_found(prev, "previous_response_id")
                history = tr.history_of(found[1], found[0])
            mapped = tr.chat_request(body, model, history)
            ex = await open_exchange(self.proxy, "/v1/chat/completions", mapped.body,
                                     request, rid,
                                     native_for(body, model, self.deps.snapshot()))
        except TranslateError as exc:
            return error_response(ClientError.of(exc))
        except ClientError as err:
            return error_response(err)
        if ex.route == RESPONSES:
            try:
                return await passthrough(request, ex, rid)
            finally:
                await ex.aclose()
        resp_id = new_id(self.deps.snapshot().node_id)
        created = int(clock()[1])
        store = body.get("store", True) is not False
        try:
            if ex.status >= 400:
                raw, _ = await read_all(ex)
                return error_response(engine_error(ex, raw))
            if mapped.stream:
                stream = tr.EventStream(body, resp_id, asked, created)

                def keep() -> None:
                    if store and stream.response_json is not None:
                        self.store.put(resp_id, stream.response_json, mapped.conversation,
                                       time.monotonic())

                def finish() -> bytes:
                    out = stream.finish()
                    keep()
                    return out

                def feed(data: bytes) -> bytes:
                    was = stream.ended
                    out = stream.feed(data)
                    if not was and stream.ended:
                        keep()
                    return out

                return await relay_stream(request, ex, rid, "text/event-stream",
                                          stream.start(),
                                          StreamTranslator(feed=feed, finish=finish,
                                                           fail=stream.fail,
                                                           ended=lambda: stream.ended))
            raw, _ = await read_all(ex)
            doc = tr.response_object(answer_of(answer_json(ex, raw)), body, resp_id, asked,
                                     created)
            encoded = dumps(doc)
            if store:
                self.store.put(resp_id, encoded, mapped.conversation, time.monotonic())
            return web.Response(body=encoded, content_type="application/json",
                                headers=routed_headers(ex, rid))
        except TranslateError as exc:
            return error_response(ClientError.of(exc))
        except ClientError as err:
            return error_response(err)
        finally:
            await ex.aclose()

    async def retrieve(self, request: web.Request) -> web.Response:
        resp_id = request.match_info["id"]
        if owner_of(resp_id) == self.deps.snapshot().node_id:
            mine = self.store.raw(resp_id, time.monotonic())
            if mine is None:
                return error_response(_not_found(resp_id))
            return web.Response(body=mine[0], content_type="application/json")
        found = await self._fetch(resp_id)
        if found is None:
            return error_response(_not_found(resp_id))
        return web.Response(body=dumps(found[0]), content_type="application/json")

    async def delete(self, request: web.Request) -> web.Response:
        resp_id = request.match_info["id"]
        if owner_of(resp_id) != self.deps.snapshot().node_id or not self.store.delete(resp_id):
            return error_response(_not_found(resp_id))
        return web.Response(body=dumps({"id": resp_id, "object": "response.deleted",
                                        "deleted": True}), content_type="application/json")

    async def internal(self, request: web.Request) -> web.Response:
        """``GET /swarmd/responses/{id}``: a stored response and its conversation
        (for the node a follow-up reached)."""
        found = self.store.raw(request.match_info["id"], time.monotonic())
        if found is None:
            return error_response(_not_found(request.match_info["id"]))
        return web.Response(body=b'{"response":' + found[0] + b',"conversation":' + found[1]
                            + b"}", content_type="application/json")


def register(app: web.Application, proxy: Exchanger, deps: Any) -> ResponsesHandlers:
    h = ResponsesHandlers(proxy, deps)
    app.router.add_post(RESPONSES, h.create)
    app.router.add_get("/v1/responses/{id}", h.retrieve)
    app.router.add_delete("/v1/responses/{id}", h.delete)
    app.router.add_get("/swarmd/responses/{id}", h.internal)
    app.on_cleanup.append(h.close)
    return h
