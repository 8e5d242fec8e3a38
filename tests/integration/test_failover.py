"""Failures on the request path, with real daemons and SIMULATED engines.

- The engine behind B dies mid-stream: the client gets a clean error, A and B
  stay healthy.
- Node B dies before the first byte while a second engine (on C) serves the
  same model: every request succeeds there.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from swarmd.testing.daemon import VENV_BIN, Daemon, free_port, wait_for

pytestmark = pytest.mark.integration


class SimEngine:
    """A SIMULATED engine process (``swarmd-simengine``)."""

    def __init__(self, model: str, *, ttft_ms: int, tps: float, max_tokens: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "swarmd-simengine"), "--port", str(self.port), "--model", model,
             "--ttft-ms", str(ttft_ms), "--tps", str(tps), "--max-tokens", str(max_tokens)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._up, 20, what="simulated engine up")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _up(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v1/models", timeout=1):
                return True
        except OSError:
            return False

    def requests_seen(self) -> int:
        with urllib.request.urlopen(self.url + "/metrics", timeout=2) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith("simengine_requests_total"):
                return int(float(line.split()[-1]))
        return -1

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


def _engine_toml(url: str) -> str:
    return f'\n[[engines]]\nkind = "simulated"\nurl = "{url}"\n'


def _has_model(d: Daemon, model: str, engines: int) -> bool:
    with urllib.request.urlopen(d.api_url + "/v1/models", timeout=5) as r:
        for m in json.load(r)["data"]:
            if m["id"] == model:
                return len(m["swarmd"]["engines"]) >= engines
    return False


@pytest.fixture
def engines() -> Iterator[list[SimEngine]]:
    made: list[SimEngine] = []
    yield made
    for e in made:
        e.kill()


def test_engine_killed_mid_stream(tmp_path: Path, engines: list[SimEngine]) -> None:
    import openai

    eng = SimEngine("slow", ttft_ms=50, tps=20, max_tokens=400)
    engines.append(eng)
    secret = secrets.token_hex(32)
    b = Daemon(tmp_path, "b", secret=secret, extra_toml=_engine_toml(eng.url)).start()
    a = Daemon(tmp_path, "a", secret=secret, seeds=[b.seed]).start()
    try:
        wait_for(lambda: _has_model(a, "slow", 1), 30, what="model on A")
        client = openai.OpenAI(base_url=a.api_url + "/v1", api_key="x", max_retries=0,
                               timeout=30)
        stream = client.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "tell me"}], stream=True
        )
        got = 0
        t0 = time.monotonic()
        with pytest.raises(openai.APIError):
            for _chunk in stream:
                got += 1
                if got == 5:
                    eng.kill()
        assert got >= 5
        assert time.monotonic() - t0 < 20  # a clean error, not a hang
        for d in (a, b):
            with urllib.request.urlopen(d.api_url + "/health", timeout=5) as r:
                assert r.status == 200
        assert a.states() == {"a": "alive", "b": "alive"}
    finally:
        a.kill()
        b.kill()


def test_node_dies_before_first_byte_retried_elsewhere(
    tmp_path: Path, engines: list[SimEngine]
) -> None:
    slow = SimEngine("m", ttft_ms=4000, tps=0, max_tokens=8)
    fast = SimEngine("m", ttft_ms=0, tps=0, max_tokens=8)
    engines += [slow, fast]
    secret = secrets.token_hex(32)
    b = Daemon(tmp_path, "b", secret=secret, extra_toml=_engine_toml(slow.url)).start()
    c = Daemon(tmp_path, "c", secret=secret, seeds=[b.seed],
               extra_toml=_engine_toml(fast.url)).start()
    a = Daemon(tmp_path, "a", secret=secret, seeds=[b.seed]).start()
    try:
        wait_for(lambda: _has_model(a, "m", 2), 30, what="both engines on A")

        def one(i: int) -> int:
            body = json.dumps({"model": "m", "messages": [{"role": "user", "content": f"q{i}"}],
                               "user": f"u{i}"}).encode()
            req = urllib.request.Request(a.api_url + "/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                json.load(r)
                return r.status

        with ThreadPoolExecutor(10) as pool:
            futs = [pool.submit(one, i) for i in range(10)]
            time.sleep(1.5)  # requests are waiting on B's slow first token
            routed_to_b = slow.requests_seen()
            b.kill()
            statuses = [f.result() for f in futs]
        assert routed_to_b >= 1, "no request went to B; the test proves nothing"
        assert statuses == [200] * 10
    finally:
        for d in (a, b, c):
            if d.alive():
                d.kill()
