"""Process plumbing shared by bench/proxy_compare.py and bench/routing_bench.py.

Theory of operation: every server a benchmark needs (engines, nginx,
LiteLLM, swarmd daemons) runs as a separate process started through one
:class:`Procs` stack.  Each process gets its own session (process group) so
that closing the stack kills it *and* its children (nginx workers, uvicorn
workers) by that group's id -- never by name.  ``Procs`` is a context
manager: it closes on normal exit, on exceptions, on Ctrl-C, and (after
:func:`die_on_sigterm`) on SIGTERM.

The engine is the product's simulated engine: ``swarmd-simengine`` when it
is installed and runs, else ``python -m swarmd.engines.simulated`` (the same
program, from the source tree).
All addresses are 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks clean up."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def nginx_exe() -> str | None:
    """nginx's path; installed first (Debian's ``nginx``) when missing and this
    runs as root with apt-get, since its figures are the references."""

    def find() -> str | None:
        return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                         else None)

    exe = find()
    if exe is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("# nginx is not installed: apt-get install nginx", file=sys.stderr, flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nginx"]):
            if subprocess.run(cmd, capture_output=True, env=env, check=False).returncode:
                break
        exe = find()
    return exe


class Procs:
    """A stack of started processes and cleanup callbacks, closed in reverse."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._cleanups: list[Callable[[], None]] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def on_close(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd or REPO,
                                env={**os.environ, **(env or {})}, start_new_session=True)

        def stop() -> None:
            _kill_group(proc)
            log.close()

        self.on_close(stop)
        return proc

    def log_tail(self, name: str, n: int = 2000) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def close(self) -> None:
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception as exc:  # keep cleaning up the rest
                print(f"cleanup error: {exc}", file=sys.stderr)


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # children of the group (workers) may outlive the leader
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(5)


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback)
        return json.loads(r.read())


def post_json(url: str, body: dict[str, Any], timeout: float = 10.0, key: str = "") -> Any:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (loopback)
        return json.loads(r.read())


def wait_until(pred: Callable[[], bool], timeout: float, what: str,
               proc: subprocess.Popen[bytes] | None = None, interval: float = 0.1) -> float:
    """Poll ``pred`` (exceptions count as False); seconds waited, or RuntimeError."""
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        try:
            if pred():
                return time.monotonic() - t0
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(interval)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f}s ({last})")


def chat_ok(base: str, model: str, key: str = "") -> bool:
    """One non-streaming chat request through ``base`` answers with choices."""
    doc = post_json(base + "/v1/chat/completions",
                    {"model": model, "max_tokens": 4,
                     "messages": [{"role": "user", "content": "ping"}]}, key=key)
    return bool(doc.get("choices"))


def simengine_argv() -> list[str] | None:
    """``swarmd-simengine`` when it is installed and starts; None otherwise."""
    exe = VENV_BIN / "swarmd-simengine"
    if not exe.exists():
        return None
    try:
        r = subprocess.run([str(exe), "--help"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [str(exe)] if r.returncode == 0 else None


def engine_argv(port: int, model: str, *, ttft_ms: float = 0.0, tps: float = 0.0,
                max_tokens: int = 16, concurrency: int = 0, extra: tuple[str, ...] = (),
                prefer_sim: bool = True) -> tuple[list[str], str]:
    """Command line of one engine and the swarmd engine kind that fronts it
    (``prefer_sim=False``: run it from the source tree even when installed)."""
    sim = simengine_argv() if prefer_sim else None
    opts = ["--port", str(port), "--model", model, "--ttft-ms", str(ttft_ms),
            "--tps", str(tps), "--max-tokens", str(max_tokens)]
    if concurrency:
        opts += ["--concurrency", str(concurrency)]
    opts += list(extra)
    if sim is not None:
        return [*sim, *opts], "simulated"
    return [sys.executable, "-m", "swarmd.engines.simulated", *opts], "simulated"


def start_engine(procs: Procs, name: str, model: str, **kw: Any) -> tuple[str, str]:
    """Start an engine; (base URL, swarmd kind) once it lists ``model``."""
    port = free_port()
    argv, kind = engine_argv(port, model, **kw)
    proc = procs.spawn(name, argv)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: any(m.get("id") == model
                               for m in get_json(base + "/v1/models")["data"]),
                   30, f"engine {name}", proc)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{procs.log_tail(name)}") from None
    return base, kind


def run_loadgen(url: str, *, model: str, concurrency: int, requests: int, warmup: int = 0,
                duration: float = 15.0, stream: bool = False, max_tokens: int = 16,
                prompt: str = "hello", timeout: float = 60.0, api_key: str = ""
                ) -> dict[str, Any]:
    """bench/loadgen.py in its own process; its JSON result."""
    argv = [sys.executable, str(BENCH / "loadgen.py"), "--url", url, "--model", model,
            "--concurrency", str(concurrency), "--requests", str(requests),
            "--warmup", str(warmup), "--duration", str(duration),
            "--max-tokens", str(max_tokens), "--prompt", prompt, "--timeout", str(timeout)]
    if stream:
        argv.append("--stream")
    if api_key:
        argv += ["--api-key", api_key]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=2 * duration + timeout + 30)
    if r.returncode != 0:
        raise RuntimeError(f"loadgen failed ({r.returncode}): {r.stderr[-1500:]}")
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc
