"""A blob being fetched: its ``.part`` file, its chunk journal and its lock.

Theory of operation
-------------------
A partial blob lives in ``partial/<key>.part`` (the bytes, written in place
at their offsets) beside ``partial/<key>.json`` (the journal: size, expected
sha256 if known, and the sha256 of every chunk already written).  The key is
``sha256-<hex>`` when the content digest is known in advance, else a digest
of the source's identity (URL, size, ETag).  While a :class:`PartialBlob` is
open it holds ``locks/<key>.lock`` (``flock``), so two pulls of one blob --
in two processes or two threads -- do not collide: the second waits and then
finds the blob complete.

The journal is replaced atomically after each chunk but not fsynced: on
reopen every journaled chunk is re-read from disk and re-hashed, and one that
does not match (a crash lost it) is fetched again.  While a peer pull
(chunk digests known from the manifest) has it open, the store's
:meth:`~swarmd.models.store.ModelStore.served_blob` hands it to the data
plane, which serves only ranges inside chunks already verified and written
(:meth:`covers`); it is never listed in the inventory nor given to an
engine, which see only ``blobs/``.  :meth:`finish` checks the whole
file's sha256, fsyncs it, renames it into ``blobs/sha256/<hex>`` (mode 0444)
and fsyncs the directory.

The whole-file sha256 is computed as the bytes arrive, while they arrive in
order (a fresh single-source pull: one pass over each byte, no re-read); on
reopen the re-verified prefix feeds it.  A peer pull's chunks arrive out of
order, written by their streams: :meth:`catch_up` (a helper thread, while
the streams still fetch) feeds it from the file over each verified chunk
that extends the hashed prefix, so the check at the end overlaps the
transfer instead of following it.  Bytes that arrive out of order (several
sources) or after a failed attempt (:meth:`invalidate_hash`) make
:meth:`finish` hash the rest from the file instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from swarmd.models.fsutil import atomic_write, fsync_dir, pwrite_all
from swarmd.models.manifest import CHUNK_SIZE, chunk_count


class BlobStore(Protocol):
    """What a partial blob needs of :class:`swarmd.models.store.ModelStore`
    (a Protocol, so this module need not import the store that imports it)."""

    root: Path

    def blob_file(self, digest: str) -> Path: ...
    def pin(self, digests: Iterable[str]) -> None: ...
    def write_chunk_list(self, digest: str, chunks: list[str]) -> None: ...


READ_STEP = 4 * 1024 * 1024


class DigestMismatch(ValueError):
    """The bytes fetched do not hash to the digest they must have."""


class PartialBlob:
    def __init__(self, store: BlobStore, key: str, size: int, sha256: str | None) -> None:
        self.store = store
        self.key = key
        self.size = size
        self.expected = sha256
        self.nchunks = chunk_count(size)
        self.part_path = store.root / "partial" / f"{key}.part"
        self.journal_path = store.root / "partial" / f"{key}.json"
        self.done: dict[int, str] = {}
        self.resumed_bytes = 0
        self._fd = -1
        self._lock = threading.Lock()
        self._hasher = hashlib.sha256()
        self._hashed = 0  # bytes [0, _hashed) are in _hasher; -1 = start over at finish
        self._journal_lock = threading.Lock()
        self._coming: set[int] = set()  # chunks being read now (told in `have`)

    # -- opening and resuming
    def open(self) -> None:
        self._fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT, 0o644)
        journal = self._read_journal()
        # Not pre-sized: writes into a sparse ftruncate-d file measured up to 2x
        # slower here (ext4) than appending; a short file just fails re-verification.
        if journal is None or os.fstat(self._fd).st_size > self.size:
            os.ftruncate(self._fd, 0)
            self.done = {}
        else:
            for i in sorted(journal):
                # The contiguous prefix feeds the whole-file hash as it is re-verified.
                feed = self._hasher if self._hashed == i * CHUNK_SIZE else None
                if self._chunk_digest_on_disk(i, feed) == journal[i]:
                    self.done[i] = journal[i]
                    if feed is not None:
                        self._hashed += self.chunk_len(i)
                elif feed is not None:
                    self._hasher, self._hashed = hashlib.sha256(), 0
                    self._rehash_upto(i * CHUNK_SIZE)
        self.resumed_bytes = sum(self.chunk_len(i) for i in self.done)
        self._write_journal()

    def _read_journal(self) -> dict[int, str] | None:
        try:
            doc: Any = json.loads(self.journal_path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("size") != self.size or doc.get(
            "sha256") != self.expected or doc.get("chunk_size") != CHUNK_SIZE:
            return None
        chunks = doc.get("chunks")
        if not isinstance(chunks, dict):
            return None
        out: dict[int, str] = {}
        for k, v in chunks.items():
            if isinstance(k, str) and k.isdigit() and int(k) < self.nchunks and isinstance(v, str):
                out[int(k)] = v
        return out

    def _write_journal(self) -> None:
        with self._journal_lock:
            doc = {"size": self.size, "sha256": self.expected, "chunk_size": CHUNK_SIZE,
                   "chunks": {str(i): d for i, d in sorted(self.done.items())}}
            atomic_write(self.journal_path, json.dumps(doc).encode(), durable=False)

    def chunk_len(self, i: int) -> int:
        return min(CHUNK_SIZE, self.size - i * CHUNK_SIZE)

    def _chunk_digest_on_disk(self, i: int, feed: Any = None) -> str:
        h = hashlib.sha256()
        off, end = i * CHUNK_SIZE, i * CHUNK_SIZE + self.chunk_len(i)
        while off < end:
            data = os.pread(self._fd, min(READ_STEP, end - off), off)
            if not data:
                return ""
            h.update(data)
            if feed is not None:
                feed.update(data)
            off += len(data)
        return h.hexdigest()

    def _feed(self, h: Any, start: int, end: int) -> None:
        """Feed ``h`` with the file's bytes ``[start, end)``; OSError if it is shorter."""
        while start < end:
            data = os.pread(self._fd, min(READ_STEP, end - start), start)
            if not data:
                raise OSError(f"{self.part_path} is shorter than {end} bytes")
            h.update(data)
            start += len(data)

    def _rehash_upto(self, end: int) -> None:
        """Feed the whole-file hash from the file, from where it is to ``end``."""
        if self._hashed < end:
            self._feed(self._hasher, self._hashed, end)
            self._hashed = end

    # -- serving verified chunks to peers (the data plane's PartialFile)
    @property
    def chunk_size(self) -> int:
        return CHUNK_SIZE

    def covers(self, start: int, end: int) -> bool:
        """Whether bytes ``[start, end)`` lie inside chunks verified and written."""
        if not 0 <= start < end <= self.size:
            return False
        with self._lock:
            return all(i in self.done for i in range(start // CHUNK_SIZE,
                                                     (end - 1) // CHUNK_SIZE + 1))

    def have_chunks(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self.done)

    def coming_chunks(self) -> frozenset[int]:
        """Chunks a stream is reading now: other pullers leave them to this node
        rather than ask the full holder for them too.  (One just verified may
        still be listed for a moment; ``encode_have`` drops those.)"""
        with self._lock:
            return frozenset(self._coming)

    def reading(self, i: int, now: bool) -> None:
        """Chunk ``i`` is being read (``now``), or no longer is."""
        with self._lock:
            if now:
                self._coming.add(i)
            else:
                self._coming.discard(i)

    # -- writing
    def missing(self) -> list[int]:
        return [i for i in range(self.nchunks) if i not in self.done]

    def write(self, offset: int, data: bytes | memoryview) -> None:
        pwrite_all(self._fd, data, offset)
        with self._lock:
            if offset == self._hashed:
                self._hasher.update(data)
                self._hashed = offset + len(data)

    def catch_up(self) -> int:
        """Feed the whole-file hash from the file over the verified chunks that
        now extend its prefix (a peer pull's chunks arrive out of order, each
        written and verified by its stream); returns the bytes hashed so far.

        Run by one helper thread while the streams still fetch, so
        :meth:`finish` has little or nothing left to hash.  The hasher is
        claimed while the file is read (``_hashed = -2``: :meth:`write` does
        not feed it meanwhile); an :meth:`invalidate_hash` in that time wins."""
        with self._lock:
            h, pos = self._hasher, self._hashed
            if pos < 0 or pos >= self.size or pos // CHUNK_SIZE not in self.done:
                return pos
            self._hashed = -2
        end = pos
        while end < self.size and self._is_done(end // CHUNK_SIZE):
            stop = end // CHUNK_SIZE * CHUNK_SIZE + self.chunk_len(end // CHUNK_SIZE)
            try:
                self._feed(h, end, stop)
            except OSError:
                end = -1  # finish() rehashes from scratch (and fails on the short file)
                break
            end = stop
        with self._lock:
            if self._hashed == -2:
                self._hasher, self._hashed = h, end
            return self._hashed

    def _is_done(self, i: int) -> bool:
        with self._lock:
            return i in self.done

    def sync_data(self) -> None:
        """Start the bytes written so far on their way to disk (``fdatasync``), so
        :meth:`finish`'s fsync has only the rest to wait for."""
        os.fdatasync(self._fd)

    def invalidate_hash(self) -> None:
        """Bytes written so far may be rewritten (a failed attempt): hash from the file."""
        with self._lock:
            self._hashed = -1

    def chunk_done(self, i: int, digest: str) -> None:
        with self._lock:
            self.done[i] = digest
        self._write_journal()

    # -- finishing
    def finish(self) -> str:
        """Verify, fsync and move into ``blobs/``; returns the sha256 hex."""
        if self.missing():
            raise RuntimeError(f"{len(self.missing())} chunks of {self.key} still missing")
        if self._hashed < 0:  # invalidated (or, defensively, a catch-up never put back)
            self._hasher, self._hashed = hashlib.sha256(), 0
        self._rehash_upto(self.size)
        digest = self._hasher.hexdigest()
        if self.expected is not None and digest != self.expected:
            self.discard()
            raise DigestMismatch(f"sha256 {digest} of the fetched bytes is not the expected {self.expected}")
        os.fsync(self._fd)
        final = self.store.blob_file(digest)
        # Pinned before it appears in blobs/, so a concurrent gc() cannot take it
        # before its manifest is written; the caller unpins (FetchResult.pinned).
        self.store.pin([digest])
        os.chmod(self.part_path, 0o444)
        chunks = [self.done[i] for i in range(self.nchunks)]
        self.store.write_chunk_list(digest, chunks)
        os.replace(self.part_path, final)
        fsync_dir(final.parent)
        self.journal_path.unlink(missing_ok=True)
        return digest

    def discard(self) -> None:
        self.part_path.unlink(missing_ok=True)
        self.journal_path.unlink(missing_ok=True)
        self.done = {}

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
