"""Models fetched from peers: the puller's ``peer_plan`` over the data plane.

Theory of operation
-------------------
Every node gossips its store's inventory (``models`` in its record: manifest
digests and names, :mod:`swarmd.models.inventory`).  :meth:`PeerModels.plan`
is the :class:`~swarmd.models.puller.Puller`'s ``peer_plan(ref)`` and runs in
the pull's worker thread; ``ref`` is a model name (or ``sha256:`` digest) or
the canonical text of a source spec.

1. Holders: alive (or suspect) peers with a data-plane address whose inventory lists a
   manifest matching ``ref`` -- by name or digest straight from the
   inventory; by source through the manifests themselves, fetched once per
   digest (``GET /dp/1/blobs/<manifest hex>``, verified against the digest,
   then the strict manifest decoder) and cached: a digest names its bytes
   forever.
2. The plan (:func:`~swarmd.models.sources.peers.manifest_plan`): every
   file carries its sha256 and chunk digests, and a :class:`PeerSwarm`:
   the fetch engine (:func:`~swarmd.models.fetch.fetch_swarm`) polls it
   every 0.5 s for who holds which chunks.  Its holders are the full copies
   of the plan plus **partial holders**: nodes still pulling the same blob,
   which serve the chunks they have verified.  They are found through the
   data plane's ``have`` request (``GET /dp/1/have/<blob hex>``): a node
   answers with its chunk bitmap and the members that asked it about that
   blob in the last minute (every puller asks the full holders, so the full
   holders introduce the pullers to each other; partial holders' answers
   name more).  Each chunk is a ranged read
   (:meth:`~swarmd.dataplane.client.DataPlaneClient.fetch_range`, up to
   :data:`STREAMS_PER_PEER` at once per holder and :data:`STREAMS_PER_PULL`
   in all), rarest chunk first, from the least loaded holder that has it
   (:mod:`swarmd.models.chunkboard`), written at its offset and verified
   against its digest on arrival; a peer that serves a bad chunk is dropped
   and counted (``bad_sources``) and its chunk goes back to the others.
   Meanwhile this node serves its own verified chunks to the other pullers.
   ``[models] max_transfer_rate`` paces it all.
3. The data-plane calls are coroutines on the asyncio loop; the worker
   thread waits on them (``run_coroutine_threadsafe``).

No holder: ``None``, and the puller goes to the source itself (for a name:
an error saying no peer offers it).  Only admitted members are ever asked,
and a node serves only admitted members (the plane's handshake gate).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from swarmd.core.snapshot import Snapshot
from swarmd.dataplane import wire
from swarmd.dataplane.client import BlobError, DataPlaneClient
from swarmd.models.fetch import AnySource, BadBytes, Gone, Holder, SourceError, WritingSource
from swarmd.models.inventory import parse_inventory
from swarmd.models.manifest import CHUNK_SIZE, FileEntry, Manifest, ManifestError, decode
from swarmd.models.sources.base import Plan
from swarmd.models.sources.peers import manifest_plan

log = logging.getLogger("swarmd.models")
T = TypeVar("T")

#: Seconds one chunk read may take (16 MiB at 1 MB/s, with room).
CHUNK_WITHIN = 120.0
#: Chunk reads in flight per holder: one stream at a time leaves the link and
#: both ends idle between chunks (request, first byte, the chunk's journal
#: entry); a few keep the pipe full.  Measured on loopback, Gemma 253 MB from
#: one peer: 1 stream 3.0 s, 3 streams see bench/peer_pull.py.
STREAMS_PER_PEER = 3
#: Chunk reads in flight per pull, over all holders: more streams cost CPU
#: per byte (smaller reads, more wake-ups) without filling the pipe better.
STREAMS_PER_PULL = 6
#: Seconds one ``have`` poll may take (all peers asked at once).
HAVE_WITHIN = 2.0
#: Most partial holders asked per poll.
MAX_PARTIAL_PEERS = 16


class PeerSource:
    """One peer serving one blob: the fetch engine's ``WritingSource``."""

    def __init__(self, peers: PeerModels, node_id: str, name: str, sha256: str) -> None:
        self.peers = peers
        self.node_id = node_id
        self.sha256 = sha256
        self.label = f"peer {name or node_id[-8:]}"

    def write_range(self, dest: Path, offset: int, length: int, expect: str) -> None:
        try:
            self.peers.run(self.peers.client.fetch_range(
                self.node_id, self.sha256, offset, offset + length, dest, expect=expect,
                within=CHUNK_WITHIN))
        except BlobError as exc:
            kind = {"altered": BadBytes, "not_found": Gone, "incomplete": Gone,
                    "range": Gone}.get(exc.reason, SourceError)
            raise kind(f"{self.label}: {exc}") from None


class PeerSwarm:
    """The holders of one blob for :func:`~swarmd.models.fetch.fetch_swarm`: the
    plan's full holders, and the partial holders found through ``have``."""

    per_peer = STREAMS_PER_PEER
    streams = STREAMS_PER_PULL

    def __init__(self, peers: PeerModels, sha256: str, size: int,
                 full: list[tuple[str, str]]) -> None:
        self.peers = peers
        self.sha256 = sha256
        self.size = size
        self.full = dict(full)  # node id -> name
        self.partial: dict[str, str] = {}  # candidates: node id -> name

    def source(self, key: str) -> WritingSource:
        return PeerSource(self.peers, key, self.full.get(key) or self.partial.get(key, ""),
                          self.sha256)

    def _ask(self, ids: list[str]) -> list[Any]:
        async def one(node_id: str) -> Any:
            try:
                return await self.peers.client.have(node_id, self.sha256, within=HAVE_WITHIN)
            except BlobError as exc:
                return exc

        async def every() -> list[Any]:
            return list(await asyncio.gather(*(one(n) for n in ids)))

        return self.peers.run(every(), timeout=HAVE_WITHIN + 1.0)

    def holders(self) -> list[Holder]:
        alive = {node_id: name for node_id, name, _ in self.peers._peers(any_inventory=True)}
        # A full holder membership does not call alive now is left out of this
        # poll (its streams fail and it is benched; it is back once alive).
        out = [Holder(n, f"peer {name or n[-8:]}", None) for n, name in self.full.items()
               if n in alive]
        asked: set[str] = set()
        todo = list(self.full)
        for _round in range(2):  # peers named in the first answers are asked at once
            ids = [n for n in todo if n in alive and n not in asked][:MAX_PARTIAL_PEERS + 8]
            if not ids:
                break
            asked.update(ids)
            todo = []
            try:
                answers = self._ask(ids)
            except BlobError:
                break
            for node_id, ans in zip(ids, answers, strict=True):
                if not isinstance(ans, wire.Have):
                    continue
                for p in ans.peers:
                    if p in alive and p not in self.full and p not in asked:
                        self.partial.setdefault(p, alive[p])
                        todo.append(p)
                if node_id in self.full or ans.chunk_size != CHUNK_SIZE or \
                        ans.size != self.size:
                    continue
                name = alive[node_id]
                out.append(Holder(node_id, f"peer {name or node_id[-8:]}", ans.chunks,
                                  ans.coming))
            todo += [n for n in self.partial if n not in asked][:MAX_PARTIAL_PEERS]
        return out


class PeerModels:
    """Finds models on peers and plans their transfer (``Puller.peer_plan``)."""

    def __init__(self, client: DataPlaneClient, snapshot: Callable[[], Snapshot],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.snapshot = snapshot
        self.loop = loop
        self._manifests: dict[str, Manifest] = {}  # manifest hex -> manifest (immutable)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop from a worker thread and wait for it."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise BlobError("timeout", "no answer in time") from None

    def _peers(self, any_inventory: bool = False,
               ) -> list[tuple[str, str, dict[str, tuple[str, ...]]]]:
        """(node id, name, inventory) of alive or suspect peers (admission
        serves both, and a busy node is often suspect for a moment) with a data
        plane and a non-empty inventory (any inventory with ``any_inventory``)."""
        out = []
        for n in self.snapshot().nodes:
            if n.is_self or n.state not in ("alive", "suspect") or not n.info.dp:
                continue
            inv = parse_inventory(n.record.get("models"))
            if inv or any_inventory:
                out.append((n.node_id, n.name, inv))
        return out

    def _manifest(self, hexd: str, holders: list[str]) -> Manifest | None:
        have = self._manifests.get(hexd)
        if have is not None:
            return have
        for node_id in holders:
            try:
                raw = self.run(self.client.fetch_object(node_id, hexd), timeout=30.0)
                manifest = decode(raw)
            except (BlobError, ManifestError) as exc:
                log.info("peer manifest unusable",
                         extra={"fields": {"node": node_id[-8:], "digest": hexd[:12],
                                            "error": str(exc)}})
                continue
            self._manifests[hexd] = manifest
            return manifest
        return None

    def plan(self, ref: str) -> Plan | None:
        peers = self._peers()
        by_digest: dict[str, list[tuple[str, str]]] = {}
        named: list[str] = []
        for node_id, name, inv in peers:
            for digest, names in inv.items():
                hexd = digest.removeprefix("sha256:")
                by_digest.setdefault(hexd, []).append((node_id, name))
                if (ref == digest or ref in names) and hexd not in named:
                    named.append(hexd)
        candidates = named or list(by_digest)  # by name first; else look at sources
        for hexd in candidates:
            holders = by_digest[hexd]
            manifest = self._manifest(hexd, [h for h, _ in holders])
            if manifest is None:
                continue
            if not named and manifest.source != ref:
                continue
            log.info("pulling from peers", extra={"fields": {
                "ref": ref, "digest": hexd[:12], "peers": ",".join(n for _, n in holders)}})

            def sources(f: FileEntry, holders: list[tuple[str, str]] = holders,
                        ) -> list[AnySource]:
                # Interleaved (peer 1, peer 2, ..., peer 1, ...): the fetch engine
                # starts one worker per entry, all on one shared chunk queue.
                return [PeerSource(self, node_id, name, f.sha256)
                        for _ in range(STREAMS_PER_PEER) for node_id, name in holders]

            def swarm(f: FileEntry, holders: list[tuple[str, str]] = holders) -> PeerSwarm:
                return PeerSwarm(self, f.sha256, f.size, holders)

            return manifest_plan(manifest, sources, swarm)
        return None

    # -- other nodes' stores (swarmctl rm --node / --everywhere) -------------------------

    def find_node(self, text: str) -> tuple[str, str] | None:
        """(node id, name) of the member named ``text`` (id, name or id suffix)."""
        for n in self.snapshot().nodes:
            if text in (n.node_id, n.name) or (len(text) >= 6 and n.node_id.endswith(text)):
                return n.node_id, n.name
        return None

    def holders(self, ref: str) -> list[tuple[str, str]]:
        """(node id, name) of the alive peers whose inventory lists ``ref``."""
        out = []
        for node_id, name, inv in self._peers():
            if any(ref == d or ref in names for d, names in inv.items()):
                out.append((node_id, name))
        return out

    async def remove_on(self, node_id: str, name: str) -> tuple[int, dict[str, Any]]:
        """Remove ``name`` from ``node_id``'s store over the data plane."""
        return await self.client.remove_model(node_id, name)
