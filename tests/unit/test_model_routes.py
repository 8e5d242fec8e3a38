"""Control API model-store routes and ``swarmctl pull``/``rm``, against a real control socket
and a real store (local-path sources)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmd import config
from swarmd.control.client import ControlClient, ControlError
from swarmd.models.service import ModelService
from swarmd.testing.tiny_gguf import write_tiny_gguf
from tests.fakes.control import FakeProvider, ServerThread

ROOT = Path(__file__).resolve().parents[2]


def swarmctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}", "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "swarmd.ctl.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


CHANGES: list[list[list[str]]] = []  # inventories passed to on_change


class StoreProvider(FakeProvider):
    def __init__(self, service: ModelService | None) -> None:
        super().__init__()
        self.model_service = service


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, ModelService]]:
    d = Path(tempfile.mkdtemp(prefix="swm", dir="/tmp"))
    cfg = config.from_mapping({"node": {"data_dir": str(tmp_path / "data")},
                               "models": {"max_transfer_rate": 0}})
    service = ModelService.from_config(cfg, on_change=CHANGES.append)
    assert service.store.root == tmp_path / "data" / "models"
    with ServerThread(d / "swarmd.sock", StoreProvider(service)):
        yield d / "swarmd.sock", service
    shutil.rmtree(d, ignore_errors=True)


def test_pull_json_lines_then_list_then_rm(served: tuple, tmp_path: Path) -> None:
    sock, service = served
    g = write_tiny_gguf(tmp_path / "tiny.gguf")
    r = swarmctl("--socket", str(sock), "pull", str(g), "--name", "tiny:1", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[0]["status"] == "resolving" and any(x["status"] == "pulling" for x in lines)
    final = lines[-1]
    assert final["status"] == "success" and final["name"] == "tiny:1"
    assert final["size"] == g.stat().st_size and final["digest"].startswith("sha256:")
    assert Path(final["path"]).read_bytes() == g.read_bytes()
    doc = ControlClient(sock).get("/v1/store")
    assert [m["name"] for m in doc["models"]] == ["tiny:1"]
    assert doc["models"][0]["architecture"] == "llama" and doc["usage"] >= final["size"]
    assert service.inventory() == [[final["digest"][7:], "tiny:1"]]
    assert CHANGES[-1] == service.inventory()  # the record gets the new inventory
    r = swarmctl("--socket", str(sock), "rm", "tiny:1")
    assert r.returncode == 0 and "removed tiny:1" in r.stdout, r.stderr
    assert CHANGES[-1] == []
    assert ControlClient(sock).get("/v1/store")["models"] == []
    r = swarmctl("--socket", str(sock), "rm", "tiny:1")
    assert r.returncode == 1 and "no model 'tiny:1'" in r.stderr and "HTTP 404" in r.stderr


def test_pull_progress_bar_and_errors(served: tuple, tmp_path: Path) -> None:
    sock, _ = served
    g = write_tiny_gguf(tmp_path / "tiny.gguf")
    r = swarmctl("--socket", str(sock), "pull", str(g))
    assert r.returncode == 0, r.stderr
    assert "tiny  sha256:" in r.stdout
    r = swarmctl("--socket", str(sock), "pull", "s3://x/y.gguf")
    assert r.returncode == 1 and "unknown source scheme 's3'" in r.stderr and "HTTP 400" in r.stderr
    r = swarmctl("--socket", str(sock), "pull", "/nope/x.gguf", "--json")
    assert r.returncode == 1 and "no such file" in r.stderr
    last = json.loads(r.stdout.splitlines()[-1])
    assert last["status"] == "error" and last["error"]["code"] == "pull_failed"


def test_routes_without_a_store_answer_503(tmp_path: Path) -> None:
    d = Path(tempfile.mkdtemp(prefix="swm", dir="/tmp"))
    try:
        with ServerThread(d / "s.sock", StoreProvider(None)):
            with pytest.raises(ControlError) as err:
                ControlClient(d / "s.sock").get("/v1/store")
            assert err.value.status == 503
            with pytest.raises(ControlError) as err:
                ControlClient(d / "s.sock").post("/v1/store/rm", {"nam": 1})
            assert err.value.status == 503
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_bad_bodies(served: tuple) -> None:
    sock, _ = served
    c = ControlClient(sock)
    for url, body in (("/v1/store/rm", {"nam": "x"}), ("/v1/store/pull", {"source": 3}),
                      ("/v1/store/pull", {"source": "/x", "name": "bad name"})):
        with pytest.raises(ControlError) as err:
            c.post(url, body)
        assert err.value.status == 400


def lock_free(path: Path) -> bool:
    from swarmd.models.fsutil import locked

    with locked(path, blocking=False) as held:
        return held


def test_client_going_away_cancels_the_pull_and_it_resumes(tmp_path: Path) -> None:
    from swarmd.control.client import UnixHTTPConnection

    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(40 * 1024 * 1024))
    d = Path(tempfile.mkdtemp(prefix="swm", dir="/tmp"))
    cfg = config.from_mapping({"node": {"data_dir": str(tmp_path / "data")},
                               "models": {"max_transfer_rate": 8 * 1024 * 1024,
                                          "allow_pickle": True}})
    service = ModelService.from_config(cfg)
    try:
        with ServerThread(d / "s.sock", StoreProvider(service)):
            conn = UnixHTTPConnection(str(d / "s.sock"), 30)
            conn.request("POST", "/v1/store/pull", body=json.dumps({"source": str(src)}).encode())
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Content-Type") == "application/x-ndjson"
            while json.loads(resp.readline()).get("completed", 0) < 17 * 1024 * 1024:
                pass
            conn.close()  # swarmctl killed, Ctrl-C, ...
            partial = tmp_path / "data" / "models" / "partial"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(
                    lock_free(p) for p in (tmp_path / "data" / "models" / "locks").glob("id-*")):
                time.sleep(0.1)
            assert time.monotonic() < deadline, "the pull went on after its client left"
            assert service.store.list() == []  # cancelled, not finished in the background
            journal = json.loads(next(partial.glob("*.json")).read_text())
            assert 1 <= len(journal["chunks"]) < 3
            r = swarmctl("--socket", str(d / "s.sock"), "pull", str(src), "--json")
            assert r.returncode == 0, r.stderr
            first = [json.loads(x) for x in r.stdout.splitlines() if '"pulling"' in x][0]
            assert first["completed"] >= 16 * 1024 * 1024  # resumed, not from zero
    finally:
        shutil.rmtree(d, ignore_errors=True)
