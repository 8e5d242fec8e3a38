"""Real ``swarmd`` daemons as separate processes, for integration tests.

Not a fake of swarmd: each :class:`Daemon` is the real program started with a
generated config file.  It lives here with the other test helpers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _toml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


class Daemon:
    """One real daemon with a generated config: ``api_toml`` adds keys to its
    ``[api]`` table, ``extra_toml`` whole tables at the end (``[[engines]]``, ...)."""

    def __init__(
        self,
        root: Path,
        name: str,
        *,
        secret: str,
        host: str = "127.0.0.1",
        p2p_port: int | None = None,
        api_port: int | None = None,
        seeds: Sequence[str] = (),
        mdns: bool = False,
        profile: str = "local",
        extra_toml: str = "",
        api_toml: str = "",
        netns: str | None = None,
        log_level: str = "info",
        dataplane: bool = True,
    ) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.p2p_port = p2p_port or free_port()
        self.api_port = api_port or free_port()
        self.socket = self.dir / "ctl.sock"
        self.netns = netns
        self.log_path = self.dir / "swarmd.log"
        self.config_path = self.dir / "swarmd.toml"
        self.config_path.write_text(
            f"""
[node]
name = {json.dumps(name)}
data_dir = {json.dumps(str(self.dir / "data"))}
[p2p]
listen = ["/ip4/{host}/tcp/{self.p2p_port}"]
seeds = {_toml_list(seeds)}
mdns = {"true" if mdns else "false"}
secret = "{secret}"
[membership]
profile = "{profile}"
[api]
listen = "{host}:{self.api_port}"
{api_toml}
[control]
socket = {json.dumps(str(self.socket))}
[local_engines]
detect = false
[log]
level = "{log_level}"
[dataplane]
enabled = {"true" if dataplane else "false"}
listen = "{host}:0"
{extra_toml}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def seed(self) -> str:
        return f"{self.host}:{self.p2p_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    def start(self, wait: float = 20.0) -> Daemon:
        cmd = [str(VENV_BIN / "swarmd"), "--config", str(self.config_path)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                try:
                    self.status()
                    return self
                except RuntimeError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not come up in {wait}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def ctl(self, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "swarmctl"), "--socket", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self) -> dict[str, Any]:
        r = self.ctl("status", "--json")
        if r.returncode != 0:
            raise RuntimeError(f"swarmctl status failed ({r.returncode}): {r.stderr}")
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    def states(self) -> dict[str, str]:
        """name -> state as this node sees the swarm."""
        return {n["name"]: n["state"] for n in self.status()["nodes"]}

    @property
    def node_id(self) -> str:
        return str(self.status()["node_id"])

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            if self.netns:
                # `ip netns exec` execs the program: same pid.
                os.kill(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 15.0) -> int | None:
        if not self.proc:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self._log.close()

    def alive(self) -> bool:
        return bool(self.proc and self.proc.poll() is None)


def wait_for(
    pred: Callable[[], bool], timeout: float, interval: float = 0.2, what: str = "condition"
) -> float:
    """Poll ``pred`` until true; return seconds waited; AssertionError on timeout."""
    start = time.monotonic()
    last_exc: Exception | None = None
    while time.monotonic() - start < timeout:
        try:
            if pred():
                return time.monotonic() - start
        except (RuntimeError, json.JSONDecodeError, subprocess.TimeoutExpired) as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists (signal 0)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
