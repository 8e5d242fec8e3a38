"""Fetching one blob into the store from one or more range sources.

Theory of operation
-------------------
A :class:`RangeSource` is anything that can hand over bytes ``[offset,
offset+length)`` of one blob: an HTTP server with Range requests, a local
file, and -- once the data plane lands -- a peer serving a blob by digest.
That is the one pluggable point for peer transfer: "fetch chunk i of blob D
from somewhere" is ``source.read_range(i * CHUNK_SIZE, chunk_len)``.

:func:`fetch_blob` opens the blob's :class:`~swarmd.models.partial.PartialBlob`
(taking its lock), works out which chunks are missing (a resumed pull keeps
every chunk that re-verifies from disk) and hands them out as jobs: with one
source, each run of consecutive missing chunks is a single request (one GET
for a fresh file); with several sources, one chunk per job, and one worker
thread per source pulls jobs from a shared queue, so fast sources take
more.  Bytes are hashed per chunk as they arrive and written at their
offsets by a second thread (:mod:`swarmd.models.writebehind`); a chunk is
recorded in the journal only once complete.
When the manifest's chunk digests are known (a peer pull), a chunk that does
not match is refused on arrival: its source is dropped and counted in
``bad_sources``, and the chunk goes back in the queue for the others.  A
source that sends more or fewer bytes than asked is treated the same way.
With no chunk digests (a first pull from the internet), the whole-file
sha256 -- from the Hub, the registry, or none for a plain URL -- is checked
at the end; a mismatch discards the partial.

``limiter`` paces all reads (``[models] max_transfer_rate``) so inference
traffic keeps room; ``cancel`` stops between pieces, leaving a resumable
partial.

:func:`fetch_swarm` is the peer-pull variant: the sources are a
:class:`ChunkSwarm` whose holders change while the blob is fetched -- full
copies, and other nodes still pulling it that serve the chunks they have
verified -- polled every :data:`SWARM_POLL` s.  A
:class:`~swarmd.models.chunkboard.ChunkBoard` hands each peer's streams the
rarest chunk that peer holds (a full holder: one that no partial holder
holds or is reading, as their ``have`` answers say); every chunk is verified
on arrival.  While it runs the partial is offered to the data plane
(:meth:`ModelStore.serving`), and the chunks its streams are reading are
told there too (``coming``), so this node feeds other pullers in turn and
they leave to it what it is already fetching.  A peer whose bytes do not verify
is dropped for good and counted (``bad_sources``) at once.  A helper
thread feeds the whole-file sha256 from the file as verified chunks extend
its prefix (:meth:`~swarmd.models.partial.PartialBlob.catch_up`), so
:meth:`~swarmd.models.partial.PartialBlob.finish` has little left to
hash when the last chunk lands.  A transient
failure (connect, timeout, a broken stream, a peer membership briefly calls
dead) backs off, and after :data:`SWARM_FAILS` in a row the peer is benched
for :data:`SWARM_BENCH` s, then taken back if a poll still names it; a
partial holder that no longer has what it said is dropped quietly.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from swarmd.models.chunkboard import ChunkBoard
from swarmd.models.manifest import CHUNK_SIZE
from swarmd.models.partial import DigestMismatch, PartialBlob
from swarmd.models.store import ModelStore, StoreError
from swarmd.models.writebehind import SYNC_STEP, WriteBehind


class SourceError(Exception):
    """A source failed to deliver (network, HTTP status, short or long read)."""


class BadBytes(SourceError):
    """The source sent bytes that do not verify (a corrupt copy, or a liar)."""


class Gone(SourceError):
    """The source no longer holds what was asked (removed, or a partial holder
    that does not have that chunk)."""


class Cancelled(Exception):
    """The pull was cancelled; its partial blobs remain and resume later."""


class FetchError(StoreError):
    """No source could deliver every chunk; ``bad_sources`` counts the dropped ones."""

    def __init__(self, message: str, bad_sources: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.bad_sources = dict(bad_sources or {})


class RangeSource(Protocol):
    #: Shown in progress and errors: a host, a peer id, a path.
    label: str

    def read_range(self, offset: int, length: int) -> Iterator[bytes | memoryview]:
        """Yield exactly ``length`` bytes of the blob from ``offset``, in pieces.

        A piece need only stay valid until the next one is asked for (a source
        may reuse one buffer).  Raise :class:`SourceError` on failure.  Called
        from worker threads."""
        ...


class WritingSource(Protocol):
    """A source that writes a verified range into the partial file itself (the
    data plane's ``DataPlaneClient.fetch_range`` works this way: it hashes as it
    writes and raises unless the bytes hash to ``expect``).  Used one chunk at a
    time, only when the manifest's chunk digests are known."""

    label: str

    def write_range(self, dest: Path, offset: int, length: int, expect: str) -> None:
        """Write bytes ``[offset, offset+length)`` into ``dest`` at ``offset``,
        verified against sha256 hex ``expect``; raise on any failure."""
        ...


AnySource = RangeSource | WritingSource


@dataclass(frozen=True)
class BlobTarget:
    key: str  # partial key: sha256-<hex> if the digest is known, else from the source identity
    size: int
    sha256: str | None = None  # expected whole-file digest (hex), if known
    chunks: tuple[str, ...] | None = None  # expected chunk digests, if known (peer pulls)
    label: str = ""  # the file's path in the model, for progress


@dataclass
class FetchResult:
    sha256: str
    fetched: int = 0  # bytes received from sources in this call
    resumed: int = 0  # bytes kept from an earlier, interrupted pull
    present: bool = False  # the blob was already complete
    pinned: bool = False  # the store pinned this blob for the caller: unpin it when done
    bad_sources: dict[str, int] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)  # bytes per source label (fetch_swarm)


class RateLimiter:
    """A shared pacing clock: at most ``rate`` bytes/s (0 = unlimited), 0.25 s burst."""

    def __init__(self, rate: int, burst_s: float = 0.25) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self._t = 0.0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._t = max(self._t, now - self.burst_s) + n / self.rate
            wait = self._t - now - self.burst_s
        if wait > 0:
            time.sleep(wait)


ProgressFn = Callable[[int], None]  # bytes of this blob now complete or in flight


class _Job:
    __slots__ = ("first", "count")

    def __init__(self, first: int, count: int) -> None:
        self.first, self.count = first, count


class _Fetch:
    def __init__(self, partial: PartialBlob, target: BlobTarget, progress: ProgressFn,
                 cancel: threading.Event, limiter: RateLimiter) -> None:
        self.partial, self.target = partial, target
        self.progress, self.cancel, self.limiter = progress, cancel, limiter
        self.jobs: collections.deque[_Job] = collections.deque()
        self.lock = threading.Lock()
        self.fetched = 0
        self.bad: dict[str, int] = {}
        self.errors: list[str] = []
        self.bytes_seen = partial.resumed_bytes

    def next_job(self) -> _Job | None:
        with self.lock:
            return self.jobs.popleft() if self.jobs else None

    def worker(self, source: AnySource) -> None:
        while not self.cancel.is_set():
            job = self.next_job()
            if job is None:
                return
            try:
                if hasattr(source, "write_range") and self.target.chunks is not None:
                    self.run_written(source, job)  # type: ignore[arg-type]
                elif hasattr(source, "read_range"):
                    self.run_job(source, job)  # type: ignore[arg-type]
                else:
                    raise SourceError("cannot read this blob without chunk digests")
            except Cancelled:
                return
            except Exception as exc:
                self.partial.invalidate_hash()  # bytes of this job may be rewritten
                with self.lock:  # drop the source; fetch_blob re-queues what is missing
                    self.bad[source.label] = self.bad.get(source.label, 0) + 1
                    self.errors.append(f"{source.label}: {exc}")
                return

    def run_written(self, source: WritingSource, job: _Job) -> None:
        assert self.target.chunks is not None
        p = self.partial
        for i in range(job.first, job.first + job.count):
            if self.cancel.is_set():
                raise Cancelled()
            n = p.chunk_len(i)
            self.limiter.take(n)
            source.write_range(p.part_path, i * CHUNK_SIZE, n, self.target.chunks[i])
            p.chunk_done(i, self.target.chunks[i])
            with self.lock:
                self.fetched += n
                self.bytes_seen += n
            self.progress(self.bytes_seen)

    def run_job(self, source: RangeSource, job: _Job) -> None:
        p = self.partial
        start = job.first * CHUNK_SIZE
        end = min(p.size, (job.first + job.count) * CHUNK_SIZE)
        idx, pos = job.first, start
        h = hashlib.sha256()
        chunk_end = min(p.size, (idx + 1) * CHUNK_SIZE)
        last_report = 0.0
        behind = WriteBehind(p)
        try:
            for piece in source.read_range(start, end - start):
                if self.cancel.is_set():
                    raise Cancelled()
                if pos + len(piece) > end:
                    raise SourceError(f"sent more than the {end - start} bytes asked for")
                self.limiter.take(len(piece))
                behind.write(pos, bytes(piece))  # a copy: the source reuses its buffer
                view = memoryview(piece)
                while view:
                    take = min(len(view), chunk_end - pos)
                    h.update(view[:take])
                    view = view[take:]
                    pos += take
                    if pos == chunk_end:
                        digest = h.hexdigest()
                        want = self.target.chunks[idx] if self.target.chunks else None
                        if want is not None and digest != want:
                            raise DigestMismatch(
                                f"chunk {idx} has sha256 {digest}, manifest says {want}")
                        behind.chunk_done(idx, digest)
                        idx, h = idx + 1, hashlib.sha256()
                        chunk_end = min(p.size, (idx + 1) * CHUNK_SIZE)
                with self.lock:
                    self.fetched += len(piece)
                    self.bytes_seen += len(piece)
                now = time.monotonic()
                if now - last_report > 0.1:
                    last_report = now
                    self.progress(self.bytes_seen)
            if pos != end:
                raise SourceError(f"short read: {pos - start} of {end - start} bytes")
        except BaseException:
            behind.abandon()
            raise
        behind.close()
        self.progress(self.bytes_seen)


def _runs(missing: Sequence[int]) -> list[_Job]:
    jobs: list[_Job] = []
    for i in missing:
        if jobs and jobs[-1].first + jobs[-1].count == i:
            jobs[-1].count += 1
        else:
            jobs.append(_Job(i, 1))
    return jobs


def fetch_blob(
    store: ModelStore, target: BlobTarget, sources: Sequence[AnySource], *,
    progress: ProgressFn = lambda n: None, cancel: threading.Event | None = None,
    limiter: RateLimiter | None = None,
) -> FetchResult:
    """Bring one blob into ``store`` from ``sources``; see the module docstring."""
    cancel = cancel or threading.Event()
    limiter = limiter or RateLimiter(0)
    if target.sha256 and store.has_blob(target.sha256):
        progress(target.size)
        return FetchResult(sha256=target.sha256, present=True)
    if not sources:
        raise FetchError(f"{target.label}: no source to fetch it from")
    with store.blob_lock(target.key):
        if target.sha256 and store.has_blob(target.sha256):  # another pull finished it
            progress(target.size)
            return FetchResult(sha256=target.sha256, present=True)
        partial = store.partial(target.key, target.size, target.sha256)
        partial.open()
        try:
            if target.chunks is not None:
                for i, d in list(partial.done.items()):
                    if target.chunks[i] != d:
                        del partial.done[i]
            f = _Fetch(partial, target, progress, cancel, limiter)
            progress(f.bytes_seen)
            healthy = list(sources)
            while partial.missing() and healthy and not cancel.is_set():
                missing = partial.missing()
                f.bytes_seen = sum(partial.chunk_len(i) for i in partial.done)
                f.jobs.extend(_runs(missing) if len(healthy) == 1 else [_Job(i, 1) for i in missing])
                if len(healthy) == 1:
                    f.worker(healthy[0])
                else:
                    threads = [threading.Thread(target=f.worker, args=(s,), daemon=True)
                               for s in healthy]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                healthy = [s for s in healthy if s.label not in f.bad]
            if cancel.is_set():
                raise Cancelled(f"{target.label}: cancelled")
            if partial.missing():
                raise FetchError(f"{target.label}: {len(partial.missing())} chunks could not be "
                                 f"fetched ({'; '.join(f.errors) or 'no source left'})", f.bad)
            sha = partial.finish()
            return FetchResult(sha256=sha, fetched=f.fetched, resumed=partial.resumed_bytes,
                               bad_sources=f.bad, pinned=True)
        finally:
            partial.close()


# -- peer pulls: holders that change while the blob is fetched --------------------------------

#: Seconds between two polls of who holds which chunks.
SWARM_POLL = 0.5
#: Seconds from a peer pull's first poll to its second: until then it reads
#: one chunk at a time from each full holder, since pullers that start
#: together learn of each other only from the holder's ``have`` answers.
SWARM_FIRST_POLL = 0.2
#: Transient failures in a row after which a peer is benched.
SWARM_FAILS = 3
#: Seconds a benched peer sits out before a poll may bring it back.
SWARM_BENCH = 5.0
#: Seconds a fetch waits with no chunk done and no holder gaining one before it fails.
SWARM_STALL = 30.0

log = logging.getLogger("swarmd.models")


@dataclass(frozen=True)
class Holder:
    """A peer holding one blob: ``have`` None = the whole blob, else its chunk
    indices, and ``coming`` the chunks it is reading now (a partial holder)."""

    key: str  # stable id (a node id)
    label: str  # shown in progress, errors and bad_sources
    have: frozenset[int] | None
    coming: frozenset[int] = frozenset()


class ChunkSwarm(Protocol):
    """The peers of one blob in a peer pull (:mod:`swarmd.runtime.peer_models`)."""

    #: Chunk reads in flight at most per peer, and in all.
    per_peer: int
    streams: int

    def holders(self) -> Sequence[Holder]:
        """Who holds the blob now, and which chunks (called every SWARM_POLL s)."""
        ...

    def source(self, key: str) -> WritingSource:
        """A source reading from holder ``key`` (used by several streams at once)."""
        ...


class _Swarm:
    def __init__(self, partial: PartialBlob, target: BlobTarget, swarm: ChunkSwarm,
                 board: ChunkBoard, progress: ProgressFn, cancel: threading.Event,
                 limiter: RateLimiter, on_source: Callable[[str], None]) -> None:
        self.partial, self.target, self.swarm, self.board = partial, target, swarm, board
        self.progress, self.cancel, self.limiter = progress, cancel, limiter
        self.on_source = on_source
        self.lock = threading.Lock()
        self.fetched = 0
        self.bytes_seen = sum(partial.chunk_len(i) for i in partial.done)
        self.bad: dict[str, int] = {}
        self.errors: list[str] = []
        self.fails: dict[str, int] = {}
        self.served: dict[str, int] = {}
        self.labels: dict[str, str] = {}
        self.sources: dict[str, WritingSource] = {}

    def add(self, h: Holder) -> None:
        if h.key not in self.sources:
            self.sources[h.key] = self.swarm.source(h.key)
        if self.board.set_peer(h.key, h.have, h.coming) and h.key not in self.labels:
            self.labels[h.key] = h.label
            self.on_source(h.label)

    def _drop(self, key: str, why: str, *, count: bool, bench: bool = False) -> None:
        if self.board.dropped(key):
            return
        label = self.labels.get(key, key)
        self.board.drop(key, until=time.monotonic() + SWARM_BENCH if bench else None)
        with self.lock:
            self.errors.append(f"{label}: {why}")
            if count:
                self.bad[label] = self.bad.get(label, 0) + 1
            self.fails.pop(key, None)
        log.info("pull source dropped", extra={"fields": {"source": label, "error": why,
                                                          "benched": bench}})

    def worker(self) -> None:
        assert self.target.chunks is not None
        p, board = self.partial, self.board
        while True:
            got = board.take(self.cancel)
            if got is None:
                return
            key, i = got
            n = p.chunk_len(i)
            p.reading(i, True)  # told in `have`: other pullers leave it to us
            try:
                self.limiter.take(n)
                self.sources[key].write_range(p.part_path, i * CHUNK_SIZE, n,
                                              self.target.chunks[i])
            except Exception as exc:  # noqa: BLE001 - every failure is the source's
                p.reading(i, False)
                # No invalidate_hash: only verified chunks ever feed the
                # whole-file hash here (catch_up), and this one is not one.
                board.failed(i)
                if isinstance(exc, BadBytes | DigestMismatch):
                    self._drop(key, str(exc), count=True)
                elif isinstance(exc, Gone):
                    self._drop(key, str(exc), count=False)
                else:
                    with self.lock:
                        self.fails[key] = fails = self.fails.get(key, 0) + 1
                    if fails >= SWARM_FAILS:
                        self._drop(key, f"{exc} ({fails} failures in a row)", count=False,
                                   bench=True)
                    else:
                        self.cancel.wait(0.25 * 2 ** fails)
                continue
            p.chunk_done(i, self.target.chunks[i])
            p.reading(i, False)
            board.done(i)
            label = self.labels.get(key, key)
            with self.lock:
                self.fails[key] = 0
                self.fetched += n
                self.bytes_seen += n
                self.served[label] = self.served.get(label, 0) + n
                seen = self.bytes_seen
            self.progress(seen)

    def hash_ahead(self) -> None:
        """Feed the whole-file hash as verified chunks extend its prefix, and
        flush the file to disk every :data:`SYNC_STEP` bytes of it."""
        synced = 0
        while not self.cancel.is_set():
            hashed = self.partial.catch_up()
            if hashed - synced >= SYNC_STEP:
                self.partial.sync_data()
                synced = hashed
            if self.board.finished() or self.board.closed:
                return
            self.board.wait(SWARM_POLL)

    def run(self) -> None:
        board = self.board
        version, since = -1, time.monotonic()
        threads = [threading.Thread(target=self.hash_ahead, daemon=True,
                                    name="swarmd-pull-hash")]
        threads[0].start()
        polls = 0
        try:
            while not self.cancel.is_set() and not board.finished():
                # The second poll comes soon: it ramps the full holders up
                # (ChunkBoard.ramp_up) once pullers started together could
                # have heard of each other.
                next_poll = time.monotonic() + (SWARM_FIRST_POLL if polls == 0 else SWARM_POLL)
                try:
                    holders = list(self.swarm.holders())
                except Exception as exc:  # noqa: BLE001 - a poll failure is not fatal
                    log.info("pull: polling holders failed", extra={"fields": {"error": str(exc)}})
                    holders = []
                for h in holders:
                    self.add(h)
                polls += 1
                if polls == 2:
                    board.ramp_up()
                if polls == 1:  # the streams start after the first poll: they need peers
                    for _ in range(max(1, self.swarm.streams)):
                        threads.append(threading.Thread(target=self.worker, daemon=True,
                                                        name="swarmd-pull-stream"))
                        threads[-1].start()
                if board.version != version:
                    version, since = board.version, time.monotonic()
                if not board.servable():
                    # Nobody live holds a missing chunk: wait for partial holders
                    # to get more, but not for ever, and not at all with no peer.
                    if (not board.peers() and not board.benched()) or \
                            time.monotonic() - since > SWARM_STALL:
                        break
                while not self.cancel.is_set() and not board.finished() and \
                        (left := next_poll - time.monotonic()) > 0:
                    board.wait(left)
        finally:
            board.close()
            for t in threads:
                t.join()


def fetch_swarm(
    store: ModelStore, target: BlobTarget, swarm: ChunkSwarm, *,
    progress: ProgressFn = lambda n: None, cancel: threading.Event | None = None,
    limiter: RateLimiter | None = None, on_source: Callable[[str], None] = lambda label: None,
) -> FetchResult:
    """Bring one blob into ``store`` from the peers of ``swarm`` (see the module
    docstring); ``target`` must carry its sha256 and chunk digests.
    ``on_source(label)`` is called for each peer as it joins."""
    if target.sha256 is None or target.chunks is None:
        raise FetchError(f"{target.label}: a peer pull needs the blob's digests")
    cancel = cancel or threading.Event()
    limiter = limiter or RateLimiter(0)
    if store.has_blob(target.sha256):
        progress(target.size)
        return FetchResult(sha256=target.sha256, present=True)
    with store.blob_lock(target.key):
        if store.has_blob(target.sha256):  # another pull finished it
            progress(target.size)
            return FetchResult(sha256=target.sha256, present=True)
        partial = store.partial(target.key, target.size, target.sha256)
        partial.open()
        try:
            for i, d in list(partial.done.items()):
                if target.chunks[i] != d:
                    del partial.done[i]
            board = ChunkBoard(partial.missing(), per_peer=swarm.per_peer, ramped=False)
            f = _Swarm(partial, target, swarm, board, progress, cancel, limiter, on_source)
            progress(f.bytes_seen)
            with store.serving(target.sha256, partial):
                f.run()
                if cancel.is_set():
                    raise Cancelled(f"{target.label}: cancelled")
                if partial.missing():
                    raise FetchError(
                        f"{target.label}: {len(partial.missing())} chunks could not be fetched "
                        f"({'; '.join(f.errors) or 'no peer holds them'})", f.bad)
                sha = partial.finish()
            return FetchResult(sha256=sha, fetched=f.fetched, resumed=partial.resumed_bytes,
                               bad_sources=f.bad, pinned=True, served=f.served)
        finally:
            partial.close()
