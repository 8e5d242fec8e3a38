"""What every source resolves a spec to: a :class:`Plan` of remote files.

A source does no downloading itself: it answers "which files, how big, with
which digests, and how to read their bytes" (a factory of
:class:`~swarmd.models.fetch.RangeSource`).  The puller checks the plan
(safe paths, no pickles, room on disk) before a single byte is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from swarmd.models.fetch import AnySource, ChunkSwarm, RangeSource, SourceError

PIECE = 1024 * 1024


@dataclass(frozen=True)
class SourceSettings:
    """What sources need from ``[models]`` config (resolved there, once)."""

    hf_endpoint: str = "https://huggingface.co"
    hf_token: str | None = None
    ollama_registry: str = "https://registry.ollama.ai"
    ollama_dir: Path | None = None  # an existing local Ollama store to import from
    allow_pickle: bool = False
    timeout: float = 30.0


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative path inside the model directory
    size: int
    open: Callable[[], RangeSource]  # a fresh source per worker
    sha256: str | None = None  # hex, when the source publishes it
    identity: str = ""  # what names the bytes when sha256 is unknown (URL, size, ETag)
    git_oid: str | None = None  # Hub's git blob id for small non-LFS files: verified too
    local_path: Path | None = None  # a local file that can be adopted by hard link
    chunks: tuple[str, ...] | None = None  # chunk digests, when a manifest gives them (peers)
    #: Several sources at once (peers holding the blob); when set, ``open`` is unused.
    sources: Callable[[], Sequence[AnySource]] | None = None
    #: Peers that change while the file is fetched (full and partial holders,
    #: :func:`~swarmd.models.fetch.fetch_swarm`); when set, used instead of ``sources``.
    swarm: Callable[[], ChunkSwarm] | None = None


@dataclass
class Plan:
    name: str  # the default model name
    source: str  # canonical spec
    files: list[RemoteFile]
    aliases: list[str] = field(default_factory=list)
    link_local: bool = False  # adopt local_path files by hard link (Ollama store import)


class FileRangeSource:
    """Bytes of a local file (the local-path source, and tests)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)

    def read_range(self, offset: int, length: int) -> Iterator[bytes]:
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                left = length
                while left:
                    data = f.read(min(PIECE * 4, left))
                    if not data:
                        raise SourceError(f"{self.path} is shorter than expected")
                    left -= len(data)
                    yield data
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror}") from None
