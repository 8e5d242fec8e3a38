"""Small file-system helpers the store relies on: atomic writes, fsync of
directories, advisory locks across processes and threads (``flock`` on a lock
file: two open file descriptions conflict even inside one process), and
positioned writes in pieces the page cache takes cheaply."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename: readers see
    the old or the new content, never a torn one.  ``durable`` fsyncs the file
    before the rename and the directory after it (survives power loss)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


#: Largest single ``pwrite`` (bytes).  On this project's test machines (VMs on
#: Linux 6.18, ext4) a large write into the page cache makes the kernel take
#: large folios, and when the guest has handed its free memory back to the
#: host (a second or so after a file is deleted) taking them again is costly.
#: Where that starts moves with the host, from minute to minute: in one
#: session 241 MiB in 1 MiB writes cost 0.63-0.92 CPU s and in 512, 256 or 64
#: KiB writes 0.07-0.09 s; in another, 256 MB in 256, 128 or 64 KiB writes
#: cost 0.07-0.58 s from run to run, in 32 KiB writes 0.075-0.085 s and in 16
#: KiB writes 0.105-0.115 s every time (the pages freed 2.5 s before; right
#: after a delete all are cheap).  32 KiB writes would dodge it in both, but
#: when the host is calm they made bench/model_pull.py's fetch 2-7% slower
#: than 256 KiB (three side-by-side pairs), and the effect is this kind of
#: VM's, not Linux's: 256 KiB stays.
WRITE_STEP = 256 * 1024


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``, in pieces of at most :data:`WRITE_STEP`."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view[:WRITE_STEP], offset)
        view = view[n:]
        offset += n


@contextlib.contextmanager
def locked(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing).

    Yields True when held; with ``blocking=False`` yields False if another
    holder has it (nothing is held then)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the description releases the lock
