"""The data plane between real daemons: forwards over it, the libp2p fallback, refusals.

Three real daemons on 127.0.0.1: A has no engine; B fronts a SIMULATED engine
(``swarmd-simengine``) serving ``dp-b``; C fronts one serving ``dp-c`` and has
``[dataplane] enabled = false`` (as a swarmd that predates the plane would).
Requests through A to ``dp-b`` go over the data plane, to ``dp-c`` over the
libp2p forward protocol.  A client holding the swarm secret but not a member's
identity, and one with another swarm's secret, are refused by B's plane
before any request is read.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmd.api.upstream import Deadlines, ProxyRequest, UpstreamError
from swarmd.dataplane import node_cert
from swarmd.dataplane.client import DataPlaneClient
from swarmd.identity import Identity
from swarmd.testing.daemon import VENV_BIN, Daemon, free_port, wait_for

pytestmark = [pytest.mark.integration]

SECRET = secrets.token_hex(32)


def _scrape(d: Daemon) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(d.api_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return {s.name: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if not s.labels}


def _chat(d: Daemon, model: str, stream: bool) -> tuple[str, str]:
    body = json.dumps({"model": model, "stream": stream,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(d.api_url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.headers["X-Swarmd-Node"], r.read().decode()


class Swarm:
    def __init__(self, root: Path) -> None:
        self.engines: list[subprocess.Popen[bytes]] = []
        tomls = {}
        for model in ("dp-b", "dp-c"):
            port = free_port()
            self.engines.append(subprocess.Popen(
                [str(VENV_BIN / "swarmd-simengine"), "--port", str(port), "--model", model,
                 "--max-tokens", "8"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            tomls[model] = f'\n[[engines]]\nkind = "simulated"\nurl = "http://127.0.0.1:{port}"\n'
        self.b = Daemon(root, "b", secret=SECRET, extra_toml=tomls["dp-b"]).start()
        self.c = Daemon(root, "c", secret=SECRET, extra_toml=tomls["dp-c"], dataplane=False,
                        seeds=[self.b.seed]).start()
        self.a = Daemon(root, "a", secret=SECRET, seeds=[self.b.seed]).start()
        self.nodes = [self.a, self.b, self.c]

    def close(self) -> None:
        for d in self.nodes:
            if d.alive():
                d.kill()
        for e in self.engines:
            e.send_signal(signal.SIGKILL)
            e.wait(5)


def _models(d: Daemon) -> set[str]:
    with urllib.request.urlopen(d.api_url + "/v1/models", timeout=5) as r:
        return {m["id"] for m in json.load(r)["data"]}


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    s = Swarm(tmp_path_factory.mktemp("dp"))
    try:
        wait_for(lambda: {"dp-b", "dp-c"} <= _models(s.a), 30, what="models gossiped to A")
        yield s
    finally:
        s.close()


def _dp_address(s: Swarm, d: Daemon) -> tuple[str, int]:
    """D's data-plane address as A's status shows D's record."""
    for n in s.a.status()["nodes"]:
        if n["name"] == d.name:
            host, _, port = n["dp"][0].rpartition(":")
            return host, int(port)
    raise AssertionError(f"{d.name} not in A's status")


def test_forwards_use_the_plane_and_fall_back_to_libp2p(swarm: Swarm) -> None:
    a, b, c = swarm.a, swarm.b, swarm.c
    for stream in (False, True):
        node, text = _chat(a, "dp-b", stream)
        assert node == b.node_id
        assert text.endswith("data: [DONE]\n\n") if stream else json.loads(text)["choices"]
        node, text = _chat(a, "dp-c", stream)
        assert node == c.node_id
    ma, mb, mc = _scrape(a), _scrape(b), _scrape(c)
    assert ma["swarmd_dataplane_forward_plane_total"] == 2
    assert ma["swarmd_dataplane_forward_fallback_total"] == 2  # C has no plane
    assert ma["swarmd_dataplane_forward_unreachable_total"] == 0
    assert mb["swarmd_dataplane_server_completed_total"] == 2
    assert mb["swarmd_forward_server_requests_total"] == 0
    assert mc["swarmd_forward_server_requests_total"] == 2
    assert "swarmd_dataplane_server_forwarded_total" not in mc


def _try(client: DataPlaneClient, node_id: str) -> str:
    async def go() -> str:
        req = ProxyRequest(route="/v1/chat/completions", model="dp-b",
                           body=b'{"model":"dp-b","messages":[]}',
                           headers=(("content-type", "application/json"),), request_id="x")
        try:
            resp = await client.open(node_id, "e", req,
                                     Deadlines(5.0, 5.0, 5.0, time.monotonic() + 10))
            await resp.aclose()
            return f"answered {resp.status}"
        except UpstreamError as exc:
            return f"{exc.kind}: {exc.message}"
        finally:
            await client.close()
    return asyncio.run(go())


def test_strangers_are_refused_at_the_handshake(swarm: Swarm) -> None:
    b = swarm.b
    addr = _dp_address(swarm, b)
    before = _scrape(b)["swarmd_dataplane_server_refused_connections_total"]
    stranger = Identity.generate()  # holds the secret, is not a member
    client = DataPlaneClient(node_cert(stranger, bytes.fromhex(SECRET)), lambda _p: True,
                             lambda _n: addr)
    got = _try(client, b.node_id)
    assert got.startswith("connect"), got
    wait_for(lambda: _scrape(b)["swarmd_dataplane_server_refused_connections_total"]
             > before, 5, what="B counted the refusal")
    # Another swarm's secret: the TLS handshake itself fails.
    other: Any = DataPlaneClient(node_cert(Identity.generate(), secrets.token_bytes(32)),
                                 lambda _p: True, lambda _n: addr)
    got = _try(other, b.node_id)
    assert got.startswith("connect") and "TLS" in got, got


def _listen_queue(port: int) -> int:
    """The accept-queue length the kernel holds for the listener on ``port``
    (``ss``'s Send-Q of a listening socket)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True, timeout=10).stdout.split()
    assert out and out[0] == "LISTEN", out
    return int(out[2])


def test_listeners_queue_what_the_config_says(tmp_path: Path) -> None:
    """[api] backlog and [dataplane] backlog reach the kernel: with the old
    defaults (128 and 100) a burst of 500 clients saw dropped SYNs."""
    d = Daemon(tmp_path, "q", secret=SECRET, api_toml="backlog = 333",
               extra_toml="backlog = 222").start()
    try:
        me = next(n for n in d.status()["nodes"] if n["name"] == "q")
        dp_port = int(me["dp"][0].rpartition(":")[2])
        assert _listen_queue(d.api_port) == 333
        assert _listen_queue(dp_port) == 222
    finally:
        d.kill()
