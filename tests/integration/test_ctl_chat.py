"""``swarmctl run MODEL`` on a terminal: the chat prompt, through a pty, against a real daemon.

The daemon fronts the testing kit's simulated engine (in a thread here, so
its request log can be read); the model is served already, so ``run`` goes
straight to the prompt.  Checked: the answer is printed as it streams, the
conversation is sent back each turn, Ctrl-C stops an answer (and drops that
turn), ``/bye`` quits with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmd.testing.daemon import VENV_BIN, Daemon, wait_for
from swarmd.testing.sim_engine import SimEngine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@contextlib.contextmanager
def sim_thread(**kw: Any) -> Iterator[SimEngine]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sim = asyncio.run_coroutine_threadsafe(SimEngine(**kw).start(), loop).result(10)
    try:
        yield sim
    finally:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class Tty:
    def __init__(self, argv: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover (the child)
            os.execv(argv[0], argv)
        self.seen = ""

    def read_until(self, text: str, timeout: float = 30.0) -> str:
        """Output up to and including the next ``text``; the rest is kept."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} in {self.seen!r}"
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                try:
                    chunk = os.read(self.fd, 4096).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    chunk = ""
                assert chunk, f"terminal closed before {text!r}: {self.seen!r}"
                self.seen += chunk
        i = self.seen.index(text) + len(text)
        out, self.seen = self.seen[:i], self.seen[i:]
        return out

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(self.pid, 9)
        raise AssertionError("swarmctl did not exit")


def _chats(sim: SimEngine) -> list[list[dict[str, str]]]:
    return [s.json()["messages"] for s in sim.seen if s.path == "/v1/chat/completions"]


def test_run_opens_a_streaming_chat_with_history_ctrl_c_and_bye(tmp_path: Path) -> None:
    with sim_thread(model="chatty", tps=20, max_tokens=40) as sim:
        engines = f'\n[[engines]]\nkind = "simulated"\nurl = "{sim.url}"\n'
        d = Daemon(tmp_path, "c", secret="7c" * 32, extra_toml=engines).start()
        try:
            wait_for(lambda: any(r["id"] == "chatty" and r["engines"] for r in _models(d)),
                     30, what="model served")
            tty = Tty([str(VENV_BIN / "swarmctl"), "--socket", str(d.socket), "run", "chatty"])
            assert "chatting with chatty" in tty.read_until(">>> ")
            tty.send("hello\n")
            tty.read_until("hello\r\n")  # the terminal's echo
            first = tty.read_until(" ")  # the first token is printed...
            t0 = time.monotonic()
            rest = tty.read_until(">>> ")  # ...long before the answer ends (40 tokens at 20/s)
            assert time.monotonic() - t0 > 0.8
            answer1 = (first + rest).removesuffix(">>> ").strip()
            assert len(answer1.split()) >= 30
            tty.send("again\n")
            tty.read_until("again\r\n")
            tty.read_until(" ")
            tty.send("\x03")  # Ctrl-C mid-answer
            assert "answer stopped" in tty.read_until(">>> ", timeout=10)
            tty.send("third\n")
            tty.read_until(">>> ")
            chats = _chats(sim)
            assert chats[0] == [{"role": "user", "content": "hello"}]
            assert chats[-1] == [{"role": "user", "content": "hello"},
                                 {"role": "assistant", "content": answer1},
                                 {"role": "user", "content": "third"}]  # "again" dropped
            tty.send("/bye\n")
            assert tty.wait() == 0
        finally:
            d.kill()


def _models(d: Daemon) -> list[dict[str, Any]]:
    r = d.ctl("models", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    rows: list[dict[str, Any]] = doc["models"] if isinstance(doc, dict) else doc
    return rows
