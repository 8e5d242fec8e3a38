"""The model store with the real Gemma 3 270M GGUF, from local fake servers only.

Fake HF Hub and plain HTTP (byte-identical, metadata from the GGUF), kill -9 in the
middle of a pull then resume without re-fetching finished chunks, eviction under
max_disk, a real small file system that cannot hold the model, the Ollama registry
and a local Ollama store, hostile sources.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarmd.models.manifest import CHUNK_SIZE
from swarmd.models.puller import Puller, PullError
from swarmd.models.sources.base import SourceSettings
from swarmd.models.store import ModelStore, NoSpaceError
from swarmd.testing.hub_servers import (
    FakeHub,
    FakeOllamaRegistry,
    HubRepo,
    file_server,
    gemma_gguf,
    write_ollama_store,
)
from swarmd.testing.tiny_gguf import write_tiny_gguf

ROOT = Path(__file__).resolve().parents[2]
REPO = "google/gemma-3-270m-GGUF"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma() -> tuple[Path, str]:
    return gemma_gguf()


def check_gemma(store: ModelStore, ref: str, gemma: tuple[Path, str]) -> None:
    m = store.get(ref)
    path, sha = gemma
    assert m.manifest.architecture == "gemma3"
    assert m.manifest.quantization == "Q4_K_M"
    assert m.manifest.context_length == 32768
    assert m.manifest.parameters == 268098176
    gg = [f for f in m.manifest.files if f.path.endswith(".gguf")][0]
    assert gg.sha256 == sha and gg.size == path.stat().st_size
    assert len(gg.chunks) == -(-gg.size // CHUNK_SIZE)
    assert store.blob_file(sha).read_bytes() == path.read_bytes()


def test_fake_hub_and_plain_http_give_the_same_bytes(tmp_path: Path, gemma: tuple) -> None:
    path, sha = gemma
    (tmp_path / "README.md").write_text("# gemma\n")
    hub = FakeHub({REPO: HubRepo({path.name: path, "README.md": tmp_path / "README.md"})},
                  token="hf_secret")
    with hub.server as srv, file_server({"/m/" + path.name: path}) as plain:
        from huggingface_hub import hf_hub_download

        # The fake speaks the Hub well enough for huggingface_hub itself.
        got = hf_hub_download(REPO, "README.md", endpoint=srv.url, token="hf_secret",
                              cache_dir=tmp_path / "hfcache")
        assert Path(got).read_text() == "# gemma\n"

        with pytest.raises(PullError, match="401"):
            Puller(ModelStore(tmp_path / "x"), SourceSettings(hf_endpoint=srv.url)).pull(f"hf:{REPO}")
        hf_store = ModelStore(tmp_path / "a")
        events: list[dict] = []
        m = Puller(hf_store, SourceSettings(hf_endpoint=srv.url, hf_token="hf_secret")).pull(
            f"hf:{REPO}:Q4_K_M", progress=events.append)
        assert m.manifest.name == f"{REPO}:Q4_K_M" and m.manifest.source == f"hf:{REPO}:Q4_K_M"
        assert [f.path for f in m.manifest.files] == [path.name]
        check_gemma(hf_store, m.digest, gemma)
        assert not (tmp_path / "a" / "hub").exists()  # nothing in an HF cache
        assert srv.bytes_served("/cdn/") == path.stat().st_size  # fetched once, in one request
        pulling = [e for e in events if e["status"] == "pulling"]
        assert pulling[-1]["completed"] == pulling[-1]["total"] == path.stat().st_size

        url_store = ModelStore(tmp_path / "b")
        m2 = Puller(url_store, SourceSettings()).pull(f"{plain.url}/m/{path.name}")
        assert m2.manifest.name == "gemma-3-270m-q4_k_m"
        check_gemma(url_store, m2.digest, gemma)
        assert m2.manifest.files[0].chunks == m.manifest.files[0].chunks


PULL_SCRIPT = """
import json, sys
from pathlib import Path
from swarmd.models.fetch import RateLimiter
from swarmd.models.puller import Puller
from swarmd.models.sources.base import SourceSettings
from swarmd.models.store import ModelStore
store = ModelStore(Path(sys.argv[1]))
m = Puller(store, SourceSettings(), limiter=RateLimiter(int(sys.argv[3]))).pull(sys.argv[2])
print(json.dumps({"digest": m.digest, "sha": m.manifest.files[0].sha256}))
"""


def _journal_chunks(store_dir: Path) -> int:
    for j in (store_dir / "partial").glob("*.json"):
        try:
            return len(json.loads(j.read_text())["chunks"])
        except (ValueError, KeyError):
            return 0
    return 0


def test_kill_9_mid_pull_resumes_without_refetching(tmp_path: Path, gemma: tuple) -> None:
    path, sha = gemma
    size = path.stat().st_size
    store_dir = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with file_server({"/g.gguf": path}) as srv:
        url = f"{srv.url}/g.gguf"
        proc = subprocess.Popen([sys.executable, "-c", PULL_SCRIPT, str(store_dir), url,
                                 str(40 * 1024 * 1024)], env=env)
        try:
            deadline = time.monotonic() + 60
            while _journal_chunks(store_dir) < 3 and time.monotonic() < deadline:
                assert proc.poll() is None, "the pull ended before it was killed"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        done = _journal_chunks(store_dir)
        assert 3 <= done < -(-size // CHUNK_SIZE)
        assert not ModelStore(store_dir).has_blob(sha) and ModelStore(store_dir).list() == []
        before = len(srv.requests)
        out = subprocess.run([sys.executable, "-c", PULL_SCRIPT, str(store_dir), url, "0"],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["sha"] == sha
        gets = [r for r in srv.requests[before:] if r.method == "GET"]
        assert len(gets) == 1 and gets[0].range is not None
        start = int(gets[0].range.removeprefix("bytes=").split("-")[0])
        assert start >= done * CHUNK_SIZE  # finished chunks were not fetched again
    store = ModelStore(store_dir)
    check_gemma(store, store.list()[0].digest, gemma)
    assert list((store_dir / "partial").iterdir()) == []


def test_eviction_under_max_disk(tmp_path: Path, gemma: tuple) -> None:
    path, _ = gemma
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
    used: set[str] = set()
    store = ModelStore(tmp_path / "store", max_disk=path.stat().st_size + 256 * 1024,
                       in_use=lambda: used)
    p = Puller(store, SourceSettings())
    with file_server({"/g.gguf": path}) as srv:
        p.pull(str(tiny), name="tiny")
        p.pull(str(tiny), name="tiny-b")
        used.add("tiny")
        with pytest.raises(NoSpaceError, match=r"needs 241\.4 MiB \(253113024 bytes\)"):
            p.pull(f"{srv.url}/g.gguf", name="gemma")  # tiny is in use: no room even after evicting
        assert [m.manifest.name for m in store.list()] == ["tiny"]  # tiny-b evicted trying (its blob is shared with tiny)
        assert srv.bytes_served() == 0
        used.clear()
        p.pull(f"{srv.url}/g.gguf", name="gemma")
    assert [m.manifest.name for m in store.list()] == ["gemma"]
    assert store.usage() <= store.max_disk


@pytest.fixture
def small_fs(tmp_path: Path) -> Path:
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_pull_too_big_for_the_disk_fails_before_writing(small_fs: Path, gemma: tuple) -> None:
    path, _ = gemma
    store = ModelStore(small_fs / "store")
    with file_server({"/g.gguf": path}) as srv:
        with pytest.raises(NoSpaceError) as err:
            Puller(store, SourceSettings()).pull(f"{srv.url}/g.gguf")
        assert srv.bytes_served() == 0 and {r.method for r in srv.requests} == {"HEAD"}
    msg = str(err.value)
    assert "needs 241.4 MiB (253113024 bytes)" in msg and "free on the file system" in msg
    assert list((small_fs / "store" / "partial").iterdir()) == []
    assert os.statvfs(small_fs).f_bfree * os.statvfs(small_fs).f_frsize > 127 * 1024 * 1024


def _ollama_layers(tmp_path: Path, gguf: Path) -> list[tuple[str, Path]]:
    (tmp_path / "template").write_text("{{ .Prompt }}")
    (tmp_path / "params").write_text(json.dumps({"stop": ["<end_of_turn>"]}))
    return [("application/vnd.ollama.image.model", gguf),
            ("application/vnd.ollama.image.template", tmp_path / "template"),
            ("application/vnd.ollama.image.params", tmp_path / "params")]


def test_ollama_registry_pull(tmp_path: Path, gemma: tuple) -> None:
    path, sha = gemma
    reg = FakeOllamaRegistry({"library/gemma3:270m": _ollama_layers(tmp_path, path)})
    store = ModelStore(tmp_path / "store")
    with reg.server as srv:
        m = Puller(store, SourceSettings(ollama_registry=srv.url)).pull("ollama:gemma3:270m")
        with pytest.raises(PullError, match="not found"):
            Puller(store, SourceSettings(ollama_registry=srv.url)).pull("ollama:gemma3:9b")
    assert m.manifest.name == "gemma3:270m" and m.manifest.source == "ollama:library/gemma3:270m"
    assert sorted(f.path for f in m.manifest.files) == ["config.json", "model.gguf", "params.json",
                                                        "template"]
    assert (m.path / "template").read_text() == "{{ .Prompt }}"
    check_gemma(store, "gemma3:270m", gemma)
    assert m.main_file == m.path / "model.gguf"


def test_local_ollama_store_imported_by_hard_link(tmp_path: Path, gemma: tuple) -> None:
    path, sha = gemma
    ollama = tmp_path / "ollama"
    write_ollama_store(ollama, "library/gemma3:270m", _ollama_layers(tmp_path, path))
    store = ModelStore(tmp_path / "store")
    m = Puller(store, SourceSettings(ollama_dir=ollama,
                                     ollama_registry="http://127.0.0.1:9")).pull("ollama:gemma3:270m")
    check_gemma(store, m.digest, gemma)
    src = ollama / "blobs" / f"sha256-{sha}"
    assert store.blob_file(sha).stat().st_ino == src.stat().st_ino  # linked, not copied


def test_hostile_sources_refused(tmp_path: Path, gemma: tuple) -> None:
    path, sha = gemma
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    (tmp_path / "config.json").write_text("{}")
    lying = HubRepo({"model.gguf": path})
    hub = FakeHub({
        "evil/traversal": HubRepo({"../../escape.gguf": tiny}),
        "evil/lying": lying,
        "evil/pickle": HubRepo({"pytorch_model.bin": tmp_path / "pytorch_model.bin",
                                "config.json": tmp_path / "config.json"}),
    })
    lying.meta["model.gguf"]["lfs"] = "0" * 64  # the listing's sha256 is not the file's
    hub.blobs["0" * 64] = path
    hub.server.sizes["/cdn/" + "0" * 64] = path.stat().st_size
    store = ModelStore(tmp_path / "store")
    with hub.server as srv:
        p = Puller(store, SourceSettings(hf_endpoint=srv.url))
        with pytest.raises(PullError, match="refused: file path '../../escape.gguf'"):
            p.pull("hf:evil/traversal")
        with pytest.raises(PullError, match="is not the expected 0000"):
            p.pull("hf:evil/lying")
        with pytest.raises(PullError, match="only pickle-based weights"):
            p.pull("hf:evil/pickle")
        assert store.list() == [] and not store.has_blob(sha)
        assert list((tmp_path / "store" / "partial").glob("*.part")) == []
        m = Puller(store, SourceSettings(hf_endpoint=srv.url, allow_pickle=True)).pull("hf:evil/pickle")
        assert sorted(f.path for f in m.manifest.files) == ["config.json", "pytorch_model.bin"]
    reg = FakeOllamaRegistry({"library/big:1": [("application/vnd.ollama.image.model", tiny)]})
    body = json.loads(reg.manifests["library/big:1"])
    body["layers"][0]["size"] = 5 * 1024**4
    reg.manifests["library/big:1"] = json.dumps(body).encode()
    with reg.server as srv:
        with pytest.raises(PullError, match="bad layer size"):
            Puller(store, SourceSettings(ollama_registry=srv.url)).pull("ollama:big:1")
