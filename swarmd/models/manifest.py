"""The model manifest: what a model is, file by file, and its digest.

Theory of operation
-------------------
A manifest names a model (name and aliases), where it came from (``source``,
a canonical spec), what it is (format, architecture, parameter count,
quantization, context length: read from the files' own metadata) and every
file in it: a relative path, the size in bytes, the sha256 of the whole file
and the sha256 of each :data:`CHUNK_SIZE` chunk (the last one shorter).
Chunk digests let a node verify each chunk as it arrives from a peer, long
before the whole file is there.

The encoding is canonical JSON (sorted keys, no whitespace, UTF-8) so the
manifest digest -- sha256 of those bytes, written ``sha256:<hex>`` -- is the
same on every node for the same model.  Nothing node-local (pull time, last
use) is in it.  :func:`decode` accepts only what :func:`validate` allows: a
manifest from a peer or a file can name files only inside its own model
directory (no absolute paths, ``..``, backslashes, control characters, empty
or dot components, a file that is also another file's directory), sizes and
counts within limits, chunk lists that match the size, and well-formed
digests.  Anything else raises :class:`ManifestError`.  Spec:
protocol/models.md; vectors: protocol/vectors/models/.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from swarmd.models.spec import valid_name

VERSION = 1
#: Bytes per chunk: the unit of verification and of peer transfer.
CHUNK_SIZE = 16 * 1024 * 1024
#: Largest encoded manifest accepted (bytes).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: Most files in one model.
MAX_FILES = 4096
#: Largest single file (bytes): 4 TiB.
MAX_FILE_SIZE = 4 * 1024**4
MAX_PATH = 1024
MAX_COMPONENT = 255
MAX_ALIASES = 32
FORMATS = ("gguf", "safetensors", "mlx", "other")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest (or a path in one) that swarmd refuses; the message says why."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    return (size + chunk_size - 1) // chunk_size


def check_path(path: Any) -> str:
    """Return ``path`` if it is a safe relative file path, else ManifestError."""
    if not isinstance(path, str) or not path:
        raise ManifestError("file path must be a non-empty string")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise ManifestError(f"file path longer than {MAX_PATH} bytes")
    if path.startswith("/") or "\\" in path or re.match(r"^[A-Za-z]:", path):
        raise ManifestError(f"file path {path!r} is not relative to the model directory")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ManifestError(f"file path {path!r} contains control characters")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ManifestError(f"file path {path!r} has an empty, '.' or '..' component")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT:
            raise ManifestError(f"file path {path!r} has a component over {MAX_COMPONENT} bytes")
    return path


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    chunks: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256,
                "chunks": list(self.chunks)}


@dataclass(frozen=True)
class Manifest:
    name: str
    source: str
    format: str
    files: tuple[FileEntry, ...]
    aliases: tuple[str, ...] = ()
    architecture: str | None = None
    parameters: int | None = None
    quantization: str | None = None
    context_length: int | None = None
    chunk_size: int = CHUNK_SIZE
    version: int = field(default=VERSION)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version, "name": self.name, "aliases": list(self.aliases),
            "source": self.source, "format": self.format,
            "architecture": self.architecture, "parameters": self.parameters,
            "quantization": self.quantization, "context_length": self.context_length,
            "chunk_size": self.chunk_size, "files": [f.to_json() for f in self.files],
        }

    def encode(self) -> bytes:
        return encode_canonical(self.to_json())

    @property
    def digest(self) -> str:
        return "sha256:" + sha256_hex(self.encode())


def encode_canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _opt(doc: dict[str, Any], key: str, kind: type) -> Any:
    v = doc.get(key)
    if v is None:
        return None
    if kind is int and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise ManifestError(f"{key} must be a non-negative integer or null")
    if kind is str and (not isinstance(v, str) or len(v) > 256):
        raise ManifestError(f"{key} must be a string (<= 256 chars) or null")
    return v


def _file(doc: Any, chunk_size: int, i: int) -> FileEntry:
    if not isinstance(doc, dict):
        raise ManifestError(f"files[{i}] is not an object")
    path = check_path(doc.get("path"))
    size = doc.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ManifestError(f"files[{i}] ({path}): size must be a non-negative integer")
    if size > MAX_FILE_SIZE:
        raise ManifestError(f"files[{i}] ({path}): size {size} is over the {MAX_FILE_SIZE} limit")
    sha = doc.get("sha256")
    if not isinstance(sha, str) or not _HEX64.match(sha):
        raise ManifestError(f"files[{i}] ({path}): sha256 must be 64 lower-case hex digits")
    chunks = doc.get("chunks")
    if not isinstance(chunks, list) or not all(isinstance(c, str) and _HEX64.match(c) for c in chunks):
        raise ManifestError(f"files[{i}] ({path}): chunks must be a list of sha256 hex digests")
    if len(chunks) != chunk_count(size, chunk_size):
        raise ManifestError(
            f"files[{i}] ({path}): {len(chunks)} chunk digests for {size} bytes "
            f"(expected {chunk_count(size, chunk_size)})"
        )
    return FileEntry(path=path, size=size, sha256=sha, chunks=tuple(chunks))


def from_json(doc: Any) -> Manifest:
    """Build a validated Manifest from a decoded JSON object."""
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    if doc.get("version") != VERSION:
        raise ManifestError(f"unsupported manifest version {doc.get('version')!r} (this node reads {VERSION})")
    name = doc.get("name")
    if not isinstance(name, str) or not valid_name(name):
        raise ManifestError(f"bad model name {name!r}")
    aliases = doc.get("aliases", [])
    if not isinstance(aliases, list) or len(aliases) > MAX_ALIASES or not all(
        isinstance(a, str) and valid_name(a) for a in aliases
    ):
        raise ManifestError(f"aliases must be a list of at most {MAX_ALIASES} model names")
    source = doc.get("source")
    if not isinstance(source, str) or not source or len(source) > 2048:
        raise ManifestError("source must be a non-empty string")
    fmt = doc.get("format")
    if fmt not in FORMATS:
        raise ManifestError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    chunk_size = doc.get("chunk_size")
    if chunk_size != CHUNK_SIZE:
        raise ManifestError(f"chunk_size must be {CHUNK_SIZE}, got {chunk_size!r}")
    files = doc.get("files")
    if not isinstance(files, list) or not files:
        raise ManifestError("files must be a non-empty list")
    if len(files) > MAX_FILES:
        raise ManifestError(f"{len(files)} files is over the {MAX_FILES} limit")
    entries = tuple(_file(f, chunk_size, i) for i, f in enumerate(files))
    _check_tree(entries)
    return Manifest(
        name=name, aliases=tuple(aliases), source=source, format=fmt, files=entries,
        architecture=_opt(doc, "architecture", str), parameters=_opt(doc, "parameters", int),
        quantization=_opt(doc, "quantization", str),
        context_length=_opt(doc, "context_length", int), chunk_size=chunk_size,
    )


def _check_tree(entries: tuple[FileEntry, ...]) -> None:
    paths = [e.path for e in entries]
    if len(set(paths)) != len(paths):
        raise ManifestError("a file path appears twice")
    folded = [p.casefold() for p in paths]
    if len(set(folded)) != len(folded):
        raise ManifestError("two file paths differ only in case")
    dirs = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    clash = dirs & set(paths)
    if clash:
        raise ManifestError(f"{sorted(clash)[0]!r} is both a file and a directory")


def decode(data: bytes) -> Manifest:
    """Decode and validate manifest bytes (any encoding of the JSON is accepted)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"manifest is not UTF-8 JSON: {exc}") from None
    return from_json(doc)
