"""Peer pulls from full and partial holders: the chunk scheduler and fetch_swarm.

The scheduler (:class:`swarmd.models.chunkboard.ChunkBoard`) is pure: rarest
chunk first, each chunk only from a peer that holds it, a random order per
fetch, failed chunks back in play, dropped peers' streams ended.  The fetch
(:func:`swarmd.models.fetch.fetch_swarm`) runs with in-process holders (no
network: the data plane's tests cover the wire): a partial holder serves the
chunks it has, one that lies about a chunk is dropped quietly, a corrupt one
is dropped and counted, a transient failure is retried, and while it runs the
store offers the blob's verified chunks -- and only those -- to the data plane.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from swarmd.dataplane import wire
from swarmd.models import fetch as fetch_mod
from swarmd.models.chunkboard import ChunkBoard
from swarmd.models.fetch import (
    BadBytes,
    BlobTarget,
    FetchError,
    Gone,
    Holder,
    SourceError,
    WritingSource,
    fetch_swarm,
)
from swarmd.models.manifest import CHUNK_SIZE
from swarmd.models.partial import PartialBlob
from swarmd.models.store import ModelStore

# -- the scheduler ------------------------------------------------------------------------


def test_rarest_chunk_first_from_the_least_loaded_peer_that_holds_it() -> None:
    b = ChunkBoard(range(6), per_peer=2, rng=random.Random(1))
    b.set_peer("full", None)
    b.set_peer("p1", frozenset({0, 1, 2}))
    b.set_peer("p2", frozenset({1, 2}))
    # Chunks only the full holder has (3, 4, 5) go first, from it; with partial
    # holders known it serves one read at a time.
    first = b.take()
    assert first is not None and first[0] == "full" and first[1] in (3, 4, 5)
    assert b.busy("full") == 1
    # The full holder is at its limit: chunk 0 (full + p1) is next, from p1.
    assert b.take() == ("p1", 0)
    # Chunks 1 and 2 (three holders): p2 is the least loaded.
    p, c = b.take()  # type: ignore[misc]
    assert p == "p2" and c in (1, 2)
    assert b.take() == ("p1", 3 - c)  # equal load: by name
    assert b.pick() is None  # the chunks only the full holder has: it is busy
    b.done(first[1])
    got = b.pick()
    assert got is not None and got[0] == "full" and got[1] in (3, 4, 5)
    for chunk in range(6):
        b.done(chunk)
    assert b.finished() and b.take() is None and b.busy("full") == 0


def test_a_full_holder_is_left_the_chunks_partial_holders_hold_or_read() -> None:
    b = ChunkBoard(range(4), rng=random.Random(3))
    b.set_peer("full", None)
    b.set_peer("p", frozenset({0}), coming=frozenset({1}))  # holds 0, reads 1 now
    a = b.take()
    assert a is not None and a[0] == "full" and a[1] in (2, 3)  # neither held nor coming
    assert b.take() == ("p", 0)  # a read from the partial holder in flight
    b.done(a[1])
    assert b.take() == ("full", 5 - a[1])  # the other chunk nobody else has
    b.done(5 - a[1])
    # Chunk 1 is coming at p, and this fetch reads from p: left to p.
    assert b.pick() is None
    b.done(0)
    # Nothing in flight: the full holder may serve it (a slow or silent
    # partial holder cannot stall the fetch).
    assert b.pick() == ("full", 1)
    b.set_peer("p", frozenset({0, 1}))  # p has it now: from p, the least loaded
    assert b.pick() == ("p", 1)


def test_coming_is_what_a_partial_holder_reads_now_not_what_it_holds() -> None:
    b = ChunkBoard(range(3), rng=random.Random(0))
    b.set_peer("p", frozenset({0}), coming=frozenset({0, 1}))
    v = b.version
    b.set_peer("p", frozenset({0}), coming=frozenset({2}))  # replaced, not merged
    assert b.version > v
    b.set_peer("full", None)
    assert b.take() == ("full", 1)  # 2 is coming at p: left to it
    assert b.take() == ("p", 0)
    b.done(1)
    assert b.pick() is None  # only 2 is left: coming at p, and a read from p is out
    b.set_peer("p", frozenset({0}))  # no longer reading 2
    assert b.pick() == ("full", 2)


def test_a_fetch_starts_with_one_read_per_full_holder_until_ramped_up() -> None:
    b = ChunkBoard(range(4), per_peer=3, ramped=False)
    b.set_peer("full", None)
    assert b.take() == ("full", 0)
    assert b.pick() is None  # one read until the fetch has polled again
    b.ramp_up()
    assert b.take() == ("full", 1) and b.take() == ("full", 2)
    assert b.pick() is None  # per_peer reached


def test_a_partial_holder_is_preferred_over_the_full_one_at_equal_load() -> None:
    b = ChunkBoard([0], rng=random.Random(0))
    b.set_peer("full", None)
    b.set_peer("part", frozenset({0}))
    assert b.take() == ("part", 0)


def test_random_order_spreads_pullers_over_different_chunks() -> None:
    firsts = set()
    for seed in range(20):
        b = ChunkBoard(range(16), rng=random.Random(seed))
        b.set_peer("holder", None)
        b.set_peer("other puller", frozenset())  # known, holding nothing yet
        got = []
        for _ in range(3):  # one read at a time from the holder, with a puller known
            got.append(b.take())
            b.done(got[-1][1])  # type: ignore[index]
        firsts.add(tuple(got))
    assert len(firsts) > 10  # pullers starting together do not all read chunks 0, 1, 2


def test_one_peer_known_means_index_order_so_the_hash_can_follow() -> None:
    after = set()
    for seed in range(10):
        b = ChunkBoard(range(16), rng=random.Random(seed))
        b.set_peer("holder", None)
        got = [b.take() for _ in range(3)]
        assert got == [("holder", 0), ("holder", 1), ("holder", 2)]
        for _, c in got:
            b.done(c)
        b.set_peer("other puller", frozenset())  # from here on: the fetch's random order
        seq = []
        for _ in range(3):
            took = b.take()
            assert took is not None
            seq.append(took[1])
            b.done(took[1])
        after.add(tuple(seq))
    assert len(after) > 5


def test_failed_chunk_returns_and_dropped_peer_is_not_used() -> None:
    b = ChunkBoard([0, 1], rng=random.Random(0))
    b.set_peer("a", frozenset({0}))
    b.set_peer("b", None)
    assert b.take() == ("b", 1)  # the rarer chunk first
    assert b.take() == ("a", 0)  # then the least loaded holder
    b.failed(0)
    assert b.busy("a") == 0 and b.holds("a", 0) and not b.holds("a", 1)
    b.drop("a")
    assert b.dropped("a") and not b.set_peer("a", None)  # stays dropped
    assert b.peers() == ["b"]
    assert b.take() == ("b", 0) and b.busy("b") == 2
    assert b.servable()  # in flight
    b.done(0)
    b.failed(1)
    assert b.left() == 1 and b.take() == ("b", 1)


def test_a_partial_holder_grows_and_wakes_a_waiting_stream() -> None:
    b = ChunkBoard([0, 1], per_peer=1, rng=random.Random(0))
    b.set_peer("full", None)
    b.set_peer("p", frozenset())
    got0 = b.take()
    assert got0 is not None and got0[0] == "full"
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(b.take()))
    t.start()
    v = b.version
    t.join(0.2)
    assert t.is_alive()  # the other chunk: the full holder is busy, p does not hold it
    b.set_peer("p", frozenset({1 - got0[1]}))  # p verified it: the stream takes it
    t.join(2)
    assert got == [("p", 1 - got0[1])] and b.version > v
    assert b.set_peer("p", frozenset({got0[1]})) is False and b.holds("p", 0) and b.holds("p", 1)


def test_nothing_servable_without_a_holder_of_the_missing_chunks() -> None:
    b = ChunkBoard([0, 1, 2])
    b.set_peer("p", frozenset({0}))
    assert b.servable()
    assert b.take() == ("p", 0)
    b.done(0)
    assert not b.servable()  # 1 and 2: nobody live holds them
    b.close()
    assert b.take() is None


def test_bitmaps_round_trip_and_refuse_junk() -> None:
    for n in (1, 7, 8, 9, 100):
        chunks = frozenset(range(0, n, 3))
        raw = wire.bitmap_of(chunks, n)
        assert len(raw) == (n + 7) // 8 and wire.chunks_of(raw, n) == chunks
    assert wire.bitmap_of({0, 9}, 10) == bytes([0x80, 0x40])
    with pytest.raises(wire.WireError):
        wire.chunks_of(b"\x00", 10)  # too short
    with pytest.raises(wire.WireError):
        wire.chunks_of(bytes([0x00, 0x01]), 10)  # bit 15 set past 10 chunks
    have = wire.Have(10 * CHUNK_SIZE - 5, CHUNK_SIZE, frozenset({0, 9}), ("12D3KooWabc",))
    raw = wire.encode_have(have)
    assert raw.startswith(b'{"size":167772155,"chunk_size":16777216,"complete":false,'
                          b'"chunks":"gEA=","peers":["12D3KooWabc"]}')
    assert wire.decode_have(raw) == have
    full = wire.Have(5, CHUNK_SIZE, None)
    assert wire.decode_have(wire.encode_have(full)) == full
    for junk in (b"[]", b"{", b'{"size":-1,"chunk_size":1,"complete":true}',
                 b'{"size":1,"chunk_size":0,"complete":true}',
                 b'{"size":1,"chunk_size":1,"complete":1}',
                 b'{"size":10,"chunk_size":1,"complete":false}',
                 b'{"size":10,"chunk_size":1,"complete":false,"chunks":"!!"}',
                 b'{"size":1099511627776,"chunk_size":1,"complete":true}'):
        with pytest.raises(wire.WireError):
            wire.decode_have(junk)
    odd = wire.decode_have(b'{"size":1,"chunk_size":1,"complete":true,'
                           b'"peers":["ok1",7,"not/base58",""]}')
    assert odd.peers == ("ok1",)


# -- fetch_swarm with in-process holders ---------------------------------------------------

SIZE = 3 * CHUNK_SIZE + 4321  # four chunks


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(SIZE)


def _digests(data: bytes) -> tuple[str, tuple[str, ...]]:
    chunks = tuple(hashlib.sha256(data[i:i + CHUNK_SIZE]).hexdigest()
                   for i in range(0, len(data), CHUNK_SIZE))
    return hashlib.sha256(data).hexdigest(), chunks


class Peer:
    """Serves chunks of ``data`` it holds, shaped like PeerSource."""

    def __init__(self, data: bytes, label: str, have: frozenset[int] | None, *,
                 corrupt: bool = False, lies: bool = False, flaky: int = 0) -> None:
        self.data, self.label, self.have = data, label, have
        self.serves = have  # what it really holds (a liar's `have` says more)
        self.corrupt, self.lies, self.flaky = corrupt, lies, flaky
        self.asked: list[int] = []
        self.on_read = lambda: None

    def write_range(self, dest: Path, offset: int, length: int, expect: str) -> None:
        i = offset // CHUNK_SIZE
        self.asked.append(i)
        self.on_read()
        if self.flaky:
            self.flaky -= 1
            raise SourceError(f"{self.label}: connection reset")
        if self.serves is not None and i not in self.serves:
            if self.lies:
                raise Gone(f"{self.label}: incomplete: chunk {i} not verified here")
            raise AssertionError(f"chunk {i} asked of {self.label}, which does not hold it")
        piece = self.data[offset:offset + length]
        if self.corrupt:
            piece = bytes([piece[0] ^ 1]) + piece[1:]
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, piece, offset)
        finally:
            os.close(fd)
        if hashlib.sha256(piece).hexdigest() != expect:
            raise BadBytes(f"{self.label}: altered")


class Swarm:
    per_peer = 2
    streams = 4

    def __init__(self, peers: Sequence[Peer]) -> None:
        self.peers = {p.label: p for p in peers}
        self.polls = 0

    def holders(self) -> list[Holder]:
        self.polls += 1
        return [Holder(k, k, p.have) for k, p in self.peers.items()]

    def source(self, key: str) -> WritingSource:
        return self.peers[key]


def _target(data: bytes) -> BlobTarget:
    sha, chunks = _digests(data)
    return BlobTarget(key=f"sha256-{sha}", size=len(data), sha256=sha, chunks=chunks,
                      label="model.gguf")


def test_partial_holders_serve_what_they_have_and_bad_peers_are_dropped(
        tmp_path: Path, data: bytes) -> None:
    store = ModelStore(tmp_path / "s")
    target = _target(data)
    assert target.sha256 is not None
    partial = Peer(data, "peer partial", frozenset({1, 2}))
    liar = Peer(data, "peer liar", frozenset({0, 3}), lies=True)
    liar.serves = frozenset()  # it holds nothing, whatever it says
    corrupt = Peer(data, "peer corrupt", None, corrupt=True)
    full = Peer(data, "peer full", None, flaky=1)
    seen: list[object] = []

    def check_served() -> None:  # mid-fetch: the store offers verified chunks only
        served = store.served_blob(target.sha256 or "")
        seen.append(served)
        if isinstance(served, PartialBlob):
            before = served.have_chunks()
            for i in range(4):  # chunks only ever become verified, never the reverse
                lo = i * CHUNK_SIZE
                covered = served.covers(lo, min(SIZE, lo + CHUNK_SIZE))
                assert covered >= (i in before) and covered <= (i in served.have_chunks())
            assert not served.covers(0, SIZE) or len(served.have_chunks()) == 4
            assert not served.covers(0, SIZE + 1) and not served.covers(5, 5)

    for p in (partial, liar, corrupt, full):
        p.on_read = check_served
    sources: list[str] = []
    res = fetch_swarm(store, target, Swarm([partial, liar, corrupt, full]),
                      on_source=sources.append)
    assert store.blob_file(res.sha256).read_bytes() == data
    assert res.sha256 == target.sha256 and not res.present and res.pinned
    assert res.bad_sources == {"peer corrupt": 1}  # the liar is dropped, not counted
    assert all(i in partial.have for i in partial.asked)  # type: ignore[operator]
    assert sum(res.served.values()) == SIZE and "peer corrupt" not in res.served
    assert "peer liar" not in res.served
    assert sorted(sources) == ["peer corrupt", "peer full", "peer liar", "peer partial"]
    assert any(isinstance(s, PartialBlob) for s in seen)
    assert store.served_blob(target.sha256) == store.blob_file(target.sha256)  # complete now
    assert store.list() == []  # a blob, not a model: nothing listed before a manifest


def test_a_transient_failure_is_retried_and_three_in_a_row_bench_the_peer(
        tmp_path: Path, data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod, "SWARM_STALL", 0.6)
    target = _target(data)
    store = ModelStore(tmp_path / "s")
    flaky = Peer(data, "peer flaky", None, flaky=2)  # two resets, then it serves
    half = Peer(data, "peer half", frozenset({0, 1}))
    res = fetch_swarm(store, target, Swarm([flaky, half]))
    assert store.blob_file(res.sha256).read_bytes() == data
    assert res.bad_sources == {} and res.served["peer flaky"] >= SIZE - 2 * CHUNK_SIZE
    store2 = ModelStore(tmp_path / "s2")
    dead = Peer(data, "peer dead", None, flaky=100)
    with pytest.raises(FetchError, match="3 failures in a row") as ei:
        fetch_swarm(store2, target, Swarm([dead, Peer(data, "peer half", frozenset({0, 1}))]))
    assert ei.value.bad_sources == {}  # failing is not serving bad bytes
    assert len(dead.asked) == 3  # benched for SWARM_BENCH s, longer than the stall here
    # Benched, it comes back once the bench time is over.
    b = ChunkBoard([0])
    b.drop("p", until=0.0)
    assert b.benched() == 1 and b.set_peer("p", None) and b.take() == ("p", 0)


def test_missing_chunks_nobody_holds_fail_after_the_stall_limit(
        tmp_path: Path, data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod, "SWARM_STALL", 0.6)
    store = ModelStore(tmp_path / "s")
    target = _target(data)
    with pytest.raises(FetchError, match="2 chunks could not be fetched"):
        fetch_swarm(store, target, Swarm([Peer(data, "peer half", frozenset({0, 1}))]))
    assert not store.has_blob(target.sha256 or "")
    # The verified half stays as a resumable partial, and the next pull keeps it.
    full = Peer(data, "peer full", None)
    res = fetch_swarm(store, target, Swarm([full]))
    assert res.resumed == 2 * CHUNK_SIZE and sorted(full.asked) == [2, 3]
    assert store.blob_file(res.sha256).read_bytes() == data


def test_no_holder_at_all_fails_at_once(tmp_path: Path, data: bytes) -> None:
    store = ModelStore(tmp_path / "s")
    with pytest.raises(FetchError, match="no peer holds them"):
        fetch_swarm(store, _target(data), Swarm([]))
