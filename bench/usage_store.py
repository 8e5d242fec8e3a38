"""Cost of the usage store: record() latency and throughput, single-threaded.

For each mode, writes ``-n`` rows one ``record()`` at a time into a fresh
database (with every index in place) and prints p50/p99 of one call and rows
per second (the time of ``record`` alone: rows are built beforehand); then
one ``record_many`` batch, one ``aggregate`` over everything written, and a
full ``rows_since`` scan.  The "+ckpt thread" mode turns the automatic
checkpoint off and calls ``checkpoint()`` from a thread every second, which
takes the checkpoint's copy and fsyncs off the recording thread.  ``FULL`` (fsync per commit) writes a
tenth as many rows: it is the disk's fsync time, not SQLite's.

Run: PYTHONPATH=.:plugins .venv/bin/python bench/usage_store.py [-n 20000] [--dir DIR]
(``--dir`` picks the file system: the data dir's disk is what matters).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

from swarmd.usage.store import UsageRow, UsageStore

MODELS = ("llama-3-8b", "qwen-7b", "gpt-4o-mini", "gemma-3-270m")


def row(i: int, ts: float) -> UsageRow:
    return UsageRow(ts=ts + i * 0.001, request_id=f"req-{i:08x}", key_id=f"k{i % 50}",
                    user=f"user{i % 20}", project=f"proj{i % 5}", model=MODELS[i % 4],
                    node_id="12D3KooWAlphaAlphaAlpha1111", engine_id="llamacpp-1",
                    route="chat", prompt_tokens=100 + i % 400, completion_tokens=50 + i % 300,
                    cost_usd=0.000123, latency_ms=250.0, ttft_ms=40.0, status=200)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def checkpointer(store: UsageStore, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        store.checkpoint()


def one(path: Path, n: int, sync: Literal["NORMAL", "FULL"], ckpt_thread: bool) -> list[str]:
    ts = time.time()
    rows = [row(i, ts) for i in range(n)]
    with UsageStore(path, synchronous=sync, autocheckpoint=0 if ckpt_thread else 1000) as store:
        stop = threading.Event()
        worker = threading.Thread(target=checkpointer, args=(store, stop, 1.0))
        if ckpt_thread:
            worker.start()
        times: list[float] = []
        t_all = time.perf_counter()
        for r in rows:
            ns = time.perf_counter_ns()
            store.record(r)
            times.append((time.perf_counter_ns() - ns) / 1000.0)
        elapsed = time.perf_counter() - t_all
        stop.set()
        if ckpt_thread:
            worker.join()
        batch = [row(n + i, ts) for i in range(n)]
        t0 = time.perf_counter()
        store.record_many(batch)
        many_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        groups = store.aggregate("user", ts - 1)
        agg_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        scanned = sum(1 for _ in store.rows_since(ts - 1))
        scan_s = time.perf_counter() - t0
        assert scanned == 2 * n and len(groups) == 20
    slow = [t for t in times if t > 1000]
    return [sync + (" +ckpt thread" if ckpt_thread else ""), f"{n}",
            f"{statistics.median(times):.1f}", f"{pct(times, 0.99):.1f}", f"{max(times):.0f}",
            f"{statistics.mean(times):.1f}", f"{len(slow)}",
            f"{n / elapsed:,.0f}", f"{n / many_s:,.0f}", f"{agg_ms:.1f}",
            f"{scanned / scan_s:,.0f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000, help="rows per mode (FULL: n/10)")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the databases")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        results = [one(Path(d) / "normal.db", args.n, "NORMAL", False),
                   one(Path(d) / "thread.db", args.n, "NORMAL", True),
                   one(Path(d) / "full.db", max(1, args.n // 10), "FULL", False)]
    head = ["sync", "rows", "p50 us", "p99 us", "max us", "mean us", ">1ms", "record rows/s",
            "record_many rows/s", "aggregate 2n ms", "rows_since rows/s"]
    widths = [max(len(h), *(len(r[i]) for r in results)) for i, h in enumerate(head)]
    for line in (head, *results):
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    main()
