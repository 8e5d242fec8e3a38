"""The node's model store: content-addressed blobs, manifests, names, eviction.

Theory of operation
-------------------
Layout under ``[models] dir``::

    blobs/sha256/<hex>        complete, verified blobs (mode 0444): the only bytes served
    chunks/<hex>.json         the blob's chunk digests (16 MiB chunks)
    partial/<key>.part|.json  blobs being fetched, with their chunk journal (never served)
    manifests/<hex>.json      one canonical manifest per model, named by its digest
    models/<hex>/<path>       the model directory an engine loads: hard links to blobs
    index.json                node-local state: pulled_at and last_used per manifest
    locks/                    flock files (one per blob key, one for the index)

A model exists once its manifest file exists; the manifest is written last,
after every blob it names is in ``blobs/`` and its model directory is linked,
so a crash at any point leaves either no model or a whole one.  A name (or
alias) resolves to the most recently pulled manifest carrying it.

Removing a model deletes its manifest, then its directory, then every blob no
other manifest names (and no pull in progress pinned).  :meth:`reserve` runs
before a pull writes anything: under ``max_disk`` it evicts least recently
used models that no engine uses (``in_use`` names them) until the pull fits,
then checks the file system's free space, and raises :class:`NoSpaceError`
naming the bytes needed when either cannot be met.

For the data plane, :meth:`open_blob` / :meth:`read_range` give a complete,
verified blob by digest -- never a partial one.  :meth:`served_blob` (the
data plane server's ``blob_path``) also names a blob a peer pull is still
fetching (:meth:`serving`): the server sends only its verified chunks, so
pullers feed each other; nothing else in the store sees it.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from swarmd.models.fsutil import atomic_write, fsync_dir, locked
from swarmd.models.manifest import (
    CHUNK_SIZE,
    Manifest,
    ManifestError,
    check_path,
    chunk_count,
    decode,
)
from swarmd.models.partial import PartialBlob

#: Free space a pull always leaves on the file system (bytes).
FREE_MARGIN = 64 * 1024 * 1024


class StoreError(Exception):
    """A store operation that cannot be done; the message says why."""


class NotFound(StoreError):
    pass


class NoSpaceError(StoreError):
    pass


def hex_of(digest: str) -> str:
    """``sha256:<hex>`` or ``<hex>`` -> ``<hex>``; StoreError if malformed."""
    h = digest.removeprefix("sha256:")
    if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise StoreError(f"{digest!r} is not a sha256 digest")
    return h


def human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@dataclass(frozen=True)
class StoredModel:
    digest: str  # sha256:<hex> of the manifest
    manifest: Manifest
    path: Path  # the model directory
    pulled_at: float
    last_used: float

    @property
    def main_file(self) -> Path:
        """The file an engine loads: the largest GGUF, else the directory."""
        ggufs = [f for f in self.manifest.files if f.path.lower().endswith(".gguf")]
        if ggufs:
            return self.path / max(ggufs, key=lambda f: f.size).path
        return self.path

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {"name": m.name, "aliases": list(m.aliases), "digest": self.digest,
                "size": m.size, "source": m.source, "format": m.format,
                "architecture": m.architecture, "parameters": m.parameters,
                "quantization": m.quantization, "context_length": m.context_length,
                "path": str(self.main_file), "pulled_at": self.pulled_at,
                "last_used": self.last_used, "files": [f.path for f in m.files]}


class ModelStore:
    def __init__(
        self, root: Path, *, max_disk: int = 0,
        in_use: Callable[[], Collection[str]] = frozenset,
        free_space: Callable[[Path], int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.max_disk = max_disk
        self.in_use = in_use
        self._free_space = free_space or (lambda p: shutil.disk_usage(p).free)
        self.clock = clock
        self._pins: dict[str, int] = {}
        self._pin_lock = threading.Lock()
        self._serving: dict[str, PartialBlob] = {}  # blob hex -> open partial of a peer pull
        for sub in ("blobs/sha256", "chunks", "partial", "manifests", "models", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- blobs
    def blob_file(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / hex_of(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_file(digest).is_file()

    def served_blob(self, digest: str) -> Path | PartialBlob | None:
        """The file of a complete, verified blob -- or of a stored manifest, which
        is named by the sha256 of its bytes too -- or the open partial of a blob
        a peer pull is fetching (whose verified chunks may be served), or None:
        the data plane server's ``blob_path``, so peers fetch manifests and blobs
        alike by digest."""
        try:
            p = self.blob_file(digest)
        except StoreError:
            return None
        if p.is_file():
            return p
        m = self.root / "manifests" / f"{p.name}.json"
        if m.is_file():
            return m
        with self._pin_lock:
            return self._serving.get(p.name)

    @contextlib.contextmanager
    def serving(self, digest: str, partial: PartialBlob) -> Iterator[None]:
        """While inside, :meth:`served_blob` offers ``partial``'s verified chunks."""
        h = hex_of(digest)
        with self._pin_lock:
            self._serving[h] = partial
        try:
            yield
        finally:
            with self._pin_lock:
                if self._serving.get(h) is partial:
                    del self._serving[h]

    def open_blob(self, digest: str) -> BinaryIO:
        """A complete, verified blob opened for reading; NotFound otherwise."""
        try:
            return open(self.blob_file(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"no complete blob {digest}") from None

    def blob_size(self, digest: str) -> int:
        try:
            return self.blob_file(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no complete blob {digest}") from None

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of a complete blob (the data plane's one call)."""
        with self.open_blob(digest) as f:
            size = os.fstat(f.fileno()).st_size
            if offset < 0 or length < 0 or offset + length > size:
                raise StoreError(f"range {offset}+{length} outside blob {digest} of {size} bytes")
            return os.pread(f.fileno(), length, offset)

    def write_chunk_list(self, digest: str, chunks: list[str]) -> None:
        atomic_write(self.root / "chunks" / f"{hex_of(digest)}.json", json.dumps(chunks).encode())

    def chunk_list(self, digest: str) -> tuple[str, ...]:
        """Chunk digests of a complete blob (recomputed if the sidecar is missing)."""
        h = hex_of(digest)
        size = self.blob_size(digest)
        try:
            doc = json.loads((self.root / "chunks" / f"{h}.json").read_bytes())
            if isinstance(doc, list) and len(doc) == chunk_count(size):
                return tuple(str(c) for c in doc)
        except (OSError, ValueError):
            pass
        import hashlib

        out = []
        with self.open_blob(digest) as f:
            while chunk := f.read(CHUNK_SIZE):
                out.append(hashlib.sha256(chunk).hexdigest())
        self.write_chunk_list(digest, out)
        return tuple(out)

    def partial(self, key: str, size: int, sha256: str | None) -> PartialBlob:
        """An unopened partial blob; use through :meth:`fetching`."""
        if "/" in key or key.startswith("."):
            raise StoreError(f"bad partial key {key!r}")
        return PartialBlob(self, key, size, sha256)

    def blob_lock(self, key: str) -> Any:
        return locked(self.root / "locks" / f"{key}.lock")

    def partial_bytes(self) -> int:
        return sum(p.stat().st_blocks * 512 for p in (self.root / "partial").glob("*.part"))

    def adopt_file(self, src: Path, sha256: str, *, link: bool) -> str:
        """Put an existing, already verified file in ``blobs/`` (hard link if ``link``
        and the file system allows, else a copy); returns the digest."""
        final = self.blob_file(sha256)
        if final.exists():
            return sha256
        tmp = self.root / "partial" / f"adopt-{hex_of(sha256)}.{os.getpid()}.part"
        tmp.unlink(missing_ok=True)
        try:
            if not link:
                raise OSError("copy requested")
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
        self.chunk_list(sha256)
        return sha256

    # ---------------------------------------------------------------- pins
    def pin(self, digests: Iterable[str]) -> None:
        with self._pin_lock:
            for d in digests:
                self._pins[hex_of(d)] = self._pins.get(hex_of(d), 0) + 1

    def unpin(self, digests: Iterable[str]) -> None:
        with self._pin_lock:
            for d in digests:
                h = hex_of(d)
                self._pins[h] -= 1
                if not self._pins[h]:
                    del self._pins[h]

    # ------------------------------------------------------------ manifests
    def _index(self) -> dict[str, dict[str, float]]:
        try:
            doc = json.loads((self.root / "index.json").read_bytes())
            models = doc.get("models") if isinstance(doc, dict) else None
            return {k: v for k, v in (models or {}).items() if isinstance(v, dict)}
        except (OSError, ValueError):
            return {}

    def _update_index(self, fn: Callable[[dict[str, dict[str, float]]], None]) -> None:
        with locked(self.root / "locks" / "index.lock"):
            idx = self._index()
            fn(idx)
            atomic_write(self.root / "index.json",
                         json.dumps({"version": 1, "models": idx}, sort_keys=True).encode())

    def add(self, manifest: Manifest) -> StoredModel:
        """Link the model directory and write the manifest (every blob must be here)."""
        digest = manifest.digest
        h = hex_of(digest)
        mdir = self.root / "models" / h
        for f in manifest.files:
            check_path(f.path)
            if not self.has_blob(f.sha256):
                raise StoreError(f"{f.path}: blob sha256:{f.sha256} is not in the store")
        if not (self.root / "manifests" / f"{h}.json").exists():
            tmpdir = self.root / "models" / f".{h}.{os.getpid()}.tmp"
            shutil.rmtree(tmpdir, ignore_errors=True)
            for f in manifest.files:
                dest = tmpdir / f.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(self.blob_file(f.sha256), dest)
            shutil.rmtree(mdir, ignore_errors=True)
            os.replace(tmpdir, mdir)
            fsync_dir(mdir.parent)
            atomic_write(self.root / "manifests" / f"{h}.json", manifest.encode())
        now = self.clock()
        self._update_index(lambda idx: idx.__setitem__(digest, {"pulled_at": now, "last_used": now}))
        return self.get(digest)

    def _load(self, h: str, idx: dict[str, dict[str, float]]) -> StoredModel | None:
        try:
            manifest = decode((self.root / "manifests" / f"{h}.json").read_bytes())
        except (OSError, ManifestError):
            return None
        digest = f"sha256:{h}"
        st = idx.get(digest, {})
        return StoredModel(digest=digest, manifest=manifest, path=self.root / "models" / h,
                           pulled_at=float(st.get("pulled_at", 0.0)),
                           last_used=float(st.get("last_used", 0.0)))

    def list(self) -> builtins.list[StoredModel]:
        idx = self._index()
        out = [m for p in sorted((self.root / "manifests").glob("*.json"))
               if (m := self._load(p.stem, idx)) is not None]
        return sorted(out, key=lambda m: m.manifest.name)

    def find(self, ref: str) -> StoredModel | None:
        """A model by digest (``sha256:...``) or by name/alias (newest pull wins)."""
        if ref.startswith("sha256:"):
            try:
                return self._load(hex_of(ref), self._index())
            except StoreError:
                return None
        hits = [m for m in self.list() if ref in m.manifest.names]
        return max(hits, key=lambda m: m.pulled_at) if hits else None

    def get(self, ref: str) -> StoredModel:
        m = self.find(ref)
        if m is None:
            raise NotFound(f"no model {ref!r} in this node's store")
        return m

    def touch(self, ref: str) -> None:
        """Mark a model used now (engines call this when they load it)."""
        m = self.get(ref)
        now = self.clock()
        self._update_index(lambda idx: idx.setdefault(m.digest, {}).__setitem__("last_used", now))

    def remove(self, ref: str, *, force: bool = False) -> StoredModel:
        m = self.get(ref)
        used = set(self.in_use())
        if not force and (used & {*m.manifest.names, m.digest}):
            raise StoreError(f"model {ref!r} is in use by an engine")
        h = hex_of(m.digest)
        (self.root / "manifests" / f"{h}.json").unlink(missing_ok=True)
        fsync_dir(self.root / "manifests")
        shutil.rmtree(self.root / "models" / h, ignore_errors=True)
        def drop(idx: dict[str, dict[str, float]]) -> None:
            idx.pop(m.digest, None)

        self._update_index(drop)
        self.gc()
        return m

    def gc(self) -> int:
        """Delete blobs no manifest names and no pull pins; returns bytes freed."""
        keep = {f.sha256 for m in self.list() for f in m.manifest.files}
        with self._pin_lock:
            keep |= set(self._pins)
        freed = 0
        for p in (self.root / "blobs" / "sha256").iterdir():
            if p.name not in keep and len(p.name) == 64:
                freed += p.stat().st_size
                p.unlink(missing_ok=True)
                (self.root / "chunks" / f"{p.name}.json").unlink(missing_ok=True)
        return freed

    # ---------------------------------------------------------------- space
    def usage(self) -> int:
        """Bytes the store holds: complete blobs plus partial blobs' allocated bytes."""
        blobs = sum(p.stat().st_size for p in (self.root / "blobs" / "sha256").iterdir())
        return blobs + self.partial_bytes()

    def reserve(self, needed: int, *, protect: Collection[str] = ()) -> builtins.list[StoredModel]:
        """Make room for ``needed`` more bytes or raise NoSpaceError; returns the evicted."""
        evicted: builtins.list[StoredModel] = []
        if self.max_disk:
            if needed > self.max_disk:
                raise NoSpaceError(
                    f"pull needs {human(needed)} ({needed} bytes), more than [models] max_disk "
                    f"{human(self.max_disk)}")
            used_names = set(self.in_use())
            while self.usage() + needed > self.max_disk:
                candidates = [m for m in self.list() if m.digest not in protect
                              and not (used_names & {*m.manifest.names, m.digest})]
                if not candidates:
                    raise NoSpaceError(
                        f"pull needs {human(needed)} ({needed} bytes) but the store holds "
                        f"{human(self.usage())} of [models] max_disk {human(self.max_disk)} "
                        "and every remaining model is in use")
                victim = min(candidates, key=lambda m: m.last_used)
                self.remove(victim.digest, force=True)
                evicted.append(victim)
        free = self._free_space(self.root)
        if needed + FREE_MARGIN > free:
            raise NoSpaceError(
                f"pull needs {human(needed)} ({needed} bytes) plus a {human(FREE_MARGIN)} margin; "
                f"only {human(free)} free on the file system of {self.root}")
        return evicted
