"""The per-node usage store: one SQLite row per finished request.

Theory of operation
-------------------
Every request a node serves ends in one :class:`UsageRow` written to an
embedded SQLite file (stdlib :mod:`sqlite3`) in the node's data dir.  The node
that served a request is the only writer of its row; swarm-wide totals are
replicated counters elsewhere, rebuilt at start from :meth:`UsageStore.rows_since`.

Durability.  The database runs in WAL mode with ``synchronous=NORMAL`` and
the connection in autocommit mode, so :meth:`UsageStore.record` is one
``INSERT`` that is *committed* before it returns: its frames have been handed
to the kernel with ``write(2)`` on the ``-wal`` file.  A process crash (kill -9,
an abort, an OOM kill) cannot lose them: they are in the kernel's page cache,
which the kernel writes out whether or not the process lives, and the next
open replays the WAL.  What this does **not** cover is the machine losing
power or the kernel crashing before the page cache reaches the disk: with
``NORMAL`` the WAL is fsynced only at checkpoints, so the transactions since
the last one can be lost (the database itself stays consistent: it rolls back
to an earlier commit, never to a torn state).  ``synchronous="FULL"`` fsyncs
the WAL at every commit and survives power loss too, at the cost of one
fsync per request (0.26 ms p50 on the CI VM's disk, milliseconds on many
others; see bench/usage_store.py).

Cost.  A commit without fsync is a few tens of microseconds (bench/usage_store.py:
p50 ~40 us, p99 ~110 us), so ``record`` is cheap enough to call straight from
an asyncio handler; :meth:`UsageStore.record_many` writes a batch in one
transaction for bulk loads.  The one slow commit is the one that crosses
``autocheckpoint`` WAL pages (about every 500 rows at the default 1000): it
copies the WAL into the database and fsyncs, ~10 ms (18 ms worst measured).  To keep that
off the caller's thread, open with ``autocheckpoint`` high (or 0) and call
:meth:`UsageStore.checkpoint` from a worker thread every second or so: it uses
its own connection and does not take the writer's lock.

Indexes.  Only ``ts``.  Measured (bench/usage_store.py, 20k rows): adding a
``(column, ts)`` index per grouping column made ``record`` 2.5x slower (p50
37 -> 93 us, mean 65 -> 277 us with the bigger checkpoints) *and*
:meth:`aggregate` 3x slower, because the planner then scans a grouping index
whole instead of the ``ts`` range.  An aggregate is a ``ts`` range scan plus a
temporary b-tree for the groups.

Threads and processes.  One connection, opened with
``check_same_thread=False`` and guarded by a lock: any thread may call any
method, one at a time.  :meth:`rows_since` pages through the table (the lock
is held per page, never across a ``yield``).  Other processes may open the
same file to read (``readonly=True``): WAL lets readers and the writer run
without blocking each other.

Schema.  Versioned with ``PRAGMA user_version``: :data:`MIGRATIONS` ``[i]``
takes a database from version ``i`` to ``i + 1``, each in its own
transaction together with the new version number.  A file with a version
above :data:`SCHEMA_VERSION` (written by a newer swarmd) is refused rather
than guessed at.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

#: The grouping dimensions :meth:`UsageStore.aggregate` accepts.
GroupBy = Literal["key", "user", "project", "model", "node", "engine"]
GROUP_BY: tuple[str, ...] = get_args(GroupBy)

#: Grouping dimension -> column.
_COLUMN: dict[str, str] = {
    "key": "key_id", "user": "user", "project": "project", "model": "model",
    "node": "node_id", "engine": "engine_id",
}

#: The usage table's columns, in :class:`UsageRow` field order.
COLUMNS: tuple[str, ...] = (
    "ts", "request_id", "key_id", "user", "project", "model", "node_id", "engine_id",
    "route", "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "ttft_ms",
    "status",
)

#: Each entry: the statements that take the schema from version i to i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE usage (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            request_id TEXT NOT NULL,
            key_id TEXT NOT NULL,
            "user" TEXT NOT NULL,
            project TEXT NOT NULL,
            model TEXT NOT NULL,
            node_id TEXT NOT NULL,
            engine_id TEXT NOT NULL,
            route TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost_usd REAL NOT NULL,
            latency_ms REAL NOT NULL,
            ttft_ms REAL,
            status INTEGER NOT NULL
        )""",
        # ts only: see "Indexes" in the module docstring for why not the grouping columns
        "CREATE INDEX usage_ts ON usage(ts)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_QUOTED = ", ".join(f'"{c}"' for c in COLUMNS)
_INSERT = f"INSERT INTO usage ({_QUOTED}) VALUES ({', '.join('?' * len(COLUMNS))})"
_PAGE = 1000
_WAL_LIMIT = 64 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRow:
    """One finished request, as the node that served it records it."""

    ts: float  # unix seconds when the request finished
    request_id: str
    model: str
    route: str  # "chat", "completions", "embeddings", "ollama.chat", "responses", ...
    status: int  # HTTP status sent (499: the client went away)
    key_id: str = ""  # "" when auth is off or the request came in open
    user: str = ""
    project: str = ""
    node_id: str = ""  # where the engine ran ("" when none answered)
    engine_id: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    ttft_ms: float | None = None

    def values(self) -> tuple[object, ...]:
        """The row's values in :data:`COLUMNS` order."""
        return (self.ts, self.request_id, self.key_id, self.user, self.project, self.model,
                self.node_id, self.engine_id, self.route, self.prompt_tokens,
                self.completion_tokens, self.cost_usd, self.latency_ms, self.ttft_ms,
                self.status)


class UsageStoreError(Exception):
    """The usage database cannot be opened, read or written; names the file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"usage store {path}: {problem}")
        self.path = Path(path)
        self.problem = problem


def migrate(conn: sqlite3.Connection, path: Path | str = "?") -> int:
    """Bring ``conn``'s schema to :data:`SCHEMA_VERSION`; return the version found.

    ``conn`` must be in autocommit mode (``isolation_level=None``)."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise UsageStoreError(path, f"schema version {found} is newer than this swarmd's "
                                    f"({SCHEMA_VERSION}); upgrade swarmd or move the file")
    for version in range(found, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in MIGRATIONS[version]:
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


class UsageStore:
    """The usage rows of one node, in one SQLite file (see the module docstring)."""

    def __init__(self, path: Path | str, *, readonly: bool = False,
                 synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
                 autocheckpoint: int = 1000) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._ckpt_lock = threading.Lock()
        self._ckpt: sqlite3.Connection | None = None
        if autocheckpoint < 0:
            raise ValueError(f"autocheckpoint must be >= 0 pages, not {autocheckpoint}")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        try:
            if readonly:
                if not self.path.is_file():
                    raise UsageStoreError(self.path, "no such file")
                conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                       isolation_level=None, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise UsageStoreError(self.path, f"cannot open: {exc}") from None
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            if readonly:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version != SCHEMA_VERSION:
                    raise UsageStoreError(self.path, f"schema version {version}, this swarmd "
                                                     f"reads {SCHEMA_VERSION}")
            else:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise UsageStoreError(self.path, f"cannot use WAL (journal mode {mode})")
                conn.execute(f"PRAGMA synchronous = {synchronous}")
                conn.execute(f"PRAGMA wal_autocheckpoint = {int(autocheckpoint)}")
                # a WAL grown by a burst is cut back to this when it restarts
                conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
                migrate(conn, self.path)
        except sqlite3.Error as exc:
            conn.close()
            raise UsageStoreError(self.path, f"not a usable usage database ({exc}); "
                                             "move it aside to start a new one") from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise UsageStoreError(self.path, "closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise UsageStoreError(self.path, str(exc)) from exc

    def close(self) -> None:
        with self._ckpt_lock:
            if self._ckpt is not None:
                self._ckpt.close()
                self._ckpt = None
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def checkpoint(self) -> tuple[int, int]:
        """Copy committed WAL pages into the database (PASSIVE: waits for no
        one), on a connection of its own so :meth:`record` is not held up;
        for a worker thread.  Returns (pages in the WAL, pages copied)."""
        with self._ckpt_lock:
            if self._conn is None or self.readonly:
                raise UsageStoreError(self.path, "closed" if self._conn is None
                                      else "opened read-only")
            try:
                if self._ckpt is None:
                    self._ckpt = sqlite3.connect(self.path, isolation_level=None,
                                                 check_same_thread=False)
                    self._ckpt.execute("PRAGMA busy_timeout = 5000")
                _, wal, done = self._ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                raise UsageStoreError(self.path, f"checkpoint: {exc}") from exc
        return int(wal), int(done)

    def __enter__(self) -> UsageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------

    def record(self, row: UsageRow) -> None:
        """Write one row; committed (safe from a process crash) when this returns."""
        with self._db() as db:
            db.execute(_INSERT, row.values())

    def record_many(self, rows: Iterable[UsageRow]) -> int:
        """Write rows in one transaction (all or none); return how many."""
        values = [r.values() for r in rows]
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_INSERT, values)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return len(values)

    def prune(self, before_ts: float, *, chunk: int = 10_000) -> int:
        """Delete rows older than ``before_ts`` (chunk rows per transaction so
        the writer lock is never held long); return how many were deleted."""
        total = 0
        while True:
            with self._db() as db:
                n = db.execute("DELETE FROM usage WHERE id IN (SELECT id FROM usage "
                               "WHERE ts < ? LIMIT ?)", (before_ts, chunk)).rowcount
            total += n
            if n < chunk:
                return total

    # -- reading -------------------------------------------------------------------------

    def count(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM usage").fetchone()[0])

    def rows_since(self, ts: float) -> Iterator[UsageRow]:
        """Every row with ``ts >= ts``, in the order written (paged; rows written
        while iterating may or may not be seen)."""
        last = 0
        sql = f"SELECT id, {_QUOTED} FROM usage WHERE ts >= ? AND id > ? ORDER BY id LIMIT ?"
        while True:
            with self._db() as db:
                page = db.execute(sql, (ts, last, _PAGE)).fetchall()
            for rec in page:
                yield UsageRow(**dict(zip(COLUMNS, rec[1:], strict=True)))
            if len(page) < _PAGE:
                return
            last = page[-1][0]

    def aggregate(self, by: GroupBy, since: float, until: float | None = None, *,
                  only: Mapping[str, str] | None = None) -> list[dict[str, object]]:
        """Totals per ``by`` value over ``since <= ts < until``, costliest first.

        ``only`` keeps the rows with those values (``{"key": key_id}``: one key's
        own usage).  Each dict: ``{by: value, "requests", "prompt_tokens",
        "completion_tokens", "cost_usd", "errors"}`` (errors: status >= 400)."""
        for name in (by, *(only or ())):
            if name not in _COLUMN:
                raise ValueError(f"by must be one of {', '.join(GROUP_BY)}, not {name!r}")
        col = _COLUMN[by]
        where, params = "ts >= ?", list[object]([since])
        if until is not None:
            where += " AND ts < ?"
            params.append(until)
        for name, value in (only or {}).items():
            where += f' AND "{_COLUMN[name]}" = ?'
            params.append(value)
        sql = (f'SELECT "{col}", COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), '
               f"SUM(cost_usd), SUM(status >= 400) FROM usage WHERE {where} "
               f'GROUP BY "{col}" ORDER BY SUM(cost_usd) DESC, COUNT(*) DESC, "{col}"')
        with self._db() as db:
            found = db.execute(sql, params).fetchall()
        return [{by: g, "requests": n, "prompt_tokens": int(p), "completion_tokens": int(c),
                 "cost_usd": round(float(usd), 9), "errors": int(e)}
                for g, n, p, c, usd, e in found]
