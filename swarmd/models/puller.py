"""A pull: source spec in, a stored, verified model out, with progress events.

Theory of operation
-------------------
:meth:`Puller.pull` runs in a worker thread (the control API calls it through
``asyncio.to_thread``; blocking I/O throughout):

1. parse the spec; a bare NAME already in the store is answered at once, a
   NAME not here goes to ``peer_plan`` (peers holding it, over the data
   plane: :mod:`swarmd.runtime.peer_models`), and so does any other spec
   but a local path, first, by its canonical text: a peer holding a model
   pulled from that source serves it before the internet is asked;
2. resolve it to a plan (metadata requests only) and check the plan before
   writing anything: a valid model name, safe relative paths, no pickle
   weights unless ``allow_pickle``, and room (:meth:`ModelStore.reserve`:
   eviction under ``max_disk``, then the file system's free space);
3. fetch each file (:func:`~swarmd.models.fetch.fetch_blob`; an Ollama store
   import hard-links after hashing) and verify it: whole-file sha256 when
   the source gives it, the Hub's git blob id for small files, and a content
   sniff that refuses pickles dressed under another name;
4. read the model's metadata from its own files, build the manifest, check
   it round-trips through the strict decoder, and add it to the store.

Progress is a stream of JSON-ready dicts (``status`` = ``resolving``,
``pulling``, ``verifying``, ``success``); the last one carries ``name``,
``digest`` and ``size``.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from swarmd.models.fetch import (
    BlobTarget,
    FetchError,
    FetchResult,
    RateLimiter,
    SourceError,
    fetch_blob,
    fetch_swarm,
)
from swarmd.models.manifest import (
    MAX_FILE_SIZE,
    MAX_FILES,
    FileEntry,
    Manifest,
    ManifestError,
    _check_tree,
    check_path,
    decode,
)
from swarmd.models.meta import MetaError, describe, is_pickle_path, looks_like_pickle, preload
from swarmd.models.partial import DigestMismatch
from swarmd.models.sources.base import Plan, RemoteFile, SourceSettings
from swarmd.models.spec import (
    HfSpec,
    NameSpec,
    OllamaSpec,
    PathSpec,
    SpecError,
    UrlSpec,
    format_spec,
    parse_spec,
    valid_name,
)
from swarmd.models.store import ModelStore, NotFound, StoredModel, StoreError

Event = dict[str, Any]
log = logging.getLogger("swarmd.models")
TEXT_SUFFIXES = (".json", ".txt", ".md", ".jinja", ".model", ".tiktoken", ".gguf", ".safetensors")


class PullError(StoreError):
    """A pull refused or failed; the message says why (nothing unverified is kept)."""


def git_blob_oid(path: os.PathLike[str] | str) -> str:
    """The git object id of a file's contents (the Hub's id for non-LFS files)."""
    size = os.path.getsize(path)
    h = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            h.update(data)
    return h.hexdigest()


class Puller:
    def __init__(self, store: ModelStore, settings: SourceSettings, *,
                 limiter: RateLimiter | None = None,
                 peer_plan: Callable[[str], Plan | None] | None = None) -> None:
        self.store = store
        self.settings = settings
        self.limiter = limiter or RateLimiter(0)
        self.peer_plan = peer_plan
        #: Sources dropped for serving bad bytes, with counts (label -> count), all pulls.
        self.bad_sources: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------ resolving
    def resolve(self, text: str) -> Plan | StoredModel:
        try:
            spec = parse_spec(text)
        except SpecError as exc:
            raise PullError(str(exc)) from None
        try:
            if isinstance(spec, NameSpec):
                have = self.store.find(spec.name)
                if have is not None:
                    return have
                plan = self.peer_plan(spec.name) if self.peer_plan else None
                if plan is None:
                    raise PullError(f"no model {spec.name!r} in this node's store, and no peer "
                                    "offers it; give a source (hf:, ollama:, http(s)://, /path)")
                return plan
            if self.peer_plan is not None and not isinstance(spec, PathSpec):
                # The swarm before the internet: a peer holding a model pulled
                # from this very source serves it (verified chunk by chunk).
                plan = self.peer_plan(format_spec(spec))
                if plan is not None:
                    return plan
            if isinstance(spec, HfSpec):
                from swarmd.models.sources.hf import hf_plan

                return hf_plan(spec, self.settings)
            if isinstance(spec, OllamaSpec):
                from swarmd.models.sources.ollama import ollama_plan

                return ollama_plan(spec, self.settings)
            if isinstance(spec, UrlSpec):
                from swarmd.models.sources.http import url_plan

                return url_plan(spec.url, self.settings.timeout)
            assert isinstance(spec, PathSpec)
            from swarmd.models.sources.local import path_plan

            return path_plan(spec)
        except SourceError as exc:
            raise PullError(str(exc)) from None

    def check(self, plan: Plan, name: str) -> None:
        """Refuse an unsafe plan before any byte is written."""
        if not valid_name(name):
            raise PullError(f"{name!r} is not a usable model name; give one with --name")
        if not plan.files or len(plan.files) > MAX_FILES:
            raise PullError(f"a model has 1 to {MAX_FILES} files, this one {len(plan.files)}")
        entries = []
        for f in plan.files:
            try:
                check_path(f.path)
            except ManifestError as exc:
                raise PullError(f"refused: {exc}") from None
            if f.size > MAX_FILE_SIZE:
                raise PullError(f"refused: {f.path} is {f.size} bytes, over the {MAX_FILE_SIZE} limit")
            if is_pickle_path(f.path) and not self.settings.allow_pickle:
                raise PullError(f"refused: {f.path} is pickle-based weights (loading runs code); "
                                "set [models] allow_pickle = true to accept them")
            entries.append(FileEntry(f.path, f.size, "0" * 64, ()))
        try:
            _check_tree(tuple(entries))
        except ManifestError as exc:
            raise PullError(f"refused: {exc}") from None

    def needed_bytes(self, plan: Plan) -> int:
        total = 0
        for f in plan.files:
            if f.sha256 and self.store.has_blob(f.sha256):
                continue
            if plan.link_local and f.local_path is not None and \
                    os.stat(f.local_path).st_dev == os.stat(self.store.root).st_dev:
                continue
            part = self.store.root / "partial" / f"{self._key(f)}.part"
            have = part.stat().st_blocks * 512 if part.exists() else 0
            total += max(0, f.size - have)
        return total

    @staticmethod
    def _key(f: RemoteFile) -> str:
        if f.sha256:
            return f"sha256-{f.sha256}"
        return "id-" + hashlib.sha256(f.identity.encode()).hexdigest()

    # --------------------------------------------------------------- pulling
    def pull(self, text: str, *, name: str | None = None,
             progress: Callable[[Event], None] = lambda e: None,
             cancel: threading.Event | None = None) -> StoredModel:
        cancel = cancel or threading.Event()
        progress({"status": "resolving", "source": text})
        got = self.resolve(text)
        if isinstance(got, StoredModel):
            self.store.touch(got.digest)
            progress(self._done(got))
            return got
        plan = got
        model_name = name or plan.name
        self.check(plan, model_name)
        preload([f.path for f in plan.files])
        known = [f.sha256 for f in plan.files if f.sha256]
        self.store.pin(known)
        pinned: list[str] = []  # blobs fetch_blob pinned for us until the manifest is in
        dropped: collections.Counter[str] = collections.Counter()  # this pull's bad sources
        served: collections.Counter[str] = collections.Counter()  # bytes per peer (swarm)
        try:
            needed = self.needed_bytes(plan)
            self.store.reserve(needed)
            entries = self._fetch_all(plan, progress, cancel, pinned, dropped, served)
            progress({"status": "verifying", "name": model_name})
            files = [(e.path, self.store.blob_file(e.sha256)) for e in entries]
            try:
                meta = describe(files)
            except MetaError as exc:
                raise PullError(f"refused: {exc}") from None
            manifest = Manifest(
                name=model_name, aliases=tuple(a for a in plan.aliases if a != model_name),
                source=plan.source, format=meta.format, files=tuple(entries),
                architecture=meta.architecture, parameters=meta.parameters,
                quantization=meta.quantization, context_length=meta.context_length)
            decode(manifest.encode())  # the strict decoder must accept what we store
            model = self.store.add(manifest)
        except (SourceError, ManifestError) as exc:
            raise PullError(str(exc)) from None
        except DigestMismatch as exc:
            raise PullError(f"refused: {exc}") from None
        finally:
            self.store.unpin(known)
            self.store.unpin(pinned)
            self.store.gc()
        done = self._done(model)
        if served:  # a peer pull: bytes each peer (full or partial holder) served
            done["served_by"] = dict(served)
            log.info("pulled from peers", extra={"fields": {
                "model": model.manifest.name,
                "served_by": ",".join(f"{k}={v}" for k, v in served.items())}})
        if dropped:  # sources that served bad bytes (peers: corrupt copies), dropped
            done["dropped_sources"] = dict(dropped)
            log.warning("pull dropped sources that served bad bytes",
                        extra={"fields": {"model": model.manifest.name, "sources": ",".join(
                            f"{k}={v}" for k, v in dropped.items())}})
        progress(done)
        return model

    def _fetch_all(self, plan: Plan, progress: Callable[[Event], None],
                   cancel: threading.Event, pinned: list[str],
                   dropped: collections.Counter[str],
                   served: collections.Counter[str]) -> list[FileEntry]:
        meter = _Meter(plan, progress)
        entries: list[FileEntry] = []
        for f in plan.files:
            meter.start_file(f)
            if plan.link_local and f.local_path is not None and f.sha256:
                sha = self._import_local(f)
                meter.report(f.size)
            else:
                target = BlobTarget(key=self._key(f), size=f.size, sha256=f.sha256,
                                    chunks=f.chunks, label=f.path)
                res: FetchResult
                try:
                    if f.swarm is not None:
                        res = fetch_swarm(self.store, target, f.swarm(), progress=meter.report,
                                          cancel=cancel, limiter=self.limiter,
                                          on_source=meter.labels.append)
                    else:
                        sources = list(f.sources()) if f.sources is not None else [f.open()]
                        meter.labels = list(dict.fromkeys(s.label for s in sources))
                        res = fetch_blob(self.store, target, sources, progress=meter.report,
                                         cancel=cancel, limiter=self.limiter)
                except FetchError as exc:
                    self.bad_sources.update(exc.bad_sources)
                    dropped.update(exc.bad_sources)
                    raise
                sha = res.sha256
                if res.pinned:
                    pinned.append(sha)
                self.bad_sources.update(res.bad_sources)
                dropped.update(res.bad_sources)
                served.update(res.served)
            self._verify_file(f, sha)
            entries.append(FileEntry(f.path, f.size, sha, self.store.chunk_list(sha)))
            meter.end_file()
        return entries

    def _import_local(self, f: RemoteFile) -> str:
        assert f.local_path is not None and f.sha256 is not None
        if self.store.has_blob(f.sha256):
            return f.sha256
        h = hashlib.sha256()
        with open(f.local_path, "rb") as src:
            while data := src.read(1 << 22):
                h.update(data)
        if h.hexdigest() != f.sha256:
            raise PullError(f"refused: {f.local_path} does not hash to its name sha256:{f.sha256}")
        return self.store.adopt_file(f.local_path, f.sha256, link=True)

    def _verify_file(self, f: RemoteFile, sha: str) -> None:
        path = self.store.blob_file(sha)
        if f.git_oid and len(f.git_oid) == 40 and git_blob_oid(path) != f.git_oid:
            self.store.gc()
            raise PullError(f"refused: {f.path} does not match the Hub's git blob id {f.git_oid}")
        if os.path.getsize(path) != f.size:
            raise PullError(f"refused: {f.path} is not the announced {f.size} bytes")
        if not f.path.lower().endswith(TEXT_SUFFIXES) and not self.settings.allow_pickle:
            with open(path, "rb") as fh:
                if looks_like_pickle(fh.read(4)):
                    raise PullError(f"refused: {f.path} is a pickle (loading runs code); "
                                    "set [models] allow_pickle = true to accept it")

    @staticmethod
    def _done(model: StoredModel) -> Event:
        return {"status": "success", "name": model.manifest.name, "digest": model.digest,
                "size": model.manifest.size, "path": str(model.main_file)}


class _Meter:
    """Turns a blob's byte count into overall progress events with a rate
    (bytes/s fetched in this pull: resumed bytes do not count as speed)."""

    def __init__(self, plan: Plan, progress: Callable[[Event], None]) -> None:
        self.total = sum(f.size for f in plan.files)
        self.progress = progress
        self.started = time.monotonic()
        self.base = 0  # bytes of the files already done
        self.fetched = 0  # bytes fetched in earlier files of this pull
        self.labels: list[str] = []
        self.file: RemoteFile | None = None
        self.first: int | None = None
        self.last = 0

    def start_file(self, f: RemoteFile) -> None:
        self.file, self.first, self.last, self.labels = f, None, 0, []

    def report(self, n: int) -> None:
        assert self.file is not None
        if self.first is None:
            self.first = n
        self.last = n
        elapsed = max(1e-6, time.monotonic() - self.started)
        self.progress({"status": "pulling", "file": self.file.path, "completed": self.base + n,
                       "total": self.total, "file_completed": n, "file_total": self.file.size,
                       "rate": round((self.fetched + n - self.first) / elapsed),
                       "sources": self.labels})

    def end_file(self) -> None:
        assert self.file is not None
        self.fetched += self.last - (self.first or 0)
        self.base += self.file.size


__all__ = ["Puller", "PullError", "NotFound"]
