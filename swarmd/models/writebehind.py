"""A fetch job's writes, in a second thread beside its reads.

Theory of operation
-------------------
A fresh pull hashes every byte twice (each chunk's sha256 for the manifest,
the whole file's for its name, 0.16 s per 253 MB each here) and writes it
once; in the job's one thread that was about 0.6 CPU s per 253 MB, all in
series.  :class:`WriteBehind` takes each piece (a copy: sources reuse their
buffers) and runs :meth:`~swarmd.models.partial.PartialBlob.write` -- the
write and the whole-file hash -- in its own thread, while the job's thread
reads and chunk-hashes the next piece (``hashlib`` and ``pwrite`` release
the GIL).  Measured with ``bench/model_pull.py``: the fetch engine 0.73-0.75
-> 0.59-0.62 s for Gemma's 253 MB, for 0.15-0.2 more CPU s.
"""

from __future__ import annotations

import queue
import threading

from swarmd.models.partial import PartialBlob

#: Bytes written between two ``fdatasync`` of a file being pulled: the
#: writeback overlaps the transfer instead of all of it waiting for the final
#: fsync (253 MB here: 23-29 ms left for the final fsync, 90-116 ms without;
#: seconds for a large model on a slow disk).
SYNC_STEP = 64 * 1024 * 1024


class WriteBehind:
    """Writes a job's pieces in a second thread while the job's thread reads and
    chunk-hashes the next ones (see the module docstring).

    A chunk is journaled (``chunk_done``) only after its last byte is written,
    in order; the file is ``fdatasync``-ed every :data:`SYNC_STEP` bytes so the
    final fsync has only the rest to wait for.
    :meth:`close` and :meth:`abandon` return only once the thread is done, so
    no write of a failed job lands after it (another source may be given the
    same chunks next)."""

    DEPTH = 4  # pieces queued at most (1 MiB each from the HTTP source)

    def __init__(self, partial: PartialBlob) -> None:
        self.partial = partial
        # (offset, bytes) to write, or (chunk index, its sha256 hex) to journal;
        # None ends the thread.
        self._q: queue.Queue[tuple[int, bytes] | tuple[int, str] | None] = \
            queue.Queue(self.DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="swarmd-pull-write")
        self._thread.start()

    def write(self, offset: int, data: bytes) -> None:
        self._check()
        self._q.put((offset, data))

    def chunk_done(self, index: int, digest: str) -> None:
        """Journal chunk ``index`` once every byte queued before it is written."""
        self._check()
        self._q.put((index, digest))

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait for every queued write; raise the writer's error, if any."""
        self.abandon()
        self._check()

    def abandon(self) -> None:
        """After a failure in the job's thread: let the writer finish what is
        queued (chunks verified before the failure are journaled, as they
        would have been without this thread) and wait for it; its own error,
        if any, gives way to the one being raised."""
        self._q.put(None)
        self._thread.join()

    def _run(self) -> None:
        p, unsynced = self.partial, 0
        while (item := self._q.get()) is not None:
            if self._error is not None:
                continue  # drain: the job's thread raises the error at its next call
            try:
                if isinstance(item[1], str):
                    p.chunk_done(item[0], item[1])
                else:
                    p.write(item[0], item[1])
                    unsynced += len(item[1])
                    if unsynced >= SYNC_STEP:
                        p.sync_data()
                        unsynced = 0
            except BaseException as exc:  # noqa: BLE001 - raised in the job's thread
                self._error = exc
