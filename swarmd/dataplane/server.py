"""The data-plane server: forwarded requests to this node's engines, and blob ranges.

Theory of operation
-------------------
An aiohttp application served over mutually authenticated TLS
(:mod:`swarmd.dataplane.tls`) on its own port.  Connections pass a gate
before HTTP sees them: asyncio hands the connection to the gate once the
TLS handshake (which already refused peers without the swarm secret) is
done; the gate derives the peer id from the certificate and asks the
admission oracle, and aborts the connection if either fails, so no request
of a stranger, a forged identity or a dead member is ever parsed.  Every
request asks the oracle again (a member can be declared dead while its
connection lives) and is refused with ``403 Swarmd-Error: refused``.

Forward (``/dp/1/forward/<route>``): the head is decoded
(:func:`swarmd.dataplane.wire.decode_forward`), the request runs through the
injected ``open_local`` (the proxy's :meth:`Proxy.open_local`) with the
caller's relative deadlines turned into this node's :class:`Deadlines`, and
the engine's answer streams back chunk by chunk.  ``await resp.write`` waits
for the socket (aiohttp drains past its high-water mark), so a slow reader
stops our reads from the engine: backpressure end to end.  A failure before
the answer head becomes an error answer with its kind (the caller may retry
elsewhere); a failure after it aborts the connection (the caller sees a
truncated body).  When the caller disconnects, aiohttp cancels the handler
(``handler_cancellation``) and ``aclose()`` cancels the engine request.

Blob (``/dp/1/blobs/<sha256>``): the injected ``blob_path`` names a complete,
verified file, or a blob this node is still pulling (a :class:`PartialFile`:
only ranges inside chunks it has verified are served, any other is ``409
incomplete``), or None (404).  ``/dp/1/have/<sha256>`` answers which chunks
this node holds and which other members asked about that blob in the last
:data:`INTEREST_TTL` s (a range read or a ``have`` counts): the tracker that
lets pullers started together find and feed each other.  One byte range per request, read with
``os.pread`` in :data:`BLOB_CHUNK` pieces in a worker thread (the next piece
read while one is sent) and written with drain, so memory does not grow
with the file.  Over TLS there is no
zero-copy: Python's ``ssl`` encrypts in user space (asyncio's own sendfile
fallback for TLS moves 16 KiB per thread hop, which is slower than this).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiohttp import web

from swarmd.api.upstream import Deadlines, ProxyRequest, UpstreamError, UpstreamResponse
from swarmd.dataplane import wire
from swarmd.dataplane.certs import NodeCert
from swarmd.dataplane.tls import IsAdmitted, PeerCheck, PeerRefused, server_context

log = logging.getLogger("swarmd.dataplane")

#: The proxy's Proxy.open_local: one request on one of this node's engines.
OpenLocal = Callable[[str, ProxyRequest, Deadlines], Awaitable[UpstreamResponse]]


class PartialFile(Protocol):
    """A blob this node is still fetching (the store's ``PartialBlob``): its
    final size, its file, and which chunks are verified and written."""

    size: int
    part_path: Path

    @property
    def chunk_size(self) -> int: ...
    def covers(self, start: int, end: int) -> bool: ...
    def have_chunks(self) -> frozenset[int]: ...
    def coming_chunks(self) -> frozenset[int]: ...


#: What this node serves under a sha256 hex digest: a complete, verified file,
#: a blob being fetched, or None.
BlobPath = Callable[[str], "Path | PartialFile | None"]

#: Removes a model from this node's store: name -> (HTTP status, JSON answer).
RemoveModel = Callable[[str], Awaitable["tuple[int, dict[str, object]]"]]

#: Bytes read from a blob file per write.
BLOB_CHUNK = 1024 * 1024
_RANGE = re.compile(r"^bytes=(\d{1,19})-(\d{0,19})$")
#: Seconds a member that asked about a blob stays listed in ``have`` answers.
INTEREST_TTL = 60.0
#: Blobs tracked at once (the least recently asked about is forgotten first).
INTEREST_BLOBS = 256


@dataclass(frozen=True)
class ServerLimits:
    connect: float = 5.0  # s: this node connecting to its own engine
    first_byte: float = 300.0  # s: defaults when the caller sends 0
    idle: float = 120.0
    total: float = 1800.0
    handshake: float = 10.0  # s: TLS handshake
    keepalive: float = 75.0  # s: an idle connection is closed (client pools keep 30 s)
    max_body: int = 16 * 1024 * 1024  # bytes of a forwarded request body
    backlog: int = 4096  # connections queued for accept ([dataplane] backlog)


class _Gate(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol; lets only admitted peers through."""

    def __init__(self, inner: asyncio.Protocol, server: DataPlaneServer) -> None:
        self._inner: asyncio.Protocol | None = inner
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        try:
            self._server.check.admit(transport)
        except PeerRefused as exc:
            self._server.stats["refused_connections"] += 1
            log.info("data-plane connection refused", extra={"error": str(exc)})
            self._inner = None
            transport.abort()  # type: ignore[attr-defined]
            return
        assert self._inner is not None
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


def _error(err: wire.PlaneError, node: str) -> web.Response:
    status, headers, body = wire.encode_error(err)
    resp = web.Response(status=status, body=body)
    for k, v in headers:
        resp.headers[k] = v
    resp.headers[wire.H_NODE] = node
    return resp


@dataclass
class DataPlaneServer:
    """Serves the data plane for one node; ``await start()``, ``await stop()``."""

    cert: NodeCert
    is_admitted: IsAdmitted
    open_local: OpenLocal | None = None
    blob_path: BlobPath | None = None
    remove_model: RemoveModel | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    stats: dict[str, int] = field(default_factory=lambda: {
        "refused_connections": 0, "refused_requests": 0, "forwarded": 0, "completed": 0,
        "errors": 0, "broken": 0, "cancelled": 0, "blob_reads": 0, "blob_bytes": 0,
        "partial_reads": 0, "partial_bytes": 0, "incomplete": 0, "have": 0,
    })

    def __post_init__(self) -> None:
        self.check = PeerCheck(self.is_admitted)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.port = 0
        #: blob hex -> {peer id: last time it asked}, both in least-recent-first order.
        self._interest: OrderedDict[str, OrderedDict[str, float]] = OrderedDict()

    def _note_interest(self, digest: str, peer: str) -> None:
        now = time.monotonic()
        peers = self._interest.pop(digest, None) or OrderedDict()
        peers.pop(peer, None)
        peers[peer] = now
        while len(peers) > 4 * wire.MAX_HAVE_PEERS or (
                peers and next(iter(peers.values())) < now - INTEREST_TTL):
            peers.popitem(last=False)
        self._interest[digest] = peers
        while len(self._interest) > INTEREST_BLOBS:
            self._interest.popitem(last=False)

    def interested(self, digest: str, but: str = "") -> tuple[str, ...]:
        """Members that asked about ``digest`` in the last INTEREST_TTL s, newest first."""
        cutoff = time.monotonic() - INTEREST_TTL
        peers: dict[str, float] = self._interest.get(digest) or {}
        out = [p for p, t in reversed(peers.items()) if t >= cutoff and p != but
               and self.is_admitted(p)]
        return tuple(out[:wire.MAX_HAVE_PEERS])

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body)
        app.router.add_route("*", wire.FORWARD_PREFIX + "/{route:.+}", self._forward)
        app.router.add_get(wire.BLOB_PREFIX + "{digest}", self._blob)
        app.router.add_get(wire.HAVE_PREFIX + "{digest}", self._have)
        app.router.add_get(wire.PING_PATH, self._ping)
        app.router.add_post(wire.MODEL_RM_PATH, self._model_rm)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    sock: socket.socket | None = None) -> int:
        """Listen (on ``sock`` if given); returns the bound port."""
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None,
                                     keepalive_timeout=self.limits.keepalive)
        await self._runner.setup()
        proto = self._runner.server
        assert proto is not None
        loop = asyncio.get_running_loop()
        ctx = server_context(self.cert)
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="swarmd-dp-blob")

        def factory() -> asyncio.Protocol:
            return _Gate(proto(), self)

        if sock is not None:
            self._server = await loop.create_server(
                factory, sock=sock, ssl=ctx, ssl_handshake_timeout=self.limits.handshake)
        else:
            self._server = await loop.create_server(
                factory, host, port, ssl=ctx, ssl_handshake_timeout=self.limits.handshake,
                reuse_address=True, backlog=self.limits.backlog)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._server is not None:
            await self._server.wait_closed()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self._server = self._runner = self._pool = None

    # -- handlers -----------------------------------------------------------------------

    def _admit(self, request: web.Request) -> web.Response | None:
        try:
            self.check.admit(request.transport)
        except PeerRefused as exc:
            self.stats["refused_requests"] += 1
            resp = _error(wire.PlaneError("refused", str(exc)), self.cert.peer_id)
            resp.force_close()
            return resp
        return None

    async def _ping(self, request: web.Request) -> web.Response:
        refused = self._admit(request)
        if refused is not None:
            return refused
        return web.Response(status=204, headers={wire.H_NODE: self.cert.peer_id})

    async def _model_rm(self, request: web.Request) -> web.Response:
        refused = self._admit(request)
        if refused is not None:
            return refused
        node = self.cert.peer_id
        try:
            body = await request.json()
            name = body.get("name") if isinstance(body, dict) else None
        except ValueError:
            name = None
        if not isinstance(name, str) or not name or len(name) > wire.MAX_FIELD:
            return _error(wire.PlaneError("bad_request", 'body must be {"name": NAME}'), node)
        if self.remove_model is None:
            return _error(wire.PlaneError("not_found", "this node has no model store"), node)
        status, doc = await self.remove_model(name)
        return web.json_response(doc, status=status, headers={wire.H_NODE: node})

    async def _not_found(self, request: web.Request) -> web.Response:
        refused = self._admit(request)
        return refused or _error(wire.PlaneError("not_found", f"no route {request.path}"),
                                 self.cert.peer_id)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        refused = self._admit(request)
        if refused is not None:
            return refused
        node = self.cert.peer_id
        try:
            head = wire.decode_forward(request.method, request.path, request.headers.items())
        except wire.WireError as exc:
            return _error(wire.PlaneError("bad_request", str(exc)), node)
        if self.open_local is None:
            return _error(wire.PlaneError("unavailable", "no engines on this node"), node)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(wire.PlaneError("bad_request", "request body too large"), node)
        self.stats["forwarded"] += 1
        lim = self.limits
        deadlines = Deadlines(lim.connect, head.first_byte or lim.first_byte,
                              head.idle or lim.idle,
                              time.monotonic() + (head.timeout or lim.total))
        preq = ProxyRequest(route=head.route, body=body, model=head.model,
                            headers=head.headers, method=head.method,
                            request_id=head.request_id)
        try:
            up = await self.open_local(head.engine, preq, deadlines)
        except UpstreamError as exc:
            self.stats["errors"] += 1
            return _error(wire.PlaneError(exc.kind if exc.kind in wire.ERROR_STATUS
                                          else "upstream", exc.message, exc.retry_after,
                                          exc.status), node)
        except Exception as exc:  # a bug below us: a clear error, never a bare 500
            self.stats["errors"] += 1
            log.exception("forwarded request failed")
            return _error(wire.PlaneError("internal", f"{type(exc).__name__}: {exc}"), node)
        try:
            return await self._relay(request, up)
        except asyncio.CancelledError:
            self.stats["cancelled"] += 1
            raise
        finally:
            await up.aclose()

    async def _relay(self, request: web.Request, up: UpstreamResponse) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status)
        for k, v in wire.relayed_headers(up.headers):
            resp.headers.add(k, v)
        resp.headers[wire.H_NODE] = self.cert.peer_id
        await resp.prepare(request)
        try:
            while True:
                chunk = await up.read()
                if not chunk:
                    break
                await resp.write(chunk)
        except UpstreamError as exc:
            # After the head: the caller can only see a broken body.
            self.stats["broken"] += 1
            log.info("engine failed mid-forward", extra={"kind": exc.kind,
                                                         "error": exc.message})
            if request.transport is not None:
                request.transport.abort()  # type: ignore[attr-defined]
            return resp
        await resp.write_eof()
        self.stats["completed"] += 1
        return resp

    def _asker(self, request: web.Request) -> str:
        try:
            return self.check.peer_id(request.transport)
        except PeerRefused:  # pragma: no cover - _admit passed on this connection
            return ""

    def _find(self, request: web.Request, parse: Callable[[str], str], stat: str = ""
              ) -> tuple[str, str, str, Path | PartialFile] | web.Response:
        """The opening the blob routes share: admit the peer, parse the digest
        out of the path, note the asker's interest (``stat`` counted then), and
        find what this node serves of it.  (node, digest, asker, served), or the
        error answer."""
        refused = self._admit(request)
        if refused is not None:
            return refused
        node = self.cert.peer_id
        try:
            digest = parse(request.path)
        except wire.WireError as exc:
            return _error(wire.PlaneError("bad_request", str(exc)), node)
        asker = self._asker(request)
        self._note_interest(digest, asker)
        if stat:
            self.stats[stat] += 1
        served = self.blob_path(digest) if self.blob_path is not None else None
        if served is None:
            return _error(wire.PlaneError("not_found", f"no blob {digest}"), node)
        return node, digest, asker, served

    async def _have(self, request: web.Request) -> web.Response:
        found = self._find(request, wire.parse_have_path, "have")
        if isinstance(found, web.Response):
            return found
        node, digest, asker, served = found
        peers = self.interested(digest, but=asker)
        if isinstance(served, Path):
            try:
                size = os.stat(served).st_size
            except OSError as exc:
                return _error(wire.PlaneError("not_found", f"blob {digest}: {exc.strerror}"),
                              node)
            have = wire.Have(size, wire.HAVE_CHUNK, None, peers)
        else:
            have = wire.Have(served.size, served.chunk_size, served.have_chunks(), peers,
                             served.coming_chunks())
        return web.Response(status=200, body=wire.encode_have(have),
                            content_type="application/json", headers={wire.H_NODE: node})

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        found = self._find(request, wire.parse_blob_path)
        if isinstance(found, web.Response):
            return found
        node, digest, _, served = found
        pool = self._pool
        assert pool is not None
        partial = None if isinstance(served, Path) else served
        file = served if isinstance(served, Path) else served.part_path
        try:
            fd = os.open(file, os.O_RDONLY)
        except OSError as exc:
            again = self.blob_path(digest) if partial is not None and self.blob_path else None
            if not isinstance(again, Path):  # not the partial just finished into blobs/
                return _error(wire.PlaneError("not_found", f"blob {digest}: {exc.strerror}"),
                              node)
            partial, fd = None, os.open(again, os.O_RDONLY)
        pending: concurrent.futures.Future[bytes] | None = None
        try:
            size = os.fstat(fd).st_size if partial is None else partial.size
            rng = _parse_range(request.headers.get("Range"), size)
            if rng is None:
                return _error(wire.PlaneError("range", f"range not inside {size} bytes"), node)
            start, end = rng
            if partial is not None and not partial.covers(start, end):
                self.stats["incomplete"] += 1
                return _error(wire.PlaneError(
                    "incomplete", f"blob {digest[:12]}: bytes {start}-{end - 1} touch a chunk "
                    "this node has not verified yet"), node)
            resp = web.StreamResponse(status=206)
            resp.content_length = end - start
            resp.headers["Content-Type"] = "application/octet-stream"
            resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            resp.headers[wire.H_NODE] = node
            await resp.prepare(request)
            self.stats["blob_reads"] += 1
            pos = start
            pending = pool.submit(os.pread, fd, min(BLOB_CHUNK, end - pos), pos)
            while pending is not None:
                data = await asyncio.wrap_future(pending)
                pending = None
                if not data:  # the file shrank under us: a broken body, never padding
                    if request.transport is not None:
                        request.transport.abort()  # type: ignore[attr-defined]
                    return resp
                pos += len(data)
                if pos < end:  # the next piece is read while this one is sent
                    pending = pool.submit(os.pread, fd, min(BLOB_CHUNK, end - pos), pos)
                await resp.write(data)
                self.stats["blob_bytes"] += len(data)
                if partial is not None:
                    self.stats["partial_bytes"] += len(data)
            if partial is not None:
                self.stats["partial_reads"] += 1
            await resp.write_eof()
            return resp
        finally:
            if pending is not None and not pending.done():
                # Cancelled mid-read: close only once the worker is done with fd.
                pending.add_done_callback(lambda _f: os.close(fd))
            else:
                os.close(fd)


def _parse_range(raw: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single ``bytes=a-b`` / ``bytes=a-`` range (none: whole file)."""
    if raw is None:
        return (0, size) if size > 0 else None
    m = _RANGE.match(raw.strip())
    if not m:
        return None
    start = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    end = min(end, size)
    if start >= end:
        return None
    return start, end

