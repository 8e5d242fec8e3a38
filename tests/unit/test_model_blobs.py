"""The store and the fetch engine on real files: resume, verification, locks, serving."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmd.models.fetch import (
    BlobTarget,
    FetchError,
    RateLimiter,
    SourceError,
    fetch_blob,
)
from swarmd.models.manifest import CHUNK_SIZE
from swarmd.models.partial import DigestMismatch
from swarmd.models.sources.base import FileRangeSource
from swarmd.models.store import ModelStore, NotFound, StoreError

SIZE = 2 * CHUNK_SIZE + 5000  # three chunks, the last one short


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[str]]:
    p = tmp_path_factory.mktemp("src") / "model.bin"
    data = os.urandom(SIZE)
    p.write_bytes(data)
    chunks = [hashlib.sha256(data[i:i + CHUNK_SIZE]).hexdigest() for i in range(0, SIZE, CHUNK_SIZE)]
    return p, hashlib.sha256(data).hexdigest(), chunks


class Recording(FileRangeSource):
    """A file source that records what it was asked and can misbehave."""

    def __init__(self, path: Path, label: str = "src", *, fail_after: int | None = None,
                 corrupt_chunk: int | None = None, extra: bool = False) -> None:
        super().__init__(path)
        self.label = label
        self.asked: list[tuple[int, int]] = []
        self.fail_after, self.corrupt_chunk, self.extra = fail_after, corrupt_chunk, extra

    def read_range(self, offset: int, length: int) -> Iterator[bytes]:
        self.asked.append((offset, length))
        sent = 0
        for piece in super().read_range(offset, length):
            if self.fail_after is not None and offset + sent + len(piece) > self.fail_after:
                raise SourceError("connection reset")
            if self.corrupt_chunk is not None and offset // CHUNK_SIZE == self.corrupt_chunk:
                piece = bytes(len(piece))
            sent += len(piece)
            yield piece
        if self.extra:
            yield b"more"


def target(sha: str | None, chunks: list[str] | None = None) -> BlobTarget:
    return BlobTarget(key="k1", size=SIZE, sha256=sha, chunks=tuple(chunks) if chunks else None,
                      label="model.bin")


def test_fetch_verifies_and_commits(tmp_path: Path, blob: tuple) -> None:
    path, sha, chunks = blob
    store = ModelStore(tmp_path)
    src = Recording(path)
    res = fetch_blob(store, target(sha), [src])
    assert res.sha256 == sha and res.fetched == SIZE and not res.present
    assert src.asked == [(0, SIZE)]  # one request for a fresh file, like curl
    assert store.blob_file(sha).read_bytes() == path.read_bytes()
    assert store.blob_file(sha).stat().st_mode & 0o777 == 0o444
    assert store.chunk_list(sha) == tuple(chunks)
    assert list((tmp_path / "partial").iterdir()) == []
    assert fetch_blob(store, target(sha), [src]).present  # second time: nothing fetched
    assert store.read_range(sha, CHUNK_SIZE - 3, 6) == path.read_bytes()[CHUNK_SIZE - 3:CHUNK_SIZE + 3]
    with pytest.raises(StoreError):
        store.read_range(sha, SIZE - 1, 2)


def test_resume_keeps_finished_chunks(tmp_path: Path, blob: tuple) -> None:
    path, sha, _ = blob
    store = ModelStore(tmp_path)
    with pytest.raises(FetchError, match="connection reset"):
        fetch_blob(store, target(sha), [Recording(path, fail_after=CHUNK_SIZE + 100)])
    assert not store.has_blob(sha)
    with pytest.raises(NotFound):  # a partial blob is never served
        store.open_blob(sha)
    again = Recording(path)
    res = fetch_blob(store, target(sha), [again])
    assert again.asked == [(CHUNK_SIZE, SIZE - CHUNK_SIZE)]
    assert res.resumed == CHUNK_SIZE and res.fetched == SIZE - CHUNK_SIZE
    assert store.blob_file(sha).read_bytes() == path.read_bytes()


def test_resume_refetches_a_chunk_that_does_not_reverify(tmp_path: Path, blob: tuple) -> None:
    path, sha, _ = blob
    store = ModelStore(tmp_path)
    with pytest.raises(FetchError):
        fetch_blob(store, target(sha), [Recording(path, fail_after=2 * CHUNK_SIZE + 10)])
    part = tmp_path / "partial" / "k1.part"
    with open(part, "r+b") as f:  # the journal says chunk 0 is done; its bytes say otherwise
        f.write(b"\0" * 10)
    again = Recording(path)
    fetch_blob(store, target(sha), [again])
    assert again.asked == [(0, CHUNK_SIZE), (2 * CHUNK_SIZE, SIZE - 2 * CHUNK_SIZE)]
    assert store.blob_file(sha).read_bytes() == path.read_bytes()


def test_bad_chunk_drops_the_source_and_refetches_elsewhere(tmp_path: Path, blob: tuple) -> None:
    path, sha, chunks = blob
    store = ModelStore(tmp_path)
    bad, good = Recording(path, "bad-peer", corrupt_chunk=1), Recording(path, "good-peer")
    res = fetch_blob(store, target(sha, chunks), [bad, good])
    assert res.sha256 == sha and store.blob_file(sha).read_bytes() == path.read_bytes()
    if (CHUNK_SIZE, CHUNK_SIZE) in bad.asked:
        assert res.bad_sources == {"bad-peer": 1}
        assert (CHUNK_SIZE, CHUNK_SIZE) in good.asked


def test_only_bad_sources_fail_without_storing(tmp_path: Path, blob: tuple) -> None:
    path, sha, chunks = blob
    store = ModelStore(tmp_path)
    with pytest.raises(FetchError, match="chunk 0 has sha256"):
        fetch_blob(store, target(sha, chunks), [Recording(path, "evil", corrupt_chunk=0)])
    assert not store.has_blob(sha)


def test_wrong_whole_file_digest_is_refused(tmp_path: Path, blob: tuple) -> None:
    path, _, _ = blob
    store = ModelStore(tmp_path)
    with pytest.raises(DigestMismatch):
        fetch_blob(store, target("0" * 64), [Recording(path)])
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []
    assert list((tmp_path / "partial").glob("*.part")) == []


def test_source_sending_too_much_is_cut_off(tmp_path: Path, blob: tuple) -> None:
    """Bytes past the size asked for are never written (a server cannot fill the disk)."""
    path, sha, _ = blob
    store = ModelStore(tmp_path)
    res = fetch_blob(store, target(sha), [Recording(path, extra=True)])
    assert res.bad_sources == {"src": 1}
    assert store.blob_file(sha).stat().st_size == SIZE
    assert store.blob_file(sha).read_bytes() == path.read_bytes()


def test_two_pulls_of_one_blob_do_not_collide(tmp_path: Path, blob: tuple) -> None:
    path, sha, _ = blob
    store = ModelStore(tmp_path)
    sources = [Recording(path, f"s{i}") for i in range(2)]
    results = []
    threads = [threading.Thread(target=lambda s=s: results.append(fetch_blob(store, target(sha), [s])))
               for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.present for r in results) == [False, True]
    assert sum(len(s.asked) for s in sources) == 1
    assert store.blob_file(sha).read_bytes() == path.read_bytes()


def test_rate_limiter_paces() -> None:
    lim = RateLimiter(20 * 1024 * 1024, burst_s=0.05)
    t = time.monotonic()
    for _ in range(10):
        lim.take(1024 * 1024)
    assert 0.35 < time.monotonic() - t < 2.0
    RateLimiter(0).take(10**12)  # unlimited: returns at once


class Writing:
    """A source shaped like the data plane's fetch_range: writes into the file and
    verifies against the expected digest itself."""

    def __init__(self, path: Path, label: str, corrupt: bool = False) -> None:
        self.path, self.label, self.corrupt = path, label, corrupt
        self.calls = 0

    def write_range(self, dest: Path, offset: int, length: int, expect: str) -> None:
        self.calls += 1
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if self.corrupt:
            data = bytes(length)
        fd = os.open(dest, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        if hashlib.sha256(data).hexdigest() != expect:
            raise SourceError("bad_digest")


def test_writing_sources_for_peer_transfer(tmp_path: Path, blob: tuple) -> None:
    path, sha, chunks = blob
    store = ModelStore(tmp_path)
    bad, good = Writing(path, "peer-bad", corrupt=True), Writing(path, "peer-good")
    res = fetch_blob(store, target(sha, chunks), [bad, good])
    assert res.sha256 == sha and store.blob_file(sha).read_bytes() == path.read_bytes()
    assert bad.calls <= 1 and res.bad_sources == ({"peer-bad": 1} if bad.calls else {})
    assert store.served_blob(sha) == store.blob_file(sha)
    assert store.served_blob("f" * 64) is None and store.served_blob("nonsense") is None


def test_a_fresh_blob_is_pinned_until_its_manifest_is_written(tmp_path: Path, blob: tuple) -> None:
    """Another pull's gc() must not delete a blob that no manifest names *yet*."""
    path, sha, _ = blob
    store = ModelStore(tmp_path)
    res = fetch_blob(store, target(None), [Recording(path)])
    assert res.pinned and res.sha256 == sha
    store.gc()
    assert store.has_blob(sha)
    store.unpin([sha])
    store.gc()
    assert not store.has_blob(sha)


def test_catch_up_hashes_the_verified_prefix_while_chunks_arrive_out_of_order(
        tmp_path: Path, blob: tuple) -> None:
    """A peer pull's helper feeds the whole-file hash as the verified prefix
    grows; finish() then has only the rest to hash, and the digest is right."""
    path, sha, chunks = blob
    data = path.read_bytes()
    store = ModelStore(tmp_path)
    p = store.partial("sha256-" + sha, SIZE, sha)
    p.open()
    try:
        def land(i: int) -> None:  # what a stream does: write the chunk, then mark it
            fd = os.open(p.part_path, os.O_WRONLY)
            os.pwrite(fd, data[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE], i * CHUNK_SIZE)
            os.close(fd)
            p.chunk_done(i, chunks[i])

        land(2)
        assert p.catch_up() == 0  # chunk 0 not there: nothing to hash yet
        land(0)
        assert p.catch_up() == CHUNK_SIZE  # 0 only: 1 is still missing
        land(1)
        assert p.catch_up() == SIZE  # 1 then the already-landed 2: the whole file
        assert p.finish() == sha
    finally:
        p.close()
    assert store.blob_file(sha).read_bytes() == data


def test_catch_up_refuses_a_prefix_whose_bytes_are_wrong(tmp_path: Path, blob: tuple) -> None:
    """The whole-file check still binds the chunks to the blob's name: a chunk
    journaled with its claimed digest but other bytes fails at finish()."""
    path, sha, chunks = blob
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    store = ModelStore(tmp_path)
    p = store.partial("sha256-" + sha, SIZE, sha)
    p.open()
    try:
        fd = os.open(p.part_path, os.O_WRONLY)
        os.pwrite(fd, bytes(data), 0)
        os.close(fd)
        for i in range(3):
            p.chunk_done(i, chunks[i])
        assert p.catch_up() == SIZE
        p.invalidate_hash()  # a failed attempt wins over the hashed prefix: rehash it all
        assert p.catch_up() == -1
        with pytest.raises(DigestMismatch):
            p.finish()
    finally:
        p.close()
    assert not store.has_blob(sha)


def test_a_write_that_fails_behind_the_reader_fails_the_pull(
        tmp_path: Path, blob: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writes run in a second thread: its error still ends the fetch, and
    nothing it did not write is journaled."""
    from swarmd.models import partial as partial_mod
    path, sha, _ = blob
    store = ModelStore(tmp_path)
    real = partial_mod.PartialBlob.write
    calls = []

    def failing(self: partial_mod.PartialBlob, offset: int, data: bytes) -> None:
        calls.append(offset)
        if offset >= CHUNK_SIZE:
            raise OSError(28, "No space left on device")
        real(self, offset, data)

    monkeypatch.setattr(partial_mod.PartialBlob, "write", failing)
    with pytest.raises(FetchError, match="No space left"):
        fetch_blob(store, target(sha), [Recording(path)])
    assert not store.has_blob(sha)
    monkeypatch.setattr(partial_mod.PartialBlob, "write", real)
    again = Recording(path)
    res = fetch_blob(store, target(sha), [again])  # chunk 0 was written and journaled: kept
    assert res.sha256 == sha and again.asked == [(CHUNK_SIZE, SIZE - CHUNK_SIZE)]
    assert store.blob_file(sha).read_bytes() == path.read_bytes()
