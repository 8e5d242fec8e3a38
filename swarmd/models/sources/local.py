"""Local path source: a file or a directory on this machine, copied into the store.

Copied (hashed on the way), not linked: the user's file may change later,
while a blob must keep its digest.  In a directory, hidden entries (``.git``)
are skipped and a symlink is followed only if it stays inside the directory:
one pointing out (``weights -> /root/.ssh/id_rsa``) is refused, since the
store would then serve that file to peers.
"""

from __future__ import annotations

import os
from pathlib import Path

from swarmd.models.fetch import SourceError
from swarmd.models.sources.base import FileRangeSource, Plan, RemoteFile
from swarmd.models.spec import PathSpec


def _file(rel: str, p: Path) -> RemoteFile:
    return RemoteFile(path=rel, size=p.stat().st_size, identity=f"path\n{p}\n{p.stat().st_mtime_ns}",
                      open=lambda: FileRangeSource(p))


def path_plan(spec: PathSpec) -> Plan:
    root = Path(os.path.expanduser(spec.path))
    if not root.exists():
        raise SourceError(f"{spec.path}: no such file or directory")
    real_root = root.resolve()
    if root.is_file():
        name = root.name.rsplit(".", 1)[0] if "." in root.name else root.name
        return Plan(name=name, source=str(real_root), files=[_file(root.name, real_root)])
    files: list[RemoteFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise SourceError(f"{Path(dirpath) / d}: symlinked directories are not followed")
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            real = p.resolve()
            if not real.is_relative_to(real_root):
                raise SourceError(f"{p} is a symlink out of {spec.path} (to {real}); refused")
            if not real.is_file():
                raise SourceError(f"{p} is not a regular file")
            files.append(_file(p.relative_to(root).as_posix(), real))
    if not files:
        raise SourceError(f"{spec.path}: no files")
    return Plan(name=root.name, source=str(real_root), files=files)
