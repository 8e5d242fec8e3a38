"""Forwarding requests to engines on other nodes over ``/swarmd/forward/1.0.0``.

Theory of operation
-------------------
Frames and their order are in :mod:`swarmd.core.forward_wire` and
protocol/forward.md.  This module moves them over libp2p streams (trio) and
across the thread bridge to the HTTP side (asyncio).

Client (the node that got the HTTP request).  The API handler (asyncio)
calls :meth:`BridgedForwarder.open`; it crosses into trio once
(:meth:`Bridge.to_trio`) to run :meth:`ForwardClient.forward`, which takes
an idle stream to the peer from :class:`StreamPool` (or opens one: 4.5 ms
with py-libp2p, so streams are kept and reused for sequential requests),
writes Request + Body frames in one write, and pushes every frame it reads
into a bounded :class:`~swarmd.runtime.bridge.Channel`; the asyncio side
takes them in batches (one crossing per burst, not per chunk).  After End
or Error the stream goes back to the pool.  A pooled stream that fails
before any answer frame (the server closed it while idle) is replaced by a
fresh one once, silently.  Pooled streams older than ``pool_idle`` are
closed (the server drops its side after ``server_idle``, which is longer).

Cancellation: when the HTTP client goes away, the asyncio handler closes the
response, which cancels the trio task; it sends Cancel (best effort, 0.5 s)
and resets the stream, which is never reused.

Server (the node with the engine).  :meth:`ForwardServer.handle` serves one
request after another on a stream.  For each, it reads the Request and Body
frames (``frame`` deadline), then runs the request against the local engine
in the asyncio thread (:meth:`Bridge.to_asyncio` of a pump coroutine) while
a watcher task reads the stream for Cancel or a reset; either cancels the
pump, which closes the engine request.  The pump sends Head/Data/End/Error
items through a bounded channel (8 items); the trio side coalesces consecutive Data
into frames of up to 256 KiB and writes each batch with one write.

Backpressure: channels are bounded (``CHANNEL_ITEMS``), so a slow HTTP
client stops the client's stream reads, yamux's window (256 KiB) stops the
server's writes, the server's channel fills and its pump stops reading the
engine.  py-libp2p 0.8.1 gives up on a write after 5 s with a zero window,
so a reader stalled longer than that loses its request (a yamux limit).

Deadlines: stream open ``open``; the Request carries the client's remaining
total, first-byte and idle deadlines, which the server applies to its
engine call; the client applies the same ones to the frames it waits for.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from swarmd.api.upstream import Deadlines, ProxyRequest, UpstreamError
from swarmd.core import forward_wire as fw
from swarmd.core.error_kinds import from_wire, to_wire
from swarmd.runtime.bridge import Bridge, Channel, ChannelClosed

log = logging.getLogger("swarmd.forward")

PROTOCOL_ID = fw.PROTOCOL_ID
#: Items a cross-thread channel holds (each a frame, up to 256 KiB of data).
CHANNEL_ITEMS = 8
#: Bytes read from a stream at once.
READ_SIZE = 64 * 1024


class Stream(Protocol):
    """What we use of a libp2p INetStream."""

    async def read(self, n: int | None = None) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...
    async def reset(self) -> None: ...


class StreamOpener(Protocol):
    """P2PNode.open_stream."""

    async def open_stream(self, peer_id: str, protocol: str) -> Any: ...


@dataclass(frozen=True)
class ForwardTimeouts:
    open: float = 5.0  # open a new stream (dial + admission + negotiation if needed)
    frame: float = 10.0  # a request's frames, once started, must all arrive
    write: float = 10.0  # one write
    server_idle: float = 60.0  # server closes a kept stream idle this long
    pool_idle: float = 30.0  # client closes a pooled stream idle this long (< server_idle)
    cancel: float = 0.5  # best effort Cancel on a client disconnect
    first_byte: float = 300.0  # server defaults when the Request gives 0
    idle: float = 120.0
    total: float = 1800.0


class StreamEnded(Exception):
    """The stream ended (EOF or reset) before a whole frame arrived."""


async def _reset(stream: Any) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.reset()
        except Exception:
            pass


class FrameStream:
    """A stream with a frame decoder and deadlines on reads and writes."""

    def __init__(self, stream: Any, timeouts: ForwardTimeouts) -> None:
        self.stream = stream
        self.timeouts = timeouts
        self._decoder = fw.FrameDecoder()
        self._ready: deque[fw.Frame] = deque()
        self.broken = False
        self.last_used = trio.current_time()

    async def recv(self, within: float = math.inf) -> fw.Frame:
        """Next frame; TooSlowError after ``within`` s, StreamEnded at EOF/reset,
        ForwardWireError if malformed."""
        with trio.fail_after(max(within, 0.0)):
            while not self._ready:
                try:
                    data = await self.stream.read(READ_SIZE)
                except Exception as exc:
                    if isinstance(exc, fw.ForwardWireError):  # pragma: no cover
                        raise
                    raise StreamEnded(f"{type(exc).__name__}: {exc}") from None
                if not data:
                    raise StreamEnded("EOF")
                self._ready.extend(self._decoder.feed(data))
        return self._ready.popleft()

    async def send(self, frames: list[fw.Frame]) -> None:
        data = fw.encode_many(frames)
        try:
            with trio.fail_after(self.timeouts.write):
                await self.stream.write(data)
        except trio.TooSlowError:
            raise
        except Exception as exc:
            raise StreamEnded(f"write failed: {type(exc).__name__}: {exc}") from None
        self.last_used = trio.current_time()

    async def close(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            try:
                await self.stream.close()
            except Exception:
                pass

    async def reset(self) -> None:
        self.broken = True
        await _reset(self.stream)


# -- client side (trio) ---------------------------------------------------------------


class StreamPool:
    """Idle forward streams per peer, most recently used first."""

    def __init__(self, opener: StreamOpener, timeouts: ForwardTimeouts,
                 max_idle_per_peer: int = 8) -> None:
        self.opener = opener
        self.timeouts = timeouts
        self.max_idle = max_idle_per_peer
        self._idle: dict[str, list[FrameStream]] = {}
        self.stats = {"opened": 0, "reused": 0, "expired": 0, "discarded": 0}

    async def acquire(self, peer_id: str) -> tuple[FrameStream, bool]:
        """A stream to ``peer_id`` and whether it was reused."""
        now = trio.current_time()
        idle = self._idle.get(peer_id, [])
        while idle:
            fs = idle.pop()
            if now - fs.last_used < self.timeouts.pool_idle:
                self.stats["reused"] += 1
                return fs, True
            self.stats["expired"] += 1
            await fs.close()
        with trio.fail_after(self.timeouts.open):
            stream = await self.opener.open_stream(peer_id, PROTOCOL_ID)
        self.stats["opened"] += 1
        return FrameStream(stream, self.timeouts), False

    async def release(self, peer_id: str, fs: FrameStream) -> None:
        idle = self._idle.setdefault(peer_id, [])
        if fs.broken or len(idle) >= self.max_idle:
            await fs.close()
            return
        fs.last_used = trio.current_time()
        idle.append(fs)

    def idle_count(self, peer_id: str) -> int:
        return len(self._idle.get(peer_id, []))

    async def drop_peer(self, peer_id: str) -> None:
        for fs in self._idle.pop(peer_id, []):
            await fs.close()


class ForwardClient:
    """Runs forwarded requests on pooled streams (trio side)."""

    def __init__(self, opener: StreamOpener, timeouts: ForwardTimeouts | None = None,
                 max_idle_per_peer: int = 8) -> None:
        self.timeouts = timeouts or ForwardTimeouts()
        self.pool = StreamPool(opener, self.timeouts, max_idle_per_peer)
        self.stats = {"requests": 0, "stale_retries": 0, "cancelled": 0, "errors": 0}

    async def forward(self, peer_id: str, request: fw.Request, body: bytes,
                      sink: Channel[fw.Frame]) -> None:
        """Run one request; every answer frame goes to ``sink``, then it is closed.

        Failures become an Error frame in ``sink`` (never an exception), so
        the asyncio side always gets a terminal frame."""
        self.stats["requests"] += 1
        try:
            await self._forward(peer_id, request, body, sink)
        except (ChannelClosed, ConnectionError):
            pass  # the asyncio side went away (it aborted the channel)
        finally:
            sink.close()

    async def _forward(self, peer_id: str, request: fw.Request, body: bytes,
                       sink: Channel[fw.Frame]) -> None:
        frames: list[fw.Frame] = [request, *fw.data_frames(body, body=True, end=True)]
        t_total = request.timeout or self.timeouts.total
        deadline = trio.current_time() + t_total
        for attempt in range(2):
            try:
                fs, reused = await self.pool.acquire(peer_id)
            except trio.TooSlowError:
                await sink.send(fw.Error("timeout", f"opening a stream to {peer_id} timed out"))
                return
            except Exception as exc:
                await sink.send(fw.Error("connect", f"cannot open a stream to {peer_id}: {exc}"))
                return
            got_any = False
            try:
                await fs.send(frames)
                head = False
                while True:
                    wait = (request.idle or self.timeouts.idle) if head else (
                        request.first_byte or self.timeouts.first_byte)
                    frame = await fs.recv(min(wait, deadline - trio.current_time()))
                    got_any = True
                    if isinstance(frame, fw.Head) and not head:
                        head = True
                        await sink.send(frame)
                    elif isinstance(frame, fw.Data) and head:
                        await sink.send(frame)
                    elif isinstance(frame, fw.End) and head:
                        await sink.send(frame)
                        await self.pool.release(peer_id, fs)
                        return
                    elif isinstance(frame, fw.Error):
                        await sink.send(frame)
                        await self.pool.release(peer_id, fs)
                        return
                    else:
                        raise fw.ForwardWireError(f"unexpected {type(frame).__name__} frame")
            except trio.TooSlowError:
                await fs.reset()
                await sink.send(fw.Error("timeout", "the remote engine did not answer in time"))
                return
            except (StreamEnded, fw.ForwardWireError) as exc:
                await fs.reset()
                if reused and not got_any and attempt == 0:
                    self.stats["stale_retries"] += 1
                    continue  # a stale pooled stream: once more on a fresh one
                self.stats["errors"] += 1
                await sink.send(fw.Error("upstream", f"forward stream to {peer_id} broke: {exc}"))
                return
            except BaseException:
                # Cancelled (the HTTP client went away) or the sink was aborted.
                self.stats["cancelled"] += 1
                with trio.CancelScope(shield=True), trio.move_on_after(self.timeouts.cancel):
                    try:
                        await fs.stream.write(fw.encode(fw.Cancel()))
                    except Exception:
                        pass
                await fs.reset()
                raise


# -- the asyncio face of the client ------------------------------------------------------



def _upstream_error(err: fw.Error) -> UpstreamError:
    return UpstreamError(from_wire(err.code), err.message or err.code,
                         retry_after=err.retry_after, status=err.status)


# -- server side (trio) --------------------------------------------------------------------

#: Runs a request against a local engine; called in the asyncio thread.
LocalOpen = Callable[[str, ProxyRequest, Deadlines], Awaitable[Any]]



def _coalesce(batch: list[fw.Frame]) -> tuple[list[fw.Frame], bool]:
    """Merge consecutive Data items into frames of up to MAX_CHUNK bytes;
    also say whether the batch holds the terminal frame."""
    out: list[fw.Frame] = []
    buf = bytearray()
    terminal = False
    for item in batch:
        if isinstance(item, fw.Data):
            if buf and len(buf) + len(item.data) > fw.MAX_CHUNK:
                out.append(fw.Data(bytes(buf)))
                buf.clear()
            buf += item.data
            continue
        if buf:
            out.append(fw.Data(bytes(buf)))
            buf.clear()
        out.append(item)
        terminal = terminal or isinstance(item, fw.End | fw.Error)
    if buf:
        out.append(fw.Data(bytes(buf)))
    return out, terminal


@dataclass
class ForwardServer:
    """Serves ``/swarmd/forward/1.0.0``: ``handle(peer_id, stream)`` for P2PNode.set_handler."""

    bridge: Bridge
    local_open: LocalOpen
    timeouts: ForwardTimeouts = field(default_factory=ForwardTimeouts)
    max_body: int = 16 * 1024 * 1024
    stats: dict[str, int] = field(default_factory=lambda: {
        "requests": 0, "completed": 0, "errors": 0, "cancelled": 0, "malformed": 0,
        "idle_closed": 0,
    })

    async def handle(self, peer_id: str, stream: Any) -> None:
        fs = FrameStream(stream, self.timeouts)
        try:
            while True:
                try:
                    frame = await fs.recv(self.timeouts.server_idle)
                except trio.TooSlowError:
                    self.stats["idle_closed"] += 1
                    await fs.close()
                    return
                except StreamEnded:
                    await fs.close()
                    return
                if isinstance(frame, fw.Cancel):
                    continue  # a Cancel that crossed our End: nothing to cancel
                if not isinstance(frame, fw.Request):
                    raise fw.ForwardWireError(f"expected Request, got {type(frame).__name__}")
                body = await self._read_body(fs)
                if not await self._serve_one(fs, peer_id, frame, body):
                    await fs.reset()
                    return
        except (fw.ForwardWireError, trio.TooSlowError, StreamEnded) as exc:
            self.stats["malformed"] += 1
            log.info("forward stream dropped", extra={"peer": peer_id[-8:], "error": str(exc)})
            await fs.reset()

    async def _read_body(self, fs: FrameStream) -> bytes:
        parts: list[bytes] = []
        size = 0
        with trio.fail_after(self.timeouts.frame):
            while True:
                frame = await fs.recv()
                if not isinstance(frame, fw.Body):
                    raise fw.ForwardWireError(f"expected Body, got {type(frame).__name__}")
                size += len(frame.data)
                if size > self.max_body:
                    raise fw.ForwardWireError(f"request body over {self.max_body} bytes")
                parts.append(frame.data)
                if frame.end:
                    return b"".join(parts)

    async def _serve_one(self, fs: FrameStream, peer_id: str, req: fw.Request,
                         body: bytes) -> bool:
        """Serve one request; True if the stream can carry the next one."""
        self.stats["requests"] += 1
        chan: Channel[fw.Frame] = self.bridge.channel_to_trio(CHANNEL_ITEMS)
        t = self.timeouts
        preq = ProxyRequest(route=req.route, body=body, model=req.model, headers=req.headers,
                            method=req.method, request_id=req.request_id)
        cancelled = False
        terminal = False

        async def pump() -> None:  # runs in the asyncio thread
            deadlines = Deadlines(t.open, req.first_byte or t.first_byte, req.idle or t.idle,
                                  time.monotonic() + (req.timeout or t.total))
            up = None
            try:
                up = await self.local_open(req.engine, preq, deadlines)
                await chan.send(fw.Head(up.status, tuple(up.headers)))
                while True:
                    data = await up.read()
                    if not data:
                        break
                    for i in range(0, len(data), fw.MAX_CHUNK):
                        await chan.send(fw.Data(data[i : i + fw.MAX_CHUNK]))
                await chan.send(fw.End())
            except UpstreamError as exc:
                await chan.send(fw.Error(to_wire(exc.kind), exc.message,
                                         exc.retry_after, exc.status))
            except (ChannelClosed, ConnectionError):
                pass
            except Exception as exc:
                log.exception("forwarded request failed")
                await chan.send(fw.Error("internal", f"{type(exc).__name__}: {exc}"))
            finally:
                if up is not None:
                    await up.aclose()
                chan.close()

        async def run_pump() -> None:
            try:
                await self.bridge.to_asyncio(pump())
            except Exception:
                log.exception("forward pump failed")
                chan.abort(ChannelClosed())

        watch_scope = trio.CancelScope()

        async def watch(nursery: trio.Nursery) -> None:
            """Any frame or EOF from the client mid-request means: stop."""
            nonlocal cancelled
            with watch_scope:
                try:
                    await fs.recv()
                except (StreamEnded, fw.ForwardWireError):
                    pass
                cancelled = True
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_pump)
            nursery.start_soon(watch, nursery)
            try:
                while not terminal:
                    try:
                        batch = await chan.receive_batch()
                    except ChannelClosed:
                        break
                    out, terminal = _coalesce(batch)
                    await fs.send(out)
                if not terminal:
                    await fs.send([fw.Error("internal", "the engine call ended without an answer")])
                    terminal = True
            except (StreamEnded, trio.TooSlowError):
                cancelled = True
                nursery.cancel_scope.cancel()
            # Done: stop watching; the pump has closed the channel and ends by itself.
            watch_scope.cancel()
        if cancelled:
            self.stats["cancelled"] += 1
            return False
        self.stats["completed"] += 1
        return terminal
