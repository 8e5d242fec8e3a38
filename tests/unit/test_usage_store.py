"""swarmd.usage.store: rows survive kill -9, schema versions, aggregates, prune, robust open."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from swarmd.usage import store as store_mod
from swarmd.usage.store import SCHEMA_VERSION, UsageRow, UsageStore, UsageStoreError

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


def mk(i: int, **kw: object) -> UsageRow:
    base: dict[str, object] = dict(
        ts=T0 + i, request_id=f"r{i}", key_id=f"k{i % 3}", user=f"u{i % 2}",
        project="p", model=("m-a", "m-b")[i % 2], node_id="n1", engine_id="e1", route="chat",
        prompt_tokens=10 * i, completion_tokens=i, cost_usd=0.001 * i, latency_ms=5.0 + i,
        ttft_ms=1.5 if i % 2 else None, status=200)
    base.update(kw)
    return UsageRow(**base)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "usage.db"


def test_record_and_read_back_every_field(db: Path) -> None:
    rows = [mk(i) for i in range(5)]
    with UsageStore(db) as s:
        for r in rows:
            s.record(r)
        assert s.count() == 5
        assert list(s.rows_since(0)) == rows
        assert list(s.rows_since(T0 + 3)) == rows[3:]
    assert rows[0].ttft_ms is None and rows[1].ttft_ms == 1.5


def test_pragmas_wal_and_synchronous(db: Path) -> None:
    for sync, level in (("NORMAL", 1), ("FULL", 2)):
        with UsageStore(db, synchronous=sync) as s:  # type: ignore[arg-type]
            assert s._conn is not None
            assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == level
    with pytest.raises(ValueError):
        UsageStore(db, synchronous="OFF")  # type: ignore[arg-type]


_CHILD = """
import os, signal, sys
from swarmd.usage.store import UsageRow, UsageStore
s = UsageStore(sys.argv[1])
for i in range(int(sys.argv[2])):
    s.record(UsageRow(ts=1.0 + i, request_id=f"r{i}", model="m", route="chat", status=200,
                      prompt_tokens=i, completion_tokens=2 * i, cost_usd=i / 1e6))
    if sys.argv[3] == "print":
        print(f"r{i}", flush=True)
if sys.argv[3] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _child(db: Path, n: int, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(_CHILD), str(db), str(n), mode],
                            env=env, stdout=subprocess.PIPE, text=True)


def test_rows_survive_sigkill_right_after_record(db: Path) -> None:
    proc = _child(db, 300, "kill")
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # the rows are in the WAL (never checkpointed into the db by a clean close)
    wal = db.with_name(db.name + "-wal")
    assert wal.exists() and wal.stat().st_size > 0
    with UsageStore(db) as s:
        got = list(s.rows_since(0))
    assert [r.request_id for r in got] == [f"r{i}" for i in range(300)]
    assert got[-1].completion_tokens == 2 * 299


def test_every_acknowledged_row_survives_an_outside_sigkill(db: Path) -> None:
    proc = _child(db, 1_000_000, "print")
    assert proc.stdout is not None
    acked = []
    for line in proc.stdout:  # each line is printed only after record() returned
        acked.append(line.strip())
        if len(acked) == 500:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    acked += [line.strip() for line in proc.stdout.read().splitlines()]
    assert proc.returncode == -signal.SIGKILL
    with UsageStore(db) as s:
        stored = {r.request_id for r in s.rows_since(0)}
    assert len(acked) >= 500 and set(acked) <= stored


def test_schema_version_set_on_create_and_kept(db: Path) -> None:
    UsageStore(db).close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
    conn.close()
    with UsageStore(db) as s:  # reopening migrates nothing, keeps rows
        s.record(mk(1))
    with UsageStore(db) as s:
        assert s.count() == 1


def test_migration_to_a_later_version_keeps_rows(db: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with UsageStore(db) as s:
        s.record(mk(1))
    v2 = (*store_mod.MIGRATIONS, ("ALTER TABLE usage ADD COLUMN region TEXT NOT NULL DEFAULT ''",))
    monkeypatch.setattr(store_mod, "MIGRATIONS", v2)
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 2)
    with UsageStore(db) as s:
        assert s._conn is not None
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert s._conn.execute("SELECT region FROM usage").fetchall() == [("",)]
        assert list(s.rows_since(0)) == [mk(1)]


def test_failed_migration_rolls_back_with_its_version(db: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    UsageStore(db).close()
    bad = (*store_mod.MIGRATIONS, ("CREATE TABLE extra (x)", "THIS IS NOT SQL"))
    monkeypatch.setattr(store_mod, "MIGRATIONS", bad)
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", 2)
    with pytest.raises(UsageStoreError, match=str(db)):
        UsageStore(db)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='extra'").fetchall() == []
    conn.close()


def test_newer_schema_is_refused(db: Path) -> None:
    UsageStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(UsageStoreError, match="newer") as ei:
        UsageStore(db)
    assert ei.value.path == db


def test_corrupt_or_unopenable_file_names_the_path(tmp_path: Path) -> None:
    junk = tmp_path / "usage.db"
    junk.write_bytes(b"this is not a database" * 200)
    with pytest.raises(UsageStoreError) as ei:
        UsageStore(junk)
    assert str(junk) in str(ei.value) and "not a usable usage database" in str(ei.value)
    with pytest.raises(UsageStoreError, match=str(tmp_path)):
        UsageStore(tmp_path)  # a directory
    with pytest.raises(UsageStoreError, match="no such file"):
        UsageStore(tmp_path / "missing.db", readonly=True)
    with pytest.raises(UsageStoreError, match="not a usable"):
        UsageStore(junk, readonly=True)


def test_reader_in_another_process_sees_committed_rows(db: Path) -> None:
    code = ("import sys; from swarmd.usage.store import UsageStore; "
            "s = UsageStore(sys.argv[1], readonly=True); print(s.count(), "
            "sorted(r['user'] for r in s.aggregate('user', 0)))")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}"}
    with UsageStore(db) as s:
        s.record_many(mk(i) for i in range(40))
        out = subprocess.run([sys.executable, "-c", code, str(db)], env=env, timeout=60,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split(maxsplit=1) == ["40", "['u0', 'u1']\n"]
        s.record(mk(41))  # the writer is not blocked by the reader having been there
        assert s.count() == 41


def test_readonly_store_cannot_write(db: Path) -> None:
    UsageStore(db).close()
    with UsageStore(db, readonly=True) as ro:
        with pytest.raises(UsageStoreError, match="readonly"):
            ro.record(mk(1))
        with pytest.raises(UsageStoreError, match="read-only"):
            ro.checkpoint()


def test_aggregate_groups_sums_and_orders(db: Path) -> None:
    with UsageStore(db) as s:
        s.record_many([mk(i) for i in range(1, 7)] + [mk(7, status=500), mk(8, status=429)])
        by_model = s.aggregate("model", 0)
        # m-b: i = 1,3,5,7 ; m-a: i = 2,4,6,8
        assert by_model == [
            {"model": "m-a", "requests": 4, "prompt_tokens": 200, "completion_tokens": 20,
             "cost_usd": 0.02, "errors": 1},
            {"model": "m-b", "requests": 4, "prompt_tokens": 160, "completion_tokens": 16,
             "cost_usd": 0.016, "errors": 1},
        ]
        assert [r["key"] for r in s.aggregate("key", 0)] == ["k2", "k1", "k0"]
        assert s.aggregate("node", 0) == [{"node": "n1", "requests": 8, "prompt_tokens": 360,
                                           "completion_tokens": 36, "cost_usd": 0.036,
                                           "errors": 2}]
        assert {r["engine"] for r in s.aggregate("engine", 0)} == {"e1"}
        assert {r["project"] for r in s.aggregate("project", 0)} == {"p"}
        # since is inclusive, until exclusive
        assert sum(int(str(r["requests"])) for r in s.aggregate("user", T0 + 3, T0 + 6)) == 3
        assert s.aggregate("user", T0 + 100) == []
        assert s.aggregate("user", 0, only={"key": "k1"}) == [
            {"user": "u1", "requests": 2, "prompt_tokens": 80, "completion_tokens": 8,
             "cost_usd": 0.008, "errors": 1},
            {"user": "u0", "requests": 1, "prompt_tokens": 40, "completion_tokens": 4,
             "cost_usd": 0.004, "errors": 0}]
        with pytest.raises(ValueError):
            s.aggregate("route", 0)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            s.aggregate("user", 0, only={"status": "200"})


def test_rows_since_pages_and_prune(db: Path) -> None:
    n = store_mod._PAGE * 2 + 17
    with UsageStore(db) as s:
        s.record_many(mk(i) for i in range(n))
        assert [r.request_id for r in s.rows_since(T0 + 5)] == [f"r{i}" for i in range(5, n)]
        assert s.prune(T0 + 100, chunk=7) == 100
        assert s.count() == n - 100
        assert next(s.rows_since(0)).request_id == "r100"
        assert s.prune(T0 + 100) == 0


def test_record_many_is_all_or_nothing(db: Path) -> None:
    with UsageStore(db) as s:
        s.record(mk(0))
        with pytest.raises(UsageStoreError):
            s.record_many([mk(1), mk(2, request_id=None)])  # NOT NULL fails on the second
        assert s.count() == 1


def test_threads_share_one_store(db: Path) -> None:
    with UsageStore(db) as s:
        def work(t: int) -> None:
            for i in range(100):
                s.record(mk(i, request_id=f"t{t}-{i}"))
                if i % 25 == 0:
                    s.aggregate("user", 0)
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert s.count() == 400
        assert len({r.request_id for r in s.rows_since(0)}) == 400


def test_checkpoint_copies_the_wal_and_closed_store_refuses(db: Path) -> None:
    s = UsageStore(db, autocheckpoint=0)
    s.record_many(mk(i) for i in range(50))
    wal, done = s.checkpoint()
    assert wal > 0 and done == wal
    s.record(mk(99))  # still writable after a checkpoint
    s.close()
    for call in (lambda: s.record(mk(1)), s.count, s.checkpoint):
        with pytest.raises(UsageStoreError, match="closed"):
            call()
    with UsageStore(db) as again:
        assert again.count() == 51
    with pytest.raises(ValueError):
        UsageStore(db, autocheckpoint=-1)


def test_record_is_cheap(db: Path) -> None:
    """A loose bound (shared CI machines): the bench measures ~40 us p50."""
    with UsageStore(db) as s:
        times = []
        for i in range(300):
            r = mk(i)
            t0 = time.perf_counter()
            s.record(r)
            times.append(time.perf_counter() - t0)
    assert sorted(times)[len(times) // 2] < 0.002
