"""Model pull throughput: swarmd's puller vs curl, same file, same local fake Hub.

The real Gemma 3 270M Q4_K_M GGUF (241 MiB, assembled from its PyPI wheels into
~/.cache/swarmd-test/) is served by swarmd/testing/hub_servers.FakeHub on
127.0.0.1 (aiohttp FileResponse, sendfile).  Rounds alternate, side by side:

  curl        curl -s -o FILE http://127.0.0.1:P/cdn/<sha256>  (the blob URL the
              Hub's /resolve/ redirects to; no hashing, no fsync)
  transfer    swarmd's fetch engine alone on that URL (one Range GET, per-chunk
              sha256 + whole-file sha256, journal, fsync, rename)
  pull        swarmctl-equivalent full pull of hf:ORG/REPO:Q4_K_M in a fresh
              process: Hub API listing, transfer, GGUF metadata, manifest

Every measured transfer starts :data:`SETTLE_S` s after the last file delete
(the memory all of them write into is then the same kind, see
bench/peer_pull.py's ``settle_pages``); curl right after a delete is shown as a
reference row.  Each pull runs in its own subprocess (modules a daemon would already have
loaded -- huggingface_hub's API client, gguf, numpy -- imported first, as
after a daemon's first pull), which reports its RSS after imports and
its peak RSS (ru_maxrss) at the end: the growth is what a pull costs in memory
(it must not grow with model size: bytes stream through 1 MiB buffers).
MB/s = 10^6 bytes/s; "CPU s" is user + system time of the client process (curl,
or the puller) during the transfer: on a busy machine the wall-clock ratio
falls with the extra CPU the hashing needs, which this column shows.
Medians over --rounds.  Run:

    PYTHONPATH=. .venv/bin/python bench/model_pull.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swarmd.testing.hub_servers import FakeHub, HubRepo, gemma_gguf  # noqa: E402

REPO = "google/gemma-3-270m-GGUF"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
mode, store_dir, arg, start_at = sys.argv[1:5]
from swarmd.models.store import ModelStore
from swarmd.models.puller import Puller
from swarmd.models.sources.base import SourceSettings
from swarmd.models.fetch import fetch_blob, BlobTarget
from swarmd.models.sources.http import HttpRangeSource
# What a running daemon has loaded after its first pull, before the baseline: the
# Hub client (0.46 s to import here) and gguf + numpy (0.35 s), +40 MiB RSS.
import swarmd.models.sources.hf, huggingface_hub.hf_api, gguf, numpy
base = rss()
store = ModelStore(Path(store_dir))
time.sleep(max(0.0, float(start_at) - time.monotonic()))  # SETTLE_S after the last delete
t = time.perf_counter()
r0 = resource.getrusage(resource.RUSAGE_SELF)
if mode == "pull":
    m = Puller(store, SourceSettings(hf_endpoint=arg)).pull(f"hf:REPO:Q4_K_M")
    size = m.manifest.size
else:
    url, size = arg.rsplit(" ", 1)
    fetch_blob(store, BlobTarget("bench", int(size), None), [HttpRangeSource(url)])
    size = int(size)
dt = time.perf_counter() - t
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": dt, "cpu": cpu, "size": size, "rss_base": base, "rss_peak": peak}))
""".replace("REPO", REPO)


#: Seconds every measured transfer starts after the last file delete (see bench/peer_pull.py's
#: settle_pages: on this kind of VM, memory freed by a delete is handed back to the host
#: after about a second, and writing into it again costs CPU; the puller's imports alone
#: take about that long, so without this curl always met warm memory and the puller cold).
SETTLE_S = 2.5


def child(mode: str, store: Path, arg: str, deleted_at: float) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(store), arg,
                          str(deleted_at + SETTLE_S)], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def curl_once(url: str, out: Path, size: int) -> tuple[float, float]:
    """Seconds and CPU seconds of one ``curl -o``; the file is checked and deleted."""
    t = time.perf_counter()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["curl", "-s", "-f", "-o", str(out), url], check=True)
    secs = time.perf_counter() - t
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert out.stat().st_size == size
    out.unlink()
    return secs, c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("curl"):
        print("curl is not installed", file=sys.stderr)
        return 2
    path, sha = gemma_gguf()
    size = path.stat().st_size
    work = Path(tempfile.mkdtemp(prefix="swarmd-bench-pull-"))
    hub = FakeHub({REPO: HubRepo({path.name: path})})
    rows: dict[str, list[float]] = {"curl": [], "transfer": [], "pull": [], "warm": []}
    cpu: dict[str, list[float]] = {"curl": [], "transfer": [], "pull": [], "warm": []}
    rss: list[tuple[float, float]] = []
    try:
        with hub.server as srv:
            blob_url = f"{srv.url}/cdn/{sha}"
            out = work / "curl.out"
            curl_once(blob_url, out, size)  # warm-up
            for r in range(args.rounds):
                # curl right after a delete (the memory it frees is still the guest's)
                secs, c = curl_once(blob_url, out, size)
                rows["warm"].append(secs)
                cpu["warm"].append(c)
                time.sleep(SETTLE_S)
                secs, c = curl_once(blob_url, out, size)
                rows["curl"].append(secs)
                cpu["curl"].append(c)
                res = child("transfer", work / f"t{r}", f"{blob_url} {size}", time.monotonic())
                rows["transfer"].append(res["seconds"])
                cpu["transfer"].append(res["cpu"])
                shutil.rmtree(work / f"t{r}")
                res = child("pull", work / f"p{r}", srv.url, time.monotonic())
                rows["pull"].append(res["seconds"])
                cpu["pull"].append(res["cpu"])
                rss.append((res["rss_base"], res["rss_peak"]))
                shutil.rmtree(work / f"p{r}")
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()),
                      file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    curl = statistics.median(rows["curl"])
    print(f"\nGemma 3 270M Q4_K_M GGUF, {size / 1e6:.1f} MB, loopback, fake Hub (aiohttp), "
          f"median of {args.rounds} rounds\n")
    print(f"| {'client':<34} | {'seconds':>7} | {'MB/s':>7} | {'vs curl':>7} | {'CPU s':>6} |")
    print(f"|{'-' * 36}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 8}|")
    labels = {"curl": "curl -o (no hashing, no fsync)",
              "transfer": "swarmd fetch engine (hash + fsync)",
              "pull": "swarmd pull hf: (API + meta too)",
              "warm": "(ref.) curl -o, right after a delete"}
    for k, v in rows.items():
        s = statistics.median(v)
        c = statistics.median(cpu[k])
        print(f"| {labels[k]:<34} | {s:>7.2f} | {size / s / 1e6:>7.0f} | {curl / s:>6.2f}x |"
              f" {c:>6.2f} |")
    base = statistics.median(b for b, _ in rss) / 2**20
    peak = statistics.median(p for _, p in rss) / 2**20
    print(f"\npuller process RSS: {base:.1f} MiB after imports, {peak:.1f} MiB peak "
          f"(+{peak - base:.1f} MiB for a {size / 2**20:.0f} MiB model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
