"""swarmctl: subprocess runs against a real control socket, output, exit codes, import cost."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmd.core.views import status_view
from swarmd.ctl import main as ctl_main
from swarmd.ctl.output import human_age, human_bytes, short_id
from tests.fakes.control import ALPHA, FakeProvider, ServerThread

ROOT = Path(__file__).resolve().parents[2]


def swarmctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}", "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "swarmd.ctl.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="swt", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def served(sock_dir: Path) -> Iterator[tuple[Path, FakeProvider]]:
    path = sock_dir / "swarmd.sock"
    provider = FakeProvider()
    with ServerThread(path, provider):
        yield path, provider


def test_status_json_is_exactly_the_document(served: tuple) -> None:
    path, provider = served
    r = swarmctl("--socket", str(path), "status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == status_view(provider.snapshot)


def test_json_flag_before_command(served: tuple) -> None:
    path, provider = served
    assert ctl_main.build_parser().parse_args(["--json", "--socket", "x", "nodes"]).json is True
    r = swarmctl("--json", "--socket", str(path), "nodes")
    assert r.returncode == 0, r.stderr
    assert [n["name"] for n in json.loads(r.stdout)["nodes"]] == ["alpha", "beta", "gamma"]


def test_status_table(served: tuple) -> None:
    path, _ = served
    r = swarmctl("--socket", str(path), "status")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    first = out.splitlines()[0]
    assert "this node: alpha" in first and "coordinator: beta epoch 7" in first
    assert "local health: 2 (probing slowed 3x)" in first
    for name in ("alpha", "beta", "gamma"):
        assert name in out
    assert short_id(ALPHA) in out
    assert "suspect" in out and "2x NVIDIA H100" in out and "512.0 GiB" in out
    assert "1/2" in out  # alpha: 1 engine, 2 models
    beta_line = next(line for line in out.splitlines()[1:] if " beta " in f" {line} ")
    assert beta_line.lstrip().startswith("*")  # the coordinator marker


def test_models_join_drain_leave(served: tuple) -> None:
    path, provider = served
    r = swarmctl("--socket", str(path), "models")
    assert r.returncode == 0 and "llama-3-8b" in r.stdout and "llamacpp@alpha" in r.stdout
    r = swarmctl("--socket", str(path), "join")
    assert r.stdout.strip() == "swarmd --join swarmd1:AAAA"
    assert swarmctl("--socket", str(path), "drain", "on").returncode == 0
    r = swarmctl("--socket", str(path), "drain", "off", "--json")
    assert json.loads(r.stdout) == {"ok": True, "draining": False}
    assert provider.drained == [True, False]
    r = swarmctl("--socket", str(path), "leave")
    assert r.returncode == 0 and "leaving" in r.stdout and provider.left == 1


def test_in_process_main(served: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = served
    assert ctl_main.main(["--socket", str(path), "nodes"]) == 0
    assert "gamma" in capsys.readouterr().out


def test_missing_socket_exit_2(sock_dir: Path) -> None:
    missing = sock_dir / "nope.sock"
    r = swarmctl("--socket", str(missing), "status")
    assert r.returncode == 2
    assert r.stderr.strip() == f"swarmctl: swarmd is not running (no socket at {missing})"
    assert r.stdout == ""


def test_stale_socket_exit_2(sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    r = swarmctl("--socket", str(path), "status")
    assert r.returncode == 2 and "not running" in r.stderr


def test_daemon_error_exit_1(served: tuple) -> None:
    path, provider = served
    provider.fail = "lease table broken"
    r = swarmctl("--socket", str(path), "status")
    assert r.returncode == 1 and "lease table broken" in r.stderr


def test_usage_errors_exit_2() -> None:
    assert swarmctl().returncode == 2
    assert swarmctl("frobnicate").returncode == 2
    r = swarmctl("drain", "maybe")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_cli_does_not_import_heavy_modules() -> None:
    code = ("import sys, swarmd.ctl.main; "
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    loaded = set(json.loads(out.replace("'", '"')))
    assert not loaded & {"aiohttp", "trio", "libp2p", "msgpack", "rich", "psutil",
                         "prometheus_client", "asyncio", "zeroconf", "cryptography"}


def test_formatting_helpers() -> None:
    assert human_bytes(512 * 1024**3) == "512.0 GiB"
    assert human_bytes(None) == "-"
    assert human_age(75.2) == "1m15s" and human_age(5) == "5s" and human_age(None) == "-"
    assert short_id("12D3KooWabcdefgh12345678") == "12345678"
