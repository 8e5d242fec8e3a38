"""Models pulled from peers: node-to-node transfer and fan-out, vs curl, in one run.

Theory of operation
-------------------
Every party is a real process on 127.0.0.1 (the swarmd daemons of
``swarmd.testing.daemon.Daemon``, curl, nginx); the model is the real Gemma 3
270M Q4_K_M GGUF (``gemma_gguf()``, ~253 MB, cached in ~/.cache/swarmd-test/).

1. Holder: daemon n1 (and n2, seeded to it) start; n1 pulls the GGUF from the
   plain-HTTP aiohttp ``file_server`` (``swarmctl pull URL --name gemma``).
2. References, same file, ``curl -s -o FILE`` (to a file on the same disk as
   the daemons' stores; curl neither hashes nor fsyncs): from nginx (one
   worker, ``sendfile on``; bench/dataplane.py's ``start_nginx_static``) when
   it is installed, else that row is reported as not measured; and from the
   aiohttp ``file_server`` (FileResponse, sendfile) as a second reference.
   One warm-up fetch, then the median of ``--curl-rounds``; MB/s is curl's
   own ``speed_download``.  Then the file server is stopped: from here on
   only the swarm has the model.
3. Node-to-node transfers (``--pull-rounds``, the median reported; n2
   ``swarmctl rm``s its copy between rounds): n2 ``swarmctl pull gemma
   --json`` with n1 the only holder -- the data plane (HTTP/1.1 over mutual
   TLS), 16 MiB chunks, each verified on arrival, the whole file's sha256,
   fsync, the manifest.  Every measured transfer (curl's too) starts
   :data:`SETTLE_S` s after the last file delete (:func:`settle_pages`: the
   same kind of page-cache pages for all); curl <- nginx is also shown
   right after a delete ("warm pages"), as a reference.
   ``seconds`` is the swarmctl command's wall time (launch to the result
   line); ``transfer s`` is the part between the first ``pulling`` progress
   line (0 bytes) and ``verifying``.  During it both daemons' VmRSS is
   sampled every 20 ms (/proc/PID/status) and their CPU seconds
   (utime+stime, /proc/PID/stat) taken: "RSS +MiB" is the peak minus the RSS
   just before; it must not grow with the model's size (bytes stream through
   bounded buffers).
4. Fan-out: n2 is stopped first, so n1 is the one holder; ``--fanout`` fresh
   daemons (n3..) join, and once each sees gemma stored on n1 alone, all run
   ``swarmctl pull gemma --json`` at the same moment.  ``seconds`` is the wall
   time from the launch to the last result.  Pullers started together feed
   each other: each serves the chunks it has verified while it still pulls,
   and finds the others through n1's ``have`` answers (protocol/dataplane.md),
   rarest chunk first; "from n1" is the share of the pullers' bytes n1 sent
   (each result's ``served_by``), the rest came from pullers.  On one machine
   every byte still costs one TLS encrypt and one decrypt + hash + write
   somewhere, so the fan-out is bound by the cores, not by n1's upload alone.
5. Every copy is checked (sha256 of the stored blob), the table printed, and
   every daemon is killed in ``finally`` (also on failure, Ctrl-C, SIGTERM).

MB/s = 10^6 bytes/s.  Targets: n1 -> n2 at >= 0.8x curl <- nginx; the
fan-out's wall time <= 1.5x the single transfer's.  All daemons, curl and
this process share the machine's cores: on a 2-core machine the receiver's
hashing and TLS decrypt and the sender's TLS encrypt compete for them.

    PYTHONPATH=.:plugins .venv/bin/python bench/peer_pull.py [--fanout 4] [--keep-logs]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dataplane import ProcWatch, curl, start_nginx_static  # noqa: E402
from bench.harness import Procs, die_on_sigterm, nginx_exe  # noqa: E402
from swarmd.testing.daemon import VENV_BIN, Daemon, wait_for  # noqa: E402
from swarmd.testing.hub_servers import file_server, gemma_gguf, sha256_file  # noqa: E402

NAME = "gemma"
MIB = 1024 * 1024
SECRET = secrets.token_hex(32)


def note(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# -- one `swarmctl pull`, its progress lines timestamped -----------------------------------


@dataclass
class Pull:
    node: Daemon
    proc: subprocess.Popen[str]
    t0: float
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    reader: threading.Thread | None = None

    @classmethod
    def start(cls, d: Daemon, source: str = NAME, *extra: str) -> Pull:
        argv = [str(VENV_BIN / "swarmctl"), "--socket", str(d.socket), "pull", source, *extra,
                "--json"]
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        p = cls(d, proc, t0)
        p.reader = threading.Thread(target=p._read, daemon=True)
        p.reader.start()
        return p

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict):
                self.events.append((time.monotonic(), ev))

    def finish(self, timeout: float = 300.0) -> dict[str, Any]:
        assert self.reader is not None
        self.reader.join(timeout)
        rc = self.proc.wait(max(1.0, timeout - (time.monotonic() - self.t0)))
        err = self.proc.stderr.read() if self.proc.stderr else ""
        last = self.events[-1][1] if self.events else {}
        if rc != 0 or last.get("status") != "success":
            raise RuntimeError(f"{self.node.name}: pull failed (rc {rc}): {last} {err}\n"
                               f"{self.node.log()}")
        return last

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def done_at(self) -> float:
        return self.events[-1][0]

    @property
    def seconds(self) -> float:
        return self.done_at - self.t0

    @property
    def transfer_seconds(self) -> float:
        first = next(t for t, e in self.events if e.get("status") == "pulling")
        end = next(t for t, e in self.events if e.get("status") == "verifying")
        return end - first

    @property
    def sources(self) -> list[str]:
        seen: list[str] = []
        for _, e in self.events:
            for s in e.get("sources") or []:
                if s not in seen:
                    seen.append(s)
        return seen


# -- the swarm -------------------------------------------------------------------------------


def blob(d: Daemon, sha: str) -> Path:
    return d.dir / "data" / "models" / "blobs" / "sha256" / sha


def pid(d: Daemon) -> int:
    assert d.proc is not None, d.name
    return d.proc.pid


def stored_on(d: Daemon, name: str) -> list[str]:
    r = d.ctl("models", "--json")
    if r.returncode != 0:
        return []
    for m in json.loads(r.stdout)["models"]:
        if m["id"] == name:
            return sorted(m.get("stored_on") or [])
    return []


def all_alive(group: list[Daemon]) -> bool:
    names = {d.name for d in group}
    for d in group:
        states = d.states()
        if any(states.get(n) != "alive" for n in names):
            return False
    return True


def start(daemons: list[Daemon], root: Path, name: str, seeds: list[str]) -> Daemon:
    d = Daemon(root, name, secret=SECRET, seeds=seeds)
    daemons.append(d)  # before start(): a daemon that fails to come up is still killed
    return d.start()


def kill_all(daemons: list[Daemon], pulls: list[Pull]) -> None:
    for p in pulls:
        try:
            p.kill()
        except Exception as exc:  # noqa: BLE001 - keep killing the rest
            print(f"cleanup: {exc}", file=sys.stderr)
    for d in daemons:
        try:
            if d.alive():
                d.kill()
        except Exception as exc:  # noqa: BLE001 - keep killing the rest
            print(f"cleanup: {exc}", file=sys.stderr)


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    seconds: float | None
    mbs: float | None
    what: str
    watch: ProcWatch | None = None
    rx_label: str = "(curl)"  # the receiver columns when the watch has no receiver
    extra: str = ""


#: Seconds a measured transfer waits after the last file delete (see settle_pages).
SETTLE_S = 2.5


def settle_pages() -> None:
    """Wait until the memory freed by earlier deletes is as cold as any.

    On this kind of machine (a VM) the guest hands freed memory back to the
    host after about a second, and taking it again costs CPU: for writes of
    1 MiB or more, a lot (241 MiB written with dd in 1 MiB writes: 0.08 CPU s
    right after a delete, 0.63-0.92 s 2.5 s after it; in 256 KiB writes,
    0.08 s either way -- which is why the store writes in 256 KiB pieces,
    ``swarmd.models.fsutil.WRITE_STEP``), for curl's small writes and
    socket buffers, some (curl <- nginx: both rows of the table).  curl's
    measured rounds used to follow its warm-up copy's delete at once, the
    pulls never did.  Now each measured transfer, curl's and the swarm's,
    starts :data:`SETTLE_S` s after the last delete: the same memory for
    all; curl right after a delete is shown too, as a reference."""
    time.sleep(SETTLE_S)


def curl_rows(url: str, out: Path, sender_pid: int, rounds: int,
              settle: bool) -> tuple[float, float, ProcWatch]:
    """Median MB/s and seconds of ``rounds`` curl fetches (after one warm-up),
    each right after the last one's file was deleted, or (``settle``)
    :data:`SETTLE_S` s after."""
    curl(url, str(out), {"sender": sender_pid})
    out.unlink()
    runs = []
    for _ in range(rounds):
        if settle:
            settle_pages()
        r = curl(url, str(out), {"sender": sender_pid})
        size = out.stat().st_size
        assert r["bytes"] == size, r
        out.unlink()
        runs.append(r)
    runs.sort(key=lambda r: r["MB_s"])
    mid = runs[len(runs) // 2]
    return float(mid["MB_s"]), size / (mid["MB_s"] * 1e6), mid["watch"]


def run(a: argparse.Namespace, work: Path, procs: Procs, daemons: list[Daemon],
        pulls: list[Pull]) -> None:
    path, sha = (a.model, sha256_file(a.model)) if a.model else gemma_gguf()
    size = path.stat().st_size
    rows: list[Row] = []
    nodes = work / "nodes"
    t = time.monotonic()
    n1 = start(daemons, nodes, "n1", [])
    n2 = start(daemons, nodes, "n2", [n1.seed])
    wait_for(lambda: all_alive([n1, n2]), 30, what="n1, n2 alive")
    ids = {d.name: d.node_id for d in (n1, n2)}
    note(f"n1, n2 up in {time.monotonic() - t:.1f} s; work dir {work}")

    # 1 + 2: the holder, and the curl references while a plain server still exists.
    refs = work / "refs"
    refs.mkdir()
    os.chmod(work, 0o755)  # nginx's worker may run as another user
    os.chmod(refs, 0o755)
    curl_out = work / "curl.out"
    nginx_mbs: float | None = None
    warm_mbs: float | None = None
    with file_server({"/gemma.gguf": path}) as srv:
        p = Pull.start(n1, srv.url + "/gemma.gguf", "--name", NAME)
        pulls.append(p)
        first = p.finish()
        note(f"n1 pulled {NAME} from the file server in {p.seconds:.2f} s")
        if nginx_exe() is not None:
            shutil.copyfile(path, refs / "model.bin")
            os.chmod(refs / "model.bin", 0o644)
            ng = start_nginx_static(procs, refs, work)
            assert ng is not None
            base, ngpid = ng
            warm_mbs, s, w = curl_rows(base + "/model.bin", curl_out, ngpid, a.curl_rounds,
                                       settle=False)
            rows.append(Row("curl <- nginx, to file, warm pages", s, warm_mbs,
                            "sendfile, plain HTTP, no hash/fsync", w))
            nginx_mbs, s, w = curl_rows(base + "/model.bin", curl_out, ngpid, a.curl_rounds,
                                        settle=True)
            rows.append(Row("curl <- nginx, to file", s, nginx_mbs,
                            "sendfile, plain HTTP, no hash/fsync", w))
            (refs / "model.bin").unlink()
        else:
            rows.append(Row("curl <- nginx (sendfile), to file", None, None,
                            "NOT MEASURED: nginx is not installed"))
        aio_mbs, s, w = curl_rows(srv.url + "/gemma.gguf", curl_out, os.getpid(), a.curl_rounds,
                                  settle=True)
        rows.append(Row("curl <- aiohttp file_server, to file", s, aio_mbs,
                        "plain HTTP, no hash/fsync", w))
    note("file server stopped: only the swarm has the model now")

    # 3: node-to-node transfers, n1 the only holder; n2 removes its copy between rounds.
    singles: list[tuple[Pull, ProcWatch]] = []
    for r in range(a.pull_rounds):
        wait_for(lambda: stored_on(n2, NAME) == [ids["n1"]], 30, what="n2 sees gemma on n1 alone")
        settle_pages()
        with ProcWatch({"sender": pid(n1), "receiver": pid(n2)}) as w:
            p = Pull.start(n2)
            pulls.append(p)
            got = p.finish()
        assert got["digest"] == first["digest"], (got, first)
        assert sum((got.get("served_by") or {}).values()) == size, got  # all of it moved
        note(f"n1 -> n2, round {r + 1}: {p.seconds:.2f} s (transfer {p.transfer_seconds:.2f} s; "
             f"CPU s sender {w.cpu['sender']:.2f}, receiver {w.cpu['receiver']:.2f})")
        singles.append((p, w))
        if r + 1 < a.pull_rounds:
            rm = n2.ctl("rm", NAME, timeout=30)
            assert rm.returncode == 0, rm.stderr
    by_time = sorted(singles, key=lambda pw: pw[0].seconds)
    single, w = by_time[len(by_time) // 2]
    p = single
    rows.append(Row("n1 -> n2 swarmctl pull (data plane)", p.seconds, size / p.seconds / 1e6,
                    "mTLS, chunk verify, fsync", w,
                    extra=f"median of {a.pull_rounds} rounds "
                          f"({by_time[0][0].seconds:.2f}..{by_time[-1][0].seconds:.2f} s); "
                          f"its transfer {p.transfer_seconds:.2f} s "
                          f"({size / p.transfer_seconds / 1e6:.0f} MB/s); "
                          f"sources: {', '.join(p.sources)}"))

    # 4: fan-out from n1 alone (n2 stopped, so it cannot serve).
    n2.stop()
    fan: list[Daemon] = []
    t = time.monotonic()
    for i in range(3, 3 + a.fanout):
        fan.append(start(daemons, nodes, f"n{i}", [n1.seed]))
    group = [n1, *fan]
    wait_for(lambda: all_alive(group), 60, what="n1 and the pullers alive")
    wait_for(lambda: all(stored_on(d, NAME) == [ids["n1"]] for d in fan), 60,
             what=f"every puller sees {NAME} on n1 alone")
    note(f"{a.fanout} pullers up in {time.monotonic() - t:.1f} s; n2 stopped, n1 the one holder")
    watch = {"sender": pid(n1), **{d.name: pid(d) for d in fan}}
    settle_pages()
    with ProcWatch(watch) as fw:
        t0 = time.monotonic()
        fp = [Pull.start(d) for d in fan]
        pulls.extend(fp)
        res = [q.finish() for q in fp]
    total = max(q.done_at for q in fp) - t0
    for r in res:
        assert r["digest"] == first["digest"], (r, first)
    srcs = sorted({s for q in fp for s in q.sources})
    by = [r.get("served_by") or {} for r in res]
    from_n1 = sum(b.get("peer n1", 0) for b in by)
    got_all = sum(sum(b.values()) for b in by) or 1
    per = [q.seconds for q in fp]
    rx_cpu = [fw.cpu[d.name] for d in fan]
    rx_rss = [(fw.rss_peak[d.name] - fw.rss_before[d.name]) / MIB for d in fan]
    rows.append(Row(f"fan-out n1 -> {a.fanout} pullers at once", total,
                    a.fanout * size / total / 1e6, f"{a.fanout} x mTLS from n1 alone", fw,
                    rx_label="(below)", extra=f"per puller {min(per):.2f}..{max(per):.2f} s; "
                                       f"puller CPU s {min(rx_cpu):.2f}..{max(rx_cpu):.2f}, "
                                       f"RSS +{min(rx_rss):.1f}..+{max(rx_rss):.1f} MiB; "
                                       f"from n1 {from_n1 / 1e6:.0f} of {got_all / 1e6:.0f} MB "
                                       f"({100 * from_n1 / got_all:.0f}%), the rest from "
                                       f"pullers; sources: {', '.join(srcs)}"))
    note(f"fan-out: {total:.2f} s")

    # 5: every copy byte-identical.
    for d in (n2, *fan):
        got_sha = sha256_file(blob(d, sha))
        assert got_sha == sha, f"{d.name}: stored blob hashes to {got_sha}, not {sha}"
    note(f"all {1 + a.fanout} peer copies hash to the source's sha256")

    print_table(rows, size, single, total, a.fanout, nginx_mbs, aio_mbs, warm_mbs)


def print_table(rows: list[Row], size: int, single: Pull, total: float, fanout: int,
                nginx_mbs: float | None, aio_mbs: float, warm_mbs: float | None) -> None:
    print(f"\nGemma 3 270M Q4_K_M GGUF, {size / 1e6:.1f} MB ({size / MIB:.0f} MiB), 127.0.0.1, "
          f"{os.cpu_count()} cores shared by every daemon, curl and this process\n")
    print(f"| {'transfer':38} | {'seconds':>7} | {'MB/s':>5} | {'what':36} | sender CPU s | "
          "sender RSS +MiB | receiver CPU s | receiver RSS +MiB |")
    print(f"|{'-' * 40}|{'-' * 9}|{'-' * 7}|{'-' * 38}|-------------:|----------------:|"
          "---------------:|------------------:|")
    for r in rows:
        if r.seconds is None or r.mbs is None or r.watch is None:
            print(f"| {r.name:38} | {'-':>7} | {'-':>5} | {r.what:36} | {'-':>12} | "
                  f"{'-':>15} | {'-':>14} | {'-':>17} |")
            continue
        w = r.watch
        s_cpu = f"{w.cpu['sender']:.2f}"
        s_rss = (f"+{(w.rss_peak['sender'] - w.rss_before['sender']) / MIB:.1f} "
                 f"({w.rss_before['sender'] / MIB:.0f})")
        if "receiver" in w.cpu:
            r_cpu = f"{w.cpu['receiver']:.2f}"
            r_rss = (f"+{(w.rss_peak['receiver'] - w.rss_before['receiver']) / MIB:.1f} "
                     f"({w.rss_before['receiver'] / MIB:.0f})")
        else:
            r_cpu = r_rss = r.rx_label
        print(f"| {r.name:38} | {r.seconds:7.2f} | {r.mbs:5.0f} | {r.what:36} | {s_cpu:>12} | "
              f"{s_rss:>15} | {r_cpu:>14} | {r_rss:>17} |")
    print("\n(RSS +MiB: peak during the transfer minus just before it; in brackets the RSS "
          "before, MiB. Senders: nginx worker / the bench process (aiohttp file_server) / "
          "daemon n1; receiver: daemon n2.)")
    for r in rows:
        if r.extra:
            print(f"- {r.name}: {r.extra}")
    print(f"- fan-out: n2 was stopped before it (it held a complete copy); n1 was the only "
          f"complete holder, and the {fanout} pullers served each other the chunks they had "
          f"verified while still pulling.")

    dp = size / single.seconds / 1e6
    print("\n| target | measured | verdict |")
    print("|---|---:|---|")
    if nginx_mbs is not None:
        ratio = dp / nginx_mbs
        print(f"| n1 -> n2 >= 0.8x curl <- nginx | {ratio:.2f}x | "
              f"{'MET' if ratio >= 0.8 else 'NOT MET'} |")
    else:
        print("| n1 -> n2 >= 0.8x curl <- nginx | - | NOT MEASURED (nginx is not installed) |")
    if warm_mbs is not None:
        print(f"| (reference) n1 -> n2 vs curl <- nginx on warm pages | {dp / warm_mbs:.2f}x | - |")
    ratio = dp / aio_mbs
    print(f"| (stand-in) n1 -> n2 >= 0.8x curl <- aiohttp file_server | {ratio:.2f}x | "
          f"{'MET' if ratio >= 0.8 else 'NOT MET'} |")
    fr = total / single.seconds
    print(f"| fan-out of {fanout} <= 1.5x the single transfer's time | {fr:.2f}x | "
          f"{'MET' if fr <= 1.5 else 'NOT MET'} |")
    print(f"\n(ideal fan-out when n1's upload is the bound: {fanout}x the single transfer's "
          f"bytes; {fanout * size / total / 1e6:.0f} MB/s aggregate from n1 vs {dp:.0f} MB/s "
          "for one.)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fanout", type=int, default=4, help="fresh nodes pulling at once")
    ap.add_argument("--curl-rounds", type=int, default=3, help="curl fetches per reference")
    ap.add_argument("--pull-rounds", type=int, default=3,
                    help="n1 -> n2 pulls (the median is reported)")
    ap.add_argument("--model", type=Path, default=None,
                    help="a GGUF file to move instead of Gemma (e.g. a bigger one, to see "
                         "that the daemons' RSS does not grow with the file)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the daemons' logs and dirs "
                    "(without the model blobs)")
    a = ap.parse_args()
    if a.fanout < 1 or a.curl_rounds < 1 or a.pull_rounds < 1:
        ap.error("--fanout, --curl-rounds and --pull-rounds must be >= 1")
    if not shutil.which("curl"):
        print("curl is not installed", file=sys.stderr)
        return 2
    die_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="swarmd-bench-peer-"))
    daemons: list[Daemon] = []
    pulls: list[Pull] = []
    ok = False
    t0 = time.monotonic()
    try:
        with Procs(work) as procs:
            try:
                run(a, work, procs, daemons, pulls)
                ok = True
            finally:
                kill_all(daemons, pulls)
    except Exception:
        print_failure(daemons)
    finally:
        end_run(work, daemons, t0, keep=not ok or a.keep_logs)
    return 0 if ok else 1


def print_failure(daemons: list[Daemon]) -> None:
    """The exception being handled, then each daemon's log tail."""
    traceback.print_exc()
    for d in daemons:
        print(f"\n--- {d.name} log tail ---\n{d.log()[-1500:]}", file=sys.stderr)


def end_run(work: Path, daemons: list[Daemon], t0: float, keep: bool) -> None:
    """The run's total time; the work dir removed, or (``keep``) kept without
    the model blobs and the curl references, which are big."""
    print(f"\n(total {time.monotonic() - t0:.0f} s)", file=sys.stderr)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
        return
    for d in daemons:
        shutil.rmtree(d.dir / "data" / "models", ignore_errors=True)
    shutil.rmtree(work / "refs", ignore_errors=True)
    print(f"logs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
