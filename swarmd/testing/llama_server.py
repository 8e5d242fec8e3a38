"""Run a real llama.cpp engine (llama-cpp-python's server) for tests.

Theory of operation: :func:`start` is a context manager that launches
``python -m llama_cpp.server`` as a subprocess in its own session (process
group), on 127.0.0.1 and a free port, serving one GGUF model (normally the
tiny random model from :mod:`swarmd.testing.tiny_gguf`). It polls ``/v1/models``
until the server answers, then yields a :class:`LlamaServer` describing it.
On exit, and on any failure while starting, the whole process group is sent
SIGTERM, then SIGKILL after a grace period. If the server dies or does not
answer in time, :class:`LlamaServerError` carries the tail of its log.

Facts about llama-cpp-python 0.3.x's server that tests rely on:

- It runs one request at a time (an asyncio lock around the model). With its
  default ``interrupt_requests=True`` a *streaming* response is cut short
  (``data: [DONE]`` without a finish_reason) as soon as another request
  waits for the lock; :func:`start` turns that off so requests queue.
- ``--embedding true`` is needed for ``/v1/embeddings``. The model must
  carry a pooling type (``write_tiny_gguf(..., embedding=True)``), or the
  server answers one vector per token instead of one per input.
- ``--use_mlock`` defaults to true; it is turned off (containers refuse it).
- ``--cache true`` adds a RAM prompt cache keyed by token prefix.

The pytest fixtures that start one per test session are in
``tests/fakes/llama_server.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SKIP_REASON = (
    "llama-cpp-python[server] and gguf are not installed in this interpreter "
    "(run: bash .ci/install-llama.sh)"
)


class LlamaServerError(RuntimeError):
    """The llama.cpp server did not come up; the message ends with its log."""


@dataclass(frozen=True)
class LlamaServer:
    """A running llama-cpp-python server."""

    host: str
    port: int
    model_alias: str
    model_path: Path
    embedding: bool
    pid: int
    log_path: Path

    @property
    def base_url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """What the ``openai`` SDK wants as ``base_url`` (ends in ``/v1``)."""
        return self.base_url + "/v1"

    def log_tail(self, n_bytes: int = 4000) -> str:
        return _tail(self.log_path, n_bytes)


def llama_available() -> bool:
    """True if llama-cpp-python's server and gguf can be imported here."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("llama_cpp", "gguf", "uvicorn", "fastapi", "sse_starlette")
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def server_command(
    model: Path,
    *,
    host: str,
    port: int,
    alias: str,
    embedding: bool = False,
    n_ctx: int = 512,
    n_threads: int = 1,
    cache: bool = False,
    seed: int = 0,
    verbose: bool = False,
    python: str = sys.executable,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv that starts llama-cpp-python's server with these settings."""

    def flag(value: bool) -> str:
        return "true" if value else "false"

    return [
        python, "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", alias,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(n_threads),
        "--n_threads_batch", str(n_threads),
        "--seed", str(seed),
        "--embedding", flag(embedding),
        "--cache", flag(cache),
        "--use_mlock", "false",
        "--interrupt_requests", "false",
        "--verbose", flag(verbose),
        *extra_args,
    ]  # fmt: skip


def _tail(path: Path, n_bytes: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n_bytes))
            return f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"


def _models_answer(base_url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/v1/models", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _launch(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextlib.contextmanager
def start(
    model: Path,
    *,
    alias: str = "tiny",
    embedding: bool = False,
    n_ctx: int = 512,
    n_threads: int = 1,
    cache: bool = False,
    seed: int = 0,
    verbose: bool = False,
    host: str = "127.0.0.1",
    startup_timeout: float = 60.0,
    log_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    attempts: int = 3,
) -> Iterator[LlamaServer]:
    """Start a llama-cpp-python server for ``model``; stop it on exit.

    ``verbose`` makes the server log per-request timings (prompt eval, eval)
    to its log file. ``attempts`` covers the race between picking a free port
    and the server binding it.
    """
    owned_dir: tempfile.TemporaryDirectory[str] | None = None
    if log_dir is None:
        owned_dir = tempfile.TemporaryDirectory(prefix="llama-server-")
        log_dir = Path(owned_dir.name)
    proc: subprocess.Popen[bytes] | None = None
    try:
        last_error = ""
        for attempt in range(attempts):
            port = free_port(host)
            log_path = log_dir / f"llama-server-{alias}-{port}.log"
            argv = server_command(
                model, host=host, port=port, alias=alias, embedding=embedding,
                n_ctx=n_ctx, n_threads=n_threads, cache=cache, seed=seed,
                verbose=verbose, extra_args=extra_args,
            )  # fmt: skip
            proc = _launch(argv, log_path)
            server = LlamaServer(
                host=host, port=port, model_alias=alias, model_path=Path(model),
                embedding=embedding, pid=proc.pid, log_path=log_path,
            )  # fmt: skip
            deadline = time.monotonic() + startup_timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if _models_answer(server.base_url, timeout=1.0):
                    break
                time.sleep(0.05)
            if proc.poll() is None and _models_answer(server.base_url, timeout=1.0):
                yield server
                return
            exited = proc.poll()
            _stop(proc)
            log = server.log_tail()
            if exited is None:
                raise LlamaServerError(
                    f"llama server {' '.join(argv)} did not answer /v1/models within "
                    f"{startup_timeout:.0f} s; log tail:\n{log}"
                )
            last_error = (
                f"llama server {' '.join(argv)} exited with status {exited} "
                f"(attempt {attempt + 1}/{attempts}); log tail:\n{log}"
            )
            if "address already in use" not in log.lower():
                break
        raise LlamaServerError(last_error)
    finally:
        if proc is not None:
            _stop(proc)
        if owned_dir is not None:
            owned_dir.cleanup()
