"""Pulling a model another node holds: a plan built from that node's manifest.

The data plane supplies the bytes; this module only turns a peer's manifest
(validated by :func:`swarmd.models.manifest.decode` on arrival) into a
:class:`~swarmd.models.sources.base.Plan` whose files carry their sha256 and
chunk digests and, per file, the sources to read it from (one per peer that
holds it).  The fetch engine then verifies every chunk on arrival, drops a
peer that serves a bad one (``Puller.bad_sources`` counts them) and fetches
that chunk from another.  A source is anything with
``read_range(offset, length)`` or ``write_range(dest, offset, length,
expect)`` (see :mod:`swarmd.models.fetch`); for the data plane the latter is
``DataPlaneClient.fetch_range`` run from the pull's worker thread.  With
``swarm``, each file is fetched by :func:`~swarmd.models.fetch.fetch_swarm`
from holders that may change while it runs (other nodes still pulling it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from swarmd.models.fetch import AnySource, ChunkSwarm
from swarmd.models.manifest import FileEntry, Manifest
from swarmd.models.sources.base import Plan, RemoteFile


def _no_open() -> AnySource:
    raise RuntimeError("peer files are read through their sources")


def manifest_plan(manifest: Manifest,
                  sources: Callable[[FileEntry], Sequence[AnySource]],
                  swarm: Callable[[FileEntry], ChunkSwarm] | None = None) -> Plan:
    """A plan to copy ``manifest``'s model; ``sources(file)`` names who serves each
    file (``swarm(file)``, when given, its changing holders instead)."""
    files = [
        RemoteFile(path=f.path, size=f.size, sha256=f.sha256, chunks=f.chunks,
                   open=_no_open,  # type: ignore[arg-type]
                   sources=lambda f=f: sources(f),  # type: ignore[misc]
                   swarm=None if swarm is None else (lambda f=f: swarm(f)))  # type: ignore[misc]
        for f in manifest.files
    ]
    return Plan(name=manifest.name, source=manifest.source, files=files,
                aliases=list(manifest.aliases))
