"""Engines swarmd runs itself: start, watch, restart, stop, leave nothing behind.

Theory of operation
-------------------
A *managed* engine is a server process swarmd launched for one model file
(the engine kind says how: :meth:`Engine.launch_command`).  The
:class:`Supervisor` lives on the daemon's asyncio thread and keeps one
:class:`Managed` per engine id:

- **Start**: a free loopback port is allocated (``{port}`` in the argv and
  in the added environment's values is replaced by it), GPU visibility set
  (``CUDA_VISIBLE_DEVICES`` / ``HIP_VISIBLE_DEVICES``: empty hides every GPU),
  and the process started in its own session (process group) with
  ``PR_SET_PDEATHSIG = SIGKILL`` on Linux, so it dies with swarmd even when
  swarmd is killed with SIGKILL.  Its output goes to
  ``data_dir/engines/<id>.log``, rotated at ``log_max_bytes`` (one ``.1``
  kept).  A pid file ``data_dir/engines/<id>.pid`` records the process group.
- **Ready**: the kind's health check answers (``Engine.health``), polled every
  ``health_interval`` until ``start_timeout``; states ``loading`` -> ``ready``.
- **Crash**: the process exited unasked -> ``restarting`` after a backoff
  that doubles from ``backoff_min`` to ``backoff_max``; after
  ``max_restarts`` crashes within ``restart_window`` it gives up: state
  ``failed`` with the reason (exit status and the log's last line).
- **Stop**: SIGTERM to the group, SIGKILL after ``stop_grace``; pid file removed.
- **Reap**: at start, :meth:`Supervisor.reap` kills the process group of every
  pid file an earlier swarmd left (a kill -9 of swarmd on a platform without
  PDEATHSIG, or a crash between fork and prctl) -- only when the process's
  command line still names the same engine, so a recycled pid is never hit.

Engines started by hand are not managed here: they are ``[[engines]]``
entries as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

log = logging.getLogger("swarmd.supervisor")

State = Literal["starting", "loading", "ready", "restarting", "stopping", "stopped", "failed"]

#: prctl option: the signal a child gets when its parent thread dies (Linux).
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class LaunchSpec:
    """What to run for one managed engine."""

    engine_id: str
    kind: str
    model: str  # the model id it serves
    argv: tuple[str, ...]  # "{port}" is replaced by the allocated port
    env: Mapping[str, str] = field(default_factory=dict)  # "{port}" replaced too
    #: GPU indices to expose; None: leave the environment as is; (): no GPU.
    gpus: tuple[int, ...] | None = None
    gpu_vendor: str = "nvidia"  # nvidia -> CUDA_VISIBLE_DEVICES, amd -> HIP_VISIBLE_DEVICES


@dataclass(frozen=True)
class SupervisorConfig:
    #: Seconds a launched engine may take to answer its health check.
    start_timeout: float = 120.0
    #: Seconds between health checks while it loads.
    health_interval: float = 0.25
    #: Restart backoff after a crash, seconds: first, then doubling to max.
    backoff_min: float = 1.0
    backoff_max: float = 30.0
    #: Crashes within restart_window seconds before giving up.
    max_restarts: int = 5
    restart_window: float = 300.0
    #: Seconds between SIGTERM and SIGKILL when stopping.
    stop_grace: float = 10.0
    #: Engine log size before rotation, bytes (one rotated file kept).
    log_max_bytes: int = 16 * 1024 * 1024


@dataclass
class Managed:
    spec: LaunchSpec
    state: State = "starting"
    port: int = 0
    pid: int | None = None
    reason: str = ""
    restarts: list[float] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    task: asyncio.Task[None] | None = None
    log_path: Path = Path()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def view(self) -> dict[str, object]:
        return {"engine_id": self.spec.engine_id, "model": self.spec.model,
                "kind": self.spec.kind, "state": self.state, "port": self.port,
                "pid": self.pid, "reason": self.reason or None,
                "restarts": len(self.restarts), "log": str(self.log_path)}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _pdeathsig() -> None:  # pragma: no cover (runs in the child)
    """In the child before exec: die with the parent; own process group."""
    os.setsid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl: do not linger
            os._exit(1)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


class Supervisor:
    """Runs managed engines (see the module docstring)."""

    def __init__(self, state_dir: Path, health: Callable[[Managed], object],
                 config: SupervisorConfig | None = None,
                 on_change: Callable[[Managed], None] | None = None) -> None:
        """``health(m)`` is an awaitable factory: True when the engine serves."""
        self.dir = state_dir
        self.health = health
        self.config = config or SupervisorConfig()
        self.on_change = on_change
        self.engines: dict[str, Managed] = {}

    # -- leftovers ------------------------------------------------------------------

    def reap(self) -> list[int]:
        """Kill engines an earlier swarmd left running; returns their pids."""
        killed: list[int] = []
        if not self.dir.is_dir():
            return killed
        for pidfile in self.dir.glob("*.pid"):
            try:
                doc = json.loads(pidfile.read_text())
                pid, marker = int(doc["pid"]), str(doc["marker"])
            except (OSError, ValueError, KeyError, TypeError):
                pidfile.unlink(missing_ok=True)
                continue
            if _alive(pid) and marker in _cmdline(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
                log.warning("killed engine %s (pid %d) left by an earlier swarmd",
                            pidfile.stem, pid)
            pidfile.unlink(missing_ok=True)
        return killed

    # -- lifecycle ------------------------------------------------------------------

    def start(self, spec: LaunchSpec) -> Managed:
        """Launch (or return the already managed) engine ``spec.engine_id``."""
        m = self.engines.get(spec.engine_id)
        if m is not None and m.state not in ("stopped", "failed"):
            return m
        self.dir.mkdir(parents=True, exist_ok=True)
        m = Managed(spec, log_path=self.dir / f"{spec.engine_id}.log")
        self.engines[spec.engine_id] = m
        m.task = asyncio.create_task(self._run(m), name=f"engine-{spec.engine_id}")
        return m

    async def stop(self, engine_id: str) -> None:
        m = self.engines.get(engine_id)
        if m is None:
            return
        task, m.task = m.task, None
        self._set(m, "stopping")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self._kill, m)
        self._set(m, "stopped")

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(eid) for eid in list(self.engines)))

    def views(self) -> list[dict[str, object]]:
        return [m.view() for _, m in sorted(self.engines.items())]

    # -- internals ------------------------------------------------------------------

    def _set(self, m: Managed, state: State, reason: str = "") -> None:
        m.state = state
        m.reason = reason
        if self.on_change is not None:
            try:
                self.on_change(m)
            except Exception:
                log.exception("supervisor on_change failed")

    def _env(self, spec: LaunchSpec, port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update({k: v.replace("{port}", str(port)) for k, v in spec.env.items()})
        if spec.gpus is not None:
            var = "HIP_VISIBLE_DEVICES" if spec.gpu_vendor == "amd" else "CUDA_VISIBLE_DEVICES"
            env[var] = ",".join(str(g) for g in spec.gpus)
        return env

    def _rotate(self, m: Managed) -> IO[bytes]:
        p = m.log_path
        with contextlib.suppress(OSError):
            if p.stat().st_size > self.config.log_max_bytes:
                os.replace(p, p.with_suffix(".log.1"))
        return p.open("ab")

    def _launch(self, m: Managed) -> None:
        m.port = free_port()
        argv = [a.replace("{port}", str(m.port)) for a in m.spec.argv]
        with self._rotate(m) as out:
            out.write(f"\n==== swarmd: starting {' '.join(argv)}\n".encode())
            out.flush()
            m.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, env=self._env(m.spec, m.port),
                                      preexec_fn=_pdeathsig)  # noqa: PLW1509
        m.pid = m.proc.pid
        pidfile = self.dir / f"{m.spec.engine_id}.pid"
        tmp = pidfile.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": m.pid, "marker": _marker(argv)}))
        os.replace(tmp, pidfile)

    def _kill(self, m: Managed) -> None:
        proc = m.proc
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, self.config.stop_grace), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        (self.dir / f"{m.spec.engine_id}.pid").unlink(missing_ok=True)

    async def _wait_ready(self, m: Managed) -> bool:
        deadline = time.monotonic() + self.config.start_timeout
        while time.monotonic() < deadline:
            if m.proc is None or m.proc.poll() is not None:
                return False
            try:
                ok = await self.health(m)  # type: ignore[misc]
            except Exception:  # noqa: BLE001 (not up yet)
                ok = False
            if ok:
                return True
            await asyncio.sleep(self.config.health_interval)
        return False

    async def _run(self, m: Managed) -> None:
        cfg = self.config
        backoff = cfg.backoff_min
        while True:
            self._set(m, "starting")
            try:
                await asyncio.to_thread(self._launch, m)
            except OSError as exc:
                self._set(m, "failed", f"cannot start {m.spec.argv[0]}: {exc.strerror or exc}")
                return
            self._set(m, "loading")
            if await self._wait_ready(m):
                self._set(m, "ready")
                backoff = cfg.backoff_min
                proc = m.proc
                assert proc is not None
                code: int | None = await asyncio.to_thread(proc.wait)
            else:
                code = m.proc.poll() if m.proc is not None else None
                if code is None:  # alive but never healthy
                    await asyncio.to_thread(self._kill, m)
                    self._set(m, "failed", f"not ready within {cfg.start_timeout:.0f} s; "
                                           f"log: {_last_line(m.log_path)}")
                    return
            now = time.monotonic()
            m.restarts = [t for t in m.restarts if now - t < cfg.restart_window] + [now]
            why = f"exited with status {code}; log: {_last_line(m.log_path)}"
            (self.dir / f"{m.spec.engine_id}.pid").unlink(missing_ok=True)
            if len(m.restarts) > cfg.max_restarts:
                self._set(m, "failed", f"gave up after {len(m.restarts)} crashes in "
                                       f"{cfg.restart_window:.0f} s: {why}")
                log.error("engine %s failed: %s", m.spec.engine_id, m.reason)
                return
            log.warning("engine %s %s; restarting in %.1f s", m.spec.engine_id, why, backoff)
            self._set(m, "restarting", why)
            await asyncio.sleep(backoff)
            backoff = min(cfg.backoff_max, backoff * 2)


def _marker(argv: Sequence[str]) -> str:
    """The command line that identifies this engine process (for reap): it
    holds the model path and the port, so no other process matches it."""
    return " ".join(argv)
