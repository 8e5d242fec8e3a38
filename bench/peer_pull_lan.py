"""Peer pulls over emulated LAN links: each node its own host, its link a NIC's speed.

Theory of operation
-------------------
bench/peer_pull.py runs every party on 127.0.0.1, where there is no link:
bytes move as fast as the machine's cores can encrypt, decrypt, hash and
write them, and those cores are shared by every daemon.  Its fan-out is then
bound by the CPU the five processes share, not by what the fan-out target is
about: whether pullers started together, trading the chunks they hold, take
little longer than one transfer when the holder's upload is the bound.

Here each daemon runs in its own network namespace on a bridge
(:class:`swarmd.testing.netns.Lab`), and every host's link is shaped to
``--mbit`` each way (:meth:`~swarmd.testing.netns.Lab.shape`: a token bucket
on both ends of its veth), as machines on a switch are bound by their NICs.
The cores are still shared (2 on the CI machine), so a rate is only a fair
stand-in while the CPU the transfers need stays below what the machine has;
the table prints the CPU each party used.

1. n1 (the holder, host 0) pulls the real Gemma 3 270M GGUF from a local
   path; nginx (one worker, sendfile) serves the same file in host 0.
2. For each rate in ``--mbit`` (the links reshaped, the daemons kept):
   a. reference: curl in host 1 from nginx in host 0, to a file (no hash, no
      fsync), median of ``--curl-rounds``;
   b. n1 -> n2 (host 1): ``swarmctl pull gemma --json``, median of
      ``--pull-rounds``, n2 removing its copy between rounds -- mutual TLS,
      16 MiB chunks verified on arrival, the whole file's sha256, fsync;
   c. fan-out: the ``--fanout`` hosts 1.. pull at once with n1 the only
      holder; the wall time from the launch to the last result, and the share
      of the bytes n1 sent (the rest came from pullers);
   d. every copy's sha256 checked, then removed.
   Each measured transfer starts ``settle_pages()`` after the last delete
   (bench/peer_pull.py says why).
3. The table: per rate, the line's own time for the file (size / rate),
   curl's, the pull's and the fan-out's, with the targets' ratios
   (n1 -> n2 >= 0.8x curl <- nginx; fan-out <= 1.5x the single transfer).

Needs root and iproute2 (``tc``'s tbf); without them it says so and exits 2.

    PYTHONPATH=.:plugins .venv/bin/python bench/peer_pull_lan.py [--mbit 1000,500] [--fanout 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dataplane import ProcWatch, curl, start_nginx_static  # noqa: E402
from bench.harness import Procs, die_on_sigterm  # noqa: E402
from bench.peer_pull import (  # noqa: E402
    NAME,
    SECRET,
    Pull,
    all_alive,
    blob,
    end_run,
    kill_all,
    note,
    pid,
    print_failure,
    settle_pages,
    stored_on,
)
from swarmd.testing import netns  # noqa: E402
from swarmd.testing.daemon import Daemon, wait_for  # noqa: E402
from swarmd.testing.hub_servers import gemma_gguf, sha256_file  # noqa: E402


@dataclass
class RateResult:
    mbit: float
    curl_s: float
    pull_s: float
    pull_range: tuple[float, float]
    transfer_s: float
    rx_cpu: float
    tx_cpu: float
    fan_s: float
    fan_cpu: tuple[float, float]
    holder_cpu: float
    from_n1: float


def median_by(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def one_rate(a: argparse.Namespace, lab: netns.Lab, ds: list[Daemon], base: str, ngpid: int,
             out: Path, sha: str, digest: str, size: int, mbit: float) -> RateResult:
    """One rate's measurements; ``sha``: the file's sha256, ``digest``: n1's manifest."""
    for i in range(len(ds)):
        lab.shape(i, mbit)
    n1, n2, fan = ds[0], ds[1], ds[1:1 + a.fanout]
    holder = [n1.node_id]
    note(f"{mbit:g} Mbit/s: links shaped")

    curl(base + "/model.bin", str(out), {"sender": ngpid}, netns=lab.hosts[1])  # warm-up
    out.unlink()
    secs = []
    for _ in range(a.curl_rounds):
        settle_pages()
        r = curl(base + "/model.bin", str(out), {"sender": ngpid}, netns=lab.hosts[1])
        assert r["bytes"] == size == out.stat().st_size, r
        out.unlink()
        secs.append(size / (r["MB_s"] * 1e6))
    curl_s = median_by(secs)
    note(f"{mbit:g} Mbit/s: curl <- nginx {curl_s:.2f} s")

    singles: list[tuple[Pull, ProcWatch]] = []
    for r in range(a.pull_rounds):
        wait_for(lambda: stored_on(n2, NAME) == holder, 30, what="n2 sees gemma on n1 alone")
        settle_pages()
        with ProcWatch({"sender": pid(n1), "receiver": pid(n2)}) as w:
            p = Pull.start(n2)
            got = p.finish()
        assert got["digest"] == digest, got
        assert sha256_file(blob(n2, sha)) == sha, "n2's copy differs"
        note(f"{mbit:g} Mbit/s: n1 -> n2, round {r + 1}: {p.seconds:.2f} s (transfer "
             f"{p.transfer_seconds:.2f} s; CPU s sender {w.cpu['sender']:.2f}, receiver "
             f"{w.cpu['receiver']:.2f})")
        singles.append((p, w))
        rm = n2.ctl("rm", NAME, timeout=30)
        assert rm.returncode == 0, rm.stderr
    singles.sort(key=lambda pw: pw[0].seconds)
    single, sw = singles[len(singles) // 2]

    wait_for(lambda: all(stored_on(d, NAME) == holder for d in fan), 60,
             what="every puller sees gemma on n1 alone")
    settle_pages()
    with ProcWatch({"holder": pid(n1), **{d.name: pid(d) for d in fan}}) as fw:
        t0 = time.monotonic()
        fp = [Pull.start(d) for d in fan]
        res = [q.finish() for q in fp]
    fan_s = max(q.done_at for q in fp) - t0
    by = [r.get("served_by") or {} for r in res]
    from_n1 = sum(b.get("peer n1", 0) for b in by) / (sum(sum(b.values()) for b in by) or 1)
    for d, r in zip(fan, res, strict=True):
        assert r["digest"] == digest, (d.name, r)
        got_sha = sha256_file(blob(d, sha))
        assert got_sha == sha, f"{d.name}: stored blob hashes to {got_sha}, not {sha}"
        rm = d.ctl("rm", NAME, timeout=30)
        assert rm.returncode == 0, rm.stderr
    cpus = [fw.cpu[d.name] for d in fan]
    note(f"{mbit:g} Mbit/s: fan-out of {len(fan)}: {fan_s:.2f} s, {100 * from_n1:.0f}% from n1")
    return RateResult(mbit, curl_s, single.seconds, (singles[0][0].seconds,
                      singles[-1][0].seconds), single.transfer_seconds, sw.cpu["receiver"],
                      sw.cpu["sender"], fan_s, (min(cpus), max(cpus)), fw.cpu["holder"],
                      from_n1)


def run(a: argparse.Namespace, work: Path, procs: Procs, daemons: list[Daemon],
        pulls: list[Pull]) -> tuple[list[RateResult], int]:
    """Each rate's results, and the file's size."""
    path, sha = (a.model, sha256_file(a.model)) if a.model else gemma_gguf()
    size = path.stat().st_size
    with netns.Lab(1 + a.fanout) as lab:
        try:
            nodes = work / "nodes"
            for i in range(1 + a.fanout):
                seeds = [daemons[0].seed] if i else []
                d = Daemon(nodes, f"n{i + 1}", secret=SECRET, host=lab.addr(i),
                           netns=lab.hosts[i], profile="lan", seeds=seeds)
                daemons.append(d)
                d.start()
            wait_for(lambda: all_alive(daemons), 60, what="every daemon alive")
            r = daemons[0].ctl("pull", str(path), "--name", NAME, "--json", timeout=300)
            assert r.returncode == 0, r.stderr
            digest = json.loads(r.stdout.splitlines()[-1])["digest"]  # the manifest's
            note(f"{1 + a.fanout} hosts up; n1 holds {NAME}; work dir {work}")
            refs = work / "refs"
            refs.mkdir()
            os.chmod(work, 0o755)  # nginx's worker may run as another user
            os.chmod(refs, 0o755)
            shutil.copyfile(path, refs / "model.bin")
            os.chmod(refs / "model.bin", 0o644)
            ng = start_nginx_static(procs, refs, work, host=lab.addr(0), netns=lab.hosts[0])
            if ng is None:
                raise RuntimeError("nginx is not installed and could not be")
            base, ngpid = ng
            return [one_rate(a, lab, daemons, base, ngpid, work / "curl.out", sha, digest,
                             size, m)
                    for m in a.mbit], size
        finally:
            kill_all(daemons, pulls)  # before the namespaces go


def print_table(results: list[RateResult], size: int, fanout: int) -> None:
    print(f"\nGemma 3 270M Q4_K_M GGUF, {size / 1e6:.1f} MB; {1 + fanout} hosts in network "
          f"namespaces, each link shaped to the rate both ways; {os.cpu_count()} cores shared "
          "by all\n")
    print("| link | line time s | curl <- nginx s | n1 -> n2 pull s | vs curl | "
          f"CPU s rx / tx | fan-out of {fanout} s | vs one pull | from n1 | "
          "CPU s per puller / holder |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        line = size / (r.mbit * 1e6 / 8)
        print(f"| {r.mbit:g} Mbit/s | {line:.2f} | {r.curl_s:.2f} | {r.pull_s:.2f} "
              f"({r.pull_range[0]:.2f}..{r.pull_range[1]:.2f}) | {r.curl_s / r.pull_s:.2f}x | "
              f"{r.rx_cpu:.2f} / {r.tx_cpu:.2f} | {r.fan_s:.2f} | {r.fan_s / r.pull_s:.2f}x | "
              f"{100 * r.from_n1:.0f}% | {r.fan_cpu[0]:.2f}..{r.fan_cpu[1]:.2f} / "
              f"{r.holder_cpu:.2f} |")
    print("\n| target | link | measured | verdict |")
    print("|---|---|---:|---|")
    for r in results:
        x = r.curl_s / r.pull_s
        print(f"| n1 -> n2 >= 0.8x curl <- nginx | {r.mbit:g} Mbit/s | {x:.2f}x | "
              f"{'MET' if x >= 0.8 else 'NOT MET'} |")
        f = r.fan_s / r.pull_s
        print(f"| fan-out of {fanout} <= 1.5x one pull | {r.mbit:g} Mbit/s | {f:.2f}x | "
              f"{'MET' if f <= 1.5 else 'NOT MET'} |")
    print("\n(pull s: the swarmctl command's wall time, median of the rounds, range in "
          "brackets; fan-out s: launch to the last result; from n1: the share of the "
          "pullers' bytes the holder sent, the rest the pullers sent each other.)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mbit", default="1000,500",
                    help="link rates to run, Mbit/s, comma-separated (default 1000,500)")
    ap.add_argument("--fanout", type=int, default=4, help="hosts pulling at once")
    ap.add_argument("--curl-rounds", type=int, default=3, help="curl fetches per rate")
    ap.add_argument("--pull-rounds", type=int, default=3, help="n1 -> n2 pulls per rate")
    ap.add_argument("--model", type=Path, default=None, help="a file to move instead of Gemma")
    a = ap.parse_args()
    try:
        a.mbit = [float(x) for x in a.mbit.split(",") if x.strip()]
    except ValueError:
        ap.error("--mbit: comma-separated numbers, e.g. 1000,500")
    if not a.mbit or min(a.mbit) <= 0:
        ap.error("--mbit: each rate must be > 0")
    if a.fanout < 1 or a.curl_rounds < 1 or a.pull_rounds < 1:
        ap.error("--fanout, --curl-rounds and --pull-rounds must be >= 1")
    ok, why = netns.available()
    if not ok or not shutil.which("curl"):
        print(f"NOT MEASURED: {why or 'curl is not installed'}", file=sys.stderr)
        return 2
    die_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="swarmd-bench-lan-"))
    daemons: list[Daemon] = []
    t0 = time.monotonic()
    good = False
    try:
        with Procs(work) as procs:
            results, size = run(a, work, procs, daemons, [])
        print_table(results, size, a.fanout)
        good = True
    except Exception:
        print_failure(daemons)
    finally:
        end_run(work, daemons, t0, keep=not good)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
