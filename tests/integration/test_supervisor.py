"""Managed engines: the supervisor with real processes (llama-cpp-python on
the tiny model, and small stand-ins for crash and leftover cases)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import pytest

from swarmd.engines.supervisor import LaunchSpec, Managed, Supervisor, SupervisorConfig
from swarmd.testing.daemon import pid_alive
from swarmd.testing.llama_server import SKIP_REASON, llama_available
from swarmd_engines.llamacpp import LlamaCppEngine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]


async def _models_ok(m: Managed) -> bool:
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(m.url + "/v1/models", timeout=aiohttp.ClientTimeout(total=1)) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie child of ours counts as gone once reaped by the supervisor.
        time.sleep(0.1)
    return False


async def _wait_state(m: Managed, state: str, within: float) -> None:
    deadline = time.monotonic() + within
    while m.state != state:
        assert time.monotonic() < deadline, (m.state, m.reason)
        await asyncio.sleep(0.05)


@pytest.mark.llama
@pytest.mark.skipif(not llama_available(), reason=SKIP_REASON)
def test_llama_engine_launched_restarted_after_kill9_and_stopped(
        tmp_path: Path, tiny_model: Path) -> None:
    argv = LlamaCppEngine.launch_command(str(tiny_model), model_id="tiny", ctx=256, slots=1,
                                         threads=1)
    assert argv is not None and "{port}" in argv

    async def t() -> None:
        sup = Supervisor(tmp_path / "engines", _models_ok,
                         SupervisorConfig(backoff_min=0.1, start_timeout=60))
        m = sup.start(LaunchSpec("llama-tiny", "llamacpp", "tiny", tuple(argv), gpus=()))
        await _wait_state(m, "ready", 60)
        assert await _models_ok(m)
        first = m.pid
        assert first is not None and (tmp_path / "engines" / "llama-tiny.pid").exists()
        os.kill(first, signal.SIGKILL)  # the engine crashes
        await _wait_state(m, "restarting", 10)
        assert "status -9" in m.reason
        await _wait_state(m, "ready", 60)
        assert m.pid != first and len(m.restarts) == 1
        log = (tmp_path / "engines" / "llama-tiny.log").read_text()
        assert log.count("==== swarmd: starting") == 2
        pid = m.pid
        assert pid is not None
        await sup.stop("llama-tiny")
        assert m.state == "stopped" and _gone(pid, 5)
        assert not (tmp_path / "engines" / "llama-tiny.pid").exists()

    asyncio.run(t())


def test_crash_loop_gives_up_with_the_reason(tmp_path: Path) -> None:
    argv = (sys.executable, "-c", "import sys; print('bad model file'); sys.exit(3)")

    async def t() -> None:
        sup = Supervisor(tmp_path, _models_ok,
                         SupervisorConfig(backoff_min=0.01, backoff_max=0.02, max_restarts=2))
        m = sup.start(LaunchSpec("e", "llamacpp", "m", argv))
        await _wait_state(m, "failed", 20)
        assert "gave up after 3 crashes" in m.reason
        assert "status 3" in m.reason and "bad model file" in m.reason

    asyncio.run(t())


def _sleeper_script(state_dir: Path) -> str:
    return textwrap.dedent(f"""
        import asyncio, sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'plugins')!r}]
        from pathlib import Path
        from swarmd.engines.supervisor import LaunchSpec, Supervisor

        async def healthy(m):
            return True

        async def main():
            sup = Supervisor(Path({str(state_dir)!r}), healthy)
            m = sup.start(LaunchSpec("e", "test", "m",
                                     (sys.executable, "-c", "import time; time.sleep(600)",
                                      "{{port}}")))
            while m.state != "ready":
                await asyncio.sleep(0.05)
            print(m.pid, flush=True)
            await asyncio.sleep(600)

        asyncio.run(main())
    """)


def test_sigkill_of_swarmd_leaves_no_engine_behind(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", _sleeper_script(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    assert pid_alive(pid)
    parent.kill()  # SIGKILL: no cleanup code runs in the parent
    parent.wait(10)
    assert _gone(pid, 5), "engine survived its supervisor's SIGKILL"


def test_reap_kills_leftovers_of_an_earlier_swarmd_only_when_the_command_matches(
        tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(600)", "leftover-engine"]
    orphan = subprocess.Popen(argv, start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             start_new_session=True)
    try:
        import json

        (tmp_path / "a.pid").write_text(json.dumps({"pid": orphan.pid,
                                                    "marker": " ".join(argv)}))
        # A pid file whose pid now belongs to something else: never killed.
        (tmp_path / "b.pid").write_text(json.dumps({"pid": other.pid,
                                                    "marker": "llama_cpp.server --port 1"}))
        (tmp_path / "c.pid").write_text("garbage")
        sup = Supervisor(tmp_path, _models_ok)
        assert sup.reap() == [orphan.pid]
        orphan.wait(5)
        assert other.poll() is None
        assert not list(tmp_path.glob("*.pid"))
    finally:
        for p in (orphan, other):
            p.kill()
            p.wait(5)
