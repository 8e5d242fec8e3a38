"""The data-plane client: the proxy's Forwarder, and verified blob range reads.

Theory of operation
-------------------
One aiohttp session per peer, each with its own connection pool (warm
keep-alive TLS connections, :attr:`ClientLimits.keepalive` s, shorter than
the server's 75 s so the client rarely reuses a connection the server has
dropped).  The pool's connector checks every new connection right after
the TLS handshake and before a request byte is written: the peer must
prove the peer id we meant to reach (libp2p extension) and the admission
oracle must call it an admitted, alive member.  The handshake itself
already failed if the peer does not chain to the swarm CA (wrong secret).
Addresses come from the injected ``address_of(node_id)`` (the ``dp`` field
of the node's gossiped record) on every request, so a node that moved is
followed at once.

:meth:`DataPlaneClient.open` is the proxy's ``Forwarder.open``.  The
deadlines travel as relative seconds (protocol/dataplane.md) and apply
here too: connect + TLS within ``connect``, the answer head within
``connect + first_byte``, each chunk within ``idle``, all capped by the
total.  Every failure before the answer head is an ``UpstreamError`` with
the server's kind (or ``connect``/``timeout`` for our own), so the proxy's
rule -- retry elsewhere until the first byte -- holds.  A request that
fails on a reused connection before any answer (the server closed it while
idle) is sent once more on a fresh one.  Reading is pull-based: aiohttp
stops reading the socket when its buffer is full, so a slow client stops
the remote engine.  ``aclose()`` before the end drops the connection, which
cancels the remote handler and its engine request.

:meth:`DataPlaneClient.fetch_range` reads bytes ``[start, end)`` of a blob
on a connection of its own (:mod:`swarmd.dataplane.blobread`: TLS decrypts
straight into two reused buffers, hashed and written by a worker thread while
the other fills) into a file at the same offset, and raises
:class:`BlobError` unless exactly ``end - start`` bytes came whose SHA-256
is the expected one (the blob's own digest when the range is the whole
blob), so a truncated or altered stream is never taken for data.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from swarmd.api.upstream import Deadlines, ProxyRequest, UpstreamError
from swarmd.dataplane import wire
from swarmd.dataplane.blobread import Head, RangeReader, StreamFault
from swarmd.dataplane.certs import NodeCert
from swarmd.dataplane.tls import IsAdmitted, PeerCheck, PeerRefused, client_context
from swarmd.models.fsutil import pwrite_all

#: ``(host, port)`` of a node's data plane (its record's ``dp``), or None if unknown.
AddressOf = Callable[[str], "tuple[str, int] | None"]

_SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
#: Least seconds allowed for a new connection's TCP connect and TLS handshake.
HANDSHAKE_FLOOR = 30.0


@dataclass(frozen=True)
class ClientLimits:
    keepalive: float = 30.0  # s an idle pooled connection is kept (server: 75 s)
    per_peer: int = 512  # most connections open to one peer at once
    error_body: int = 64 * 1024  # bytes read of an error answer


class PeerRefusedError(aiohttp.ClientConnectionError):
    """The connection reached a peer we do not accept (not the one named, or not admitted)."""


class PlaneUnreachable(UpstreamError):
    """This node could not reach a peer's data plane at all (no address, refused
    connection, failed TLS or identity check): no byte of the request was sent,
    so another path to the same engine may be tried (the libp2p fallback)."""

    def __init__(self, message: str) -> None:
        super().__init__("connect", message)


class BlobError(Exception):
    """A blob range read failed or did not verify; ``reason`` says which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        # refused|connect|timeout|not_found|range|incomplete|bad_answer|truncated|altered|io
        self.reason = reason


@dataclass(frozen=True)
class FetchResult:
    nbytes: int
    sha256: str
    seconds: float


class _PeerConnector(aiohttp.TCPConnector):
    """A pool to one peer that checks each new connection before use."""

    def __init__(self, expect: str, check: PeerCheck, **kw: Any) -> None:
        super().__init__(**kw)
        self._expect = expect
        self._check = check

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
        proto = await super()._create_connection(req, traces, timeout)
        transport = proto.transport
        try:
            self._check.admit(transport, self._expect)
        except PeerRefused as exc:
            if transport is not None:
                transport.abort()
            raise PeerRefusedError(str(exc)) from None
        return proto


class _DpResponse:
    """An engine's answer relayed over the data plane (UpstreamResponse)."""

    def __init__(self, resp: aiohttp.ClientResponse, deadlines: Deadlines) -> None:
        self._resp = resp
        self._deadlines = deadlines
        self.status = resp.status
        self.headers = tuple(wire.relayed_headers(resp.headers.items()))
        self._done = False

    @property
    def content(self) -> aiohttp.StreamReader:
        """The body's stream (a watcher may ``set_exception`` on it to abandon it)."""
        return self._resp.content

    async def read(self) -> bytes:
        if self._done:
            return b""
        try:
            async with asyncio.timeout(self._deadlines.cap(self._deadlines.idle)):
                data = await self._resp.content.readany()
        except TimeoutError:
            raise UpstreamError("timeout", "the remote node went silent (idle timeout)") \
                from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError("upstream", f"the remote answer broke: {exc}") from None
        if not data:
            self._done = True
        return data

    async def aclose(self) -> None:
        if self._done:
            self._resp.release()
        else:
            self._resp.close()  # drops the connection: the remote handler is cancelled


class DataPlaneClient:
    """Pooled, identity-checked connections to other nodes' data planes.

    Implements the proxy's ``Forwarder`` (:meth:`open`)."""

    def __init__(self, cert: NodeCert, is_admitted: IsAdmitted, address_of: AddressOf,
                 limits: ClientLimits | None = None) -> None:
        self.cert = cert
        self.check = PeerCheck(is_admitted)
        self.address_of = address_of
        self.limits = limits or ClientLimits()
        self._ctx = client_context(cert)
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        #: Hashes and writes blob ranges (off the event loop, in order per read).
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="swarmd-dp-fetch")
        #: One writer at a time per file: streams of one pull write the same
        #: file, and two buffered writes to one file contend on its inode lock
        #: in the kernel, which spins (measured with perf: 13% of the writing
        #: threads' CPU in rwsem_spin_on_owner); a Python lock sleeps instead.
        self._write_locks: weakref.WeakValueDictionary[str, threading.Lock] = \
            weakref.WeakValueDictionary()
        self.stats = {"requests": 0, "stale_retries": 0, "errors": 0, "blob_reads": 0,
                      "blob_bytes": 0}

    # -- pools ------------------------------------------------------------------------

    def _session(self, node_id: str) -> aiohttp.ClientSession:
        s = self._sessions.get(node_id)
        if s is None or s.closed:
            conn = _PeerConnector(node_id, self.check, ssl=self._ctx,
                                  limit=self.limits.per_peer, limit_per_host=0,
                                  keepalive_timeout=self.limits.keepalive)
            s = aiohttp.ClientSession(connector=conn, auto_decompress=False,
                                      skip_auto_headers=_SKIP_AUTO,
                                      timeout=aiohttp.ClientTimeout(total=None))
            self._sessions[node_id] = s
        return s

    def _url(self, node_id: str, path: str) -> URL:
        addr = self.address_of(node_id)
        if addr is None:
            raise PlaneUnreachable(f"no data-plane address known for {node_id}")
        if not self.check.is_admitted(node_id):
            raise UpstreamError("unavailable", f"{node_id} is not an admitted, alive member")
        host, port = addr
        return URL.build(scheme="https", host=f"[{host}]" if ":" in host else host, port=port,
                         path=path, encoded=True)

    async def forget(self, node_id: str) -> None:
        """Close the pool to ``node_id`` (it left, or was declared dead)."""
        s = self._sessions.pop(node_id, None)
        if s is not None:
            await s.close()

    async def prune(self, keep: set[str]) -> None:
        """Close the pools to every node not in ``keep``."""
        for node_id in [n for n in self._sessions if n not in keep]:
            await self.forget(node_id)

    async def close(self) -> None:
        for node_id in list(self._sessions):
            await self.forget(node_id)
        self._pool.shutdown(wait=False)

    def pooled(self, node_id: str) -> int:
        """Connections open to ``node_id`` now (idle and in use)."""
        s = self._sessions.get(node_id)
        if s is None or s.closed:
            return 0
        conn = s.connector
        assert isinstance(conn, _PeerConnector)
        return sum(len(v) for v in conn._conns.values()) + len(conn._acquired)

    async def ping(self, node_id: str, within: float = 5.0) -> float:
        """Round trip to ``node_id`` in seconds (also warms a pooled connection)."""
        url = self._url(node_id, wire.PING_PATH)
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(within):
                async with self._session(node_id).get(url) as resp:
                    await resp.read()
                    if resp.status != 204 or resp.headers.get(wire.H_NODE) != node_id:
                        raise UpstreamError("upstream", f"bad ping answer {resp.status}")
        except TimeoutError:
            raise UpstreamError("timeout", f"ping {node_id} timed out") from None
        except aiohttp.ClientError as exc:
            raise _connect_error(node_id, exc) from None
        return time.monotonic() - t0

    async def remove_model(self, node_id: str, name: str, within: float = 30.0
                           ) -> tuple[int, dict[str, Any]]:
        """Ask ``node_id`` to remove model ``name`` from its store: (status, answer)."""
        try:
            url = self._url(node_id, wire.MODEL_RM_PATH)
            async with asyncio.timeout(within):
                async with self._session(node_id).post(url, json={"name": name}) as resp:
                    raw = await resp.content.read(self.limits.error_body)
                    if wire.H_ERROR in resp.headers:
                        err = wire.decode_error(resp.headers, raw)
                        return resp.status, {"error": err.message}
                    doc = json.loads(raw or b"{}")
                    return resp.status, doc if isinstance(doc, dict) else {}
        except UpstreamError as exc:
            return 503, {"error": exc.message}
        except TimeoutError:
            return 504, {"error": f"{node_id[-8:]} did not answer in time"}
        except (aiohttp.ClientError, ValueError) as exc:
            return 502, {"error": f"{type(exc).__name__}: {exc}"}

    # -- forwarding ----------------------------------------------------------------------

    async def open(self, node_id: str, engine_id: str, req: ProxyRequest,
                   deadlines: Deadlines) -> _DpResponse:
        """Run ``req`` on ``engine_id`` of ``node_id``; the answer head is in."""
        self.stats["requests"] += 1
        left = deadlines.left()
        if left <= 0:
            raise UpstreamError("timeout", "request deadline passed")
        method, path, headers = wire.encode_forward(wire.ForwardHead(
            route=req.route, engine=engine_id, model=req.model, request_id=req.request_id,
            headers=req.headers, timeout=left, first_byte=deadlines.first_byte,
            idle=deadlines.idle, method=req.method))
        url = self._url(node_id, path)
        session = self._session(node_id)
        for attempt in range(2):
            # TCP connect + TLS handshake: at least HANDSHAKE_FLOOR s, since a burst
            # of new connections (500 streams at once) queues handshakes on a busy
            # CPU; a dead peer is cut off by membership (the forwarder's death
            # watch) long before that, and a refused connection fails at once.
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=deadlines.cap(max(deadlines.connect, HANDSHAKE_FLOOR)))
            try:
                async with asyncio.timeout(deadlines.cap(max(deadlines.connect, HANDSHAKE_FLOOR)
                                                         + deadlines.first_byte)):
                    resp = await session.request(method, url, data=req.body, headers=headers,
                                                 timeout=timeout, allow_redirects=False)
                    if wire.H_ERROR in resp.headers:
                        try:
                            body = await resp.content.read(self.limits.error_body)
                        finally:
                            resp.release()
                        err = wire.decode_error(resp.headers, body)
                        raise UpstreamError(wire.CLIENT_KIND.get(err.kind, "upstream"),
                                            f"{node_id[-8:]}: {err.message}",
                                            retry_after=err.retry_after, status=err.status)
            except TimeoutError:
                self.stats["errors"] += 1
                raise UpstreamError("timeout", f"no answer from {node_id} in time") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 0 and not isinstance(exc, aiohttp.ClientConnectorError) \
                        and deadlines.left() > 0:
                    self.stats["stale_retries"] += 1
                    continue  # a pooled connection the server had closed: once more
                self.stats["errors"] += 1
                raise _connect_error(node_id, exc) from None
            except aiohttp.ClientError as exc:
                self.stats["errors"] += 1
                raise _connect_error(node_id, exc) from None
            return _DpResponse(resp, deadlines)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- blobs ------------------------------------------------------------------------------

    async def fetch_object(self, node_id: str, digest: str, *, limit: int = 1 << 20,
                           within: float = 10.0) -> bytes:
        """A whole small object (a manifest) by sha256 hex ``digest``, verified;
        at most ``limit`` bytes.  Raises BlobError."""
        try:
            url = self._url(node_id, wire.blob_path(digest))
        except UpstreamError as exc:
            raise BlobError("connect", exc.message) from None
        try:
            async with asyncio.timeout(within):
                async with self._session(node_id).get(url) as resp:
                    if wire.H_ERROR in resp.headers:
                        err = wire.decode_error(resp.headers,
                                                await resp.content.read(self.limits.error_body))
                        raise BlobError(err.kind if err.kind in ("refused", "not_found")
                                        else "bad_answer", err.message)
                    if resp.status not in (200, 206):
                        raise BlobError("bad_answer", f"status {resp.status}")
                    if (resp.content_length or 0) > limit:
                        raise BlobError("bad_answer", f"object of {resp.content_length} "
                                        f"bytes, over the {limit} limit")
                    data = await resp.content.read(limit + 1)
        except TimeoutError:
            raise BlobError("timeout", f"object {digest[:12]}: no answer in time") from None
        except aiohttp.ClientError as exc:
            raise BlobError("connect", f"{type(exc).__name__}: {exc}") from None
        if len(data) > limit:
            raise BlobError("bad_answer", f"object over the {limit} limit")
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobError("altered", f"object {digest[:12]} does not hash to its digest")
        self.stats["blob_reads"] += 1
        self.stats["blob_bytes"] += len(data)
        return data

    async def have(self, node_id: str, digest: str, *, within: float = 5.0) -> wire.Have:
        """Which chunks of blob ``digest`` ``node_id`` holds, and which other members
        asked it about that blob lately (``GET /dp/1/have/<hex>``, pooled).
        Raises BlobError (``not_found`` when it holds none of it)."""
        try:
            url = self._url(node_id, wire.have_path(digest))
        except UpstreamError as exc:
            raise BlobError("connect", exc.message) from None
        try:
            async with asyncio.timeout(within):
                async with self._session(node_id).get(url) as resp:
                    raw = await resp.content.read(wire.MAX_HAVE_CHUNKS // 4 + 4096)
                    if wire.H_ERROR in resp.headers:
                        err = wire.decode_error(resp.headers, raw)
                        raise BlobError(err.kind if err.kind in ("refused", "not_found")
                                        else "bad_answer", err.message)
                    if resp.status != 200:
                        raise BlobError("bad_answer", f"status {resp.status}")
        except TimeoutError:
            raise BlobError("timeout", f"have {digest[:12]}: no answer in time") from None
        except aiohttp.ClientError as exc:
            raise BlobError("connect", f"{type(exc).__name__}: {exc}") from None
        try:
            return wire.decode_have(raw)
        except wire.WireError as exc:
            raise BlobError("bad_answer", str(exc)) from None

    async def fetch_range(self, node_id: str, digest: str, start: int, end: int,
                          dest: Path, *, expect: str | None = None, within: float = 600.0,
                          idle: float = 30.0) -> FetchResult:
        """Bytes ``[start, end)`` of blob ``digest`` from ``node_id``, written into
        ``dest`` at offset ``start`` (created if missing, never truncated), verified.

        ``expect`` is the hex SHA-256 of exactly these bytes; None means the range
        is the whole blob and must hash to ``digest``.  ``within`` bounds the whole
        read, ``idle`` each wait for bytes (seconds).  Raises BlobError; on error
        the bytes written at that range are garbage, but no write of this call
        lands after it returns or raises (unless cancelled twice)."""
        rng = wire.range_header(start, end)
        path = wire.blob_path(digest)
        addr = self.address_of(node_id)
        if addr is None:
            raise BlobError("connect", f"no data-plane address known for {node_id}")
        if not self.check.is_admitted(node_id):
            raise BlobError("refused", f"{node_id} is not an admitted, alive member")
        host, port = addr
        want = expect or digest
        t0 = time.monotonic()
        h = hashlib.sha256()
        got = 0
        loop = asyncio.get_running_loop()
        reader = RangeReader()
        transport: asyncio.Transport | None = None
        flushing: concurrent.futures.Future[None] | None = None
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT, 0o644)
        wlock = self._write_locks.get(str(dest))
        if wlock is None:
            wlock = self._write_locks[str(dest)] = threading.Lock()
        try:
            async with asyncio.timeout(within):
                try:
                    transport, _ = await loop.create_connection(  # type: ignore[assignment]
                        lambda: reader, host, port, ssl=self._ctx,
                        ssl_handshake_timeout=min(within, 10.0))
                except (OSError, ssl.SSLError) as exc:
                    raise BlobError("connect", f"{type(exc).__name__}: {exc}") from None
                try:
                    self.check.admit(transport, node_id)
                except PeerRefused as exc:
                    raise BlobError("refused", str(exc)) from None
                hhost = f"[{host}]" if ":" in host else host
                transport.write(f"GET {path} HTTP/1.1\r\nHost: {hhost}:{port}\r\n"
                                f"Range: {rng}\r\nConnection: close\r\n\r\n".encode())
                async with asyncio.timeout(idle):
                    head = await reader.wait_head()
                total = await self._check_blob_head(reader, head, start, end, idle)
                if expect is None and (start, end) != (0, total):
                    raise BlobError("bad_answer", "a partial range needs an expected digest "
                                    "(expect=)")
                held = -1
                while True:
                    async with asyncio.timeout(idle):
                        piece = await reader.next_piece()
                    if flushing is not None:  # one flush at a time: the hash is ordered
                        await asyncio.wrap_future(flushing)
                        flushing = None
                        reader.release(held)
                    if piece is None:
                        break
                    held, view = piece
                    flushing = self._pool.submit(_flush, fd, h, view, start + got, wlock)
                    got += len(view)
        except TimeoutError:
            raise BlobError("timeout", f"range {rng} of {digest[:12]}: no progress in time") \
                from None
        except StreamFault as exc:
            raise BlobError(exc.reason, f"{exc} (after {got} bytes)") from None
        finally:
            if transport is not None:
                transport.abort()
            if flushing is not None and not flushing.done():
                # The worker may still be writing into our range: wait for it,
                # so a retry of the range by another stream cannot be
                # overwritten by this late write (a verified chunk gone bad).
                try:
                    await asyncio.shield(asyncio.wrap_future(flushing))
                except Exception:  # noqa: BLE001 -- the error that got us here wins
                    pass
                except BaseException:  # cancelled again: close once the worker is done
                    flushing.add_done_callback(lambda _f: os.close(fd))
                    raise
                os.close(fd)
            else:
                os.close(fd)
            reader.discard()
        if got != end - start:
            raise BlobError("truncated", f"got {got} of {end - start} bytes")
        if h.hexdigest() != want:
            raise BlobError("altered", f"range {rng} hashes to {h.hexdigest()[:16]}, "
                            f"expected {want[:16]}")
        self.stats["blob_reads"] += 1
        self.stats["blob_bytes"] += got
        return FetchResult(got, want, time.monotonic() - t0)

    async def _check_blob_head(self, reader: RangeReader, head: Head, start: int, end: int,
                               idle: float) -> int:
        """The blob's total size, once the answer head says it is our range."""
        if wire.H_ERROR in head.headers:
            body = bytearray()
            while len(body) <= self.limits.error_body:
                async with asyncio.timeout(idle):
                    piece = await reader.next_piece()
                if piece is None:
                    break
                body += piece[1]
                reader.release(piece[0])
            err = wire.decode_error(head.headers, bytes(body))
            reason = err.kind if err.kind in ("refused", "not_found", "range", "incomplete") \
                else "bad_answer"
            raise BlobError(reason, err.message)
        if head.status != 206:
            raise BlobError("bad_answer", f"status {head.status}, expected 206")
        try:
            a, b, total = wire.parse_content_range(head.headers.get("Content-Range", ""))
        except wire.WireError as exc:
            raise BlobError("bad_answer", str(exc)) from None
        if (a, b) != (start, end) or head.content_length != end - start:
            raise BlobError("bad_answer", f"answered bytes {a}-{b} ({head.content_length}), "
                            f"asked {start}-{end}")
        return total


def _flush(fd: int, h: Any, data: memoryview, offset: int, lock: threading.Lock) -> None:
    """Hash and write one piece (in a worker thread; the write under the file's lock)."""
    h.update(data)
    try:
        with lock:
            pwrite_all(fd, data, offset)
    except OSError as exc:
        raise BlobError("io", f"cannot write the range: {exc.strerror}") from None


def _connect_error(node_id: str, exc: BaseException) -> UpstreamError:
    if isinstance(exc, PeerRefusedError):
        return PlaneUnreachable(f"refused {node_id}: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return PlaneUnreachable(f"TLS with {node_id} failed (another swarm?): {exc}")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return UpstreamError("timeout", f"connecting to {node_id} timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return PlaneUnreachable(f"cannot reach {node_id}: {type(exc).__name__}: {exc}")
    return UpstreamError("connect", f"cannot reach {node_id}: {type(exc).__name__}: {exc}")


#: The name the proxy knows it by.
DataPlaneForwarder = DataPlaneClient
