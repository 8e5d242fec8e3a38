"""Models fetched once and shared peer to peer, between real daemons (the real Gemma GGUF).

Three real daemons on 127.0.0.1 with their data planes.  Node 1 pulls the
Gemma 3 270M GGUF from a plain HTTP server; the server is stopped.  Node 2
pulls it by name and node 3 by the same URL: both get it from the swarm,
byte-identical.  Then a
fourth node pulls by name from nodes 1, 2 and 3 at once with nodes 1 and 3
corrupted on disk: each bad chunk is detected on arrival, its peer dropped
and named in the pull's result, the chunk comes from node 2, and the stored
model is still byte-identical.

Separately (three more daemons, another swarm): a node still pulling the model
(throttled by ``[models] max_transfer_rate``) serves the chunks it has already
verified to a second puller, which finishes first, byte-identical.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmd.models.manifest import CHUNK_SIZE
from swarmd.testing.daemon import VENV_BIN, Daemon, wait_for
from swarmd.testing.hub_servers import file_server, gemma_gguf

pytestmark = [pytest.mark.integration]
SECRET = secrets.token_hex(32)


def _pull(d: Daemon, *args: str) -> dict:  # type: ignore[type-arg]
    r = d.ctl("pull", *args, "--json", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr + d.log()
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _stored_on(d: Daemon, name: str) -> list[str]:
    r = d.ctl("models", "--json")
    assert r.returncode == 0, r.stderr
    for m in json.loads(r.stdout)["models"]:
        if m["id"] == name:
            return list(m.get("stored_on", []))
    return []


def _blob(d: Daemon, sha: str) -> Path:
    return d.dir / "data" / "models" / "blobs" / "sha256" / sha


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    root = tmp_path_factory.mktemp("peers")
    first = Daemon(root, "n1", secret=SECRET).start()
    ds = [first] + [Daemon(root, f"n{i}", secret=SECRET, seeds=[first.seed]).start()
                    for i in (2, 3, 4)]
    try:
        wait_for(lambda: all(len([n for n in d.status()["nodes"] if n["state"] == "alive"]) == 4
                             for d in ds), 30, what="4 nodes alive")
        yield ds
    finally:
        for d in ds:
            if d.alive():
                d.kill()


def test_pulled_once_then_from_the_swarm(nodes: list[Daemon]) -> None:
    n1, n2, n3, n4 = nodes
    path, sha = gemma_gguf()
    with file_server({"/gemma.gguf": path}) as srv:
        url = srv.url + "/gemma.gguf"
        first = _pull(n1, url, "--name", "gemma")
        assert first["name"] == "gemma"
    # The source is gone: from here on only the swarm has the model.
    wait_for(lambda: n1.node_id in _stored_on(n2, "gemma"), 20, what="n2 sees gemma on n1")
    by_name = _pull(n2, "gemma")
    assert by_name["digest"] == first["digest"]
    assert _blob(n2, sha).read_bytes() == path.read_bytes()
    wait_for(lambda: n2.node_id in _stored_on(n3, "gemma"), 20, what="n3 sees gemma on n2")
    by_url = _pull(n3, url, "--name", "gemma")  # the same source, offline: from peers
    assert by_url["digest"] == first["digest"]
    assert _blob(n3, sha).read_bytes() == path.read_bytes()
    wait_for(lambda: sorted(_stored_on(n4, "gemma")) == sorted(d.node_id for d in (n1, n2, n3)),
             20, what="n4 sees the copies on n1, n2 and n3")

    # Corrupt every chunk of n1's and n3's copies on disk (a byte each); n4
    # pulls from n1, n2 and n3 at once: both bad peers are dropped on their
    # first chunk, and n2 serves the rest.
    good = path.read_bytes()
    for bad in (n1, n3):
        with open(_blob(bad, sha), "r+b") as f:
            for off in range(100, len(good), CHUNK_SIZE):
                f.seek(off)
                f.write(bytes([good[off] ^ 0xFF]))
    got = _pull(n4, "gemma")
    assert got["digest"] == first["digest"]
    assert _blob(n4, sha).read_bytes() == good
    assert sorted(got["dropped_sources"]) == ["peer n1", "peer n3"], got


def test_ollama_clients_pull_and_delete_through_the_swarm(nodes: list[Daemon]) -> None:
    """The official ``ollama`` client: /api/delete then /api/pull of a name the
    swarm holds (from peers, Ollama's NDJSON progress), on node 2."""
    import ollama

    n2, n4 = nodes[1], nodes[3]
    path, sha = gemma_gguf()
    # n1 and n3 hold corrupted copies now: n4's good one must be known to n2.
    wait_for(lambda: n4.node_id in _stored_on(n2, "gemma"), 20, what="n2 sees n4's copy")
    c = ollama.Client(host=n2.api_url)
    c.delete("gemma")
    assert not _blob(n2, sha).exists() or n2.node_id not in _stored_on(n2, "gemma")
    with pytest.raises(ollama.ResponseError) as info:
        c.delete("gemma")
    assert info.value.status_code == 404
    lines = list(c.pull("gemma", stream=True))
    assert lines[0].status == "pulling manifest"
    assert any(ln.total == path.stat().st_size and ln.completed for ln in lines)
    assert lines[-1].status == "success"
    assert _blob(n2, sha).read_bytes() == path.read_bytes()
    assert c.pull("gemma").status == "success"  # held now: at once


def test_rm_on_another_node_and_everywhere(nodes: list[Daemon]) -> None:
    n1, n2, n3, n4 = nodes
    want = {n1.node_id, n2.node_id, n3.node_id, n4.node_id}
    wait_for(lambda: want <= set(_stored_on(n1, "gemma")), 20,
             what="n1 sees every copy (n2 pulled again just before)")
    r = n1.ctl("rm", "gemma", "--node", "n4", "--json", timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert [x["node"] for x in doc["results"]] == [n4.node_id]
    wait_for(lambda: n4.node_id not in _stored_on(n1, "gemma"), 20, what="n4's copy gone")
    r = n1.ctl("rm", "gemma", "--node", "n4", timeout=30)  # nothing left there: 404
    assert r.returncode != 0 and "404" in r.stderr, r.stderr
    wait_for(lambda: n4.node_id not in _stored_on(n3, "gemma"), 20,
             what="n3 sees n4's copy gone")
    r = n3.ctl("rm", "gemma", "--everywhere", "--json", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    done = json.loads(r.stdout)["results"]
    assert sorted(x["node"] for x in done) == sorted(d.node_id for d in (n1, n2, n3))
    assert all(x["status"] == 200 for x in done)
    wait_for(lambda: _stored_on(n1, "gemma") == [], 20, what="gemma gone everywhere")


RELAY_SECRET = secrets.token_hex(32)
#: r2's pull rate: Gemma's 253 MB take it about 21 s, so it is mid-transfer for long.
SLOW = 12_000_000


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    root = tmp_path_factory.mktemp("relay")
    first = Daemon(root, "r1", secret=RELAY_SECRET).start()
    ds = [first,
          Daemon(root, "r2", secret=RELAY_SECRET, seeds=[first.seed],
                 extra_toml=f"[models]\nmax_transfer_rate = {SLOW}\n").start(),
          Daemon(root, "r3", secret=RELAY_SECRET, seeds=[first.seed]).start()]
    try:
        wait_for(lambda: all(len([n for n in d.status()["nodes"] if n["state"] == "alive"]) == 3
                             for d in ds), 30, what="3 nodes alive")
        yield ds
    finally:
        for d in ds:
            if d.alive():
                d.kill()


def _journal_chunks(d: Daemon, sha: str) -> int:
    try:
        doc = json.loads((d.dir / "data" / "models" / "partial" / f"sha256-{sha}.json")
                         .read_text())
    except (OSError, ValueError):
        return 0
    return len(doc.get("chunks") or {})


def test_a_node_still_pulling_serves_its_verified_chunks(relay: list[Daemon]) -> None:
    r1, r2, r3 = relay
    path, sha = gemma_gguf()
    with file_server({"/gemma.gguf": path}) as srv:
        _pull(r1, srv.url + "/gemma.gguf", "--name", "gemma")
    wait_for(lambda: _stored_on(r2, "gemma") == [r1.node_id] == _stored_on(r3, "gemma"), 20,
             what="r2 and r3 see gemma on r1")
    slow = subprocess.Popen([str(VENV_BIN / "swarmctl"), "--socket", str(r2.socket), "pull",
                             "gemma", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: _journal_chunks(r2, sha) >= 2, 60, what="r2 holds 2 verified chunks")
        assert not _blob(r2, sha).exists()  # r2's copy is partial ...
        assert r2.node_id not in _stored_on(r3, "gemma")  # ... and not in its inventory
        t0 = time.monotonic()
        got = _pull(r3, "gemma")  # from r1 (complete) and r2 (still pulling)
        fast = time.monotonic() - t0
        assert slow.poll() is None, "r2 finished first: nothing showed it serving mid-pull"
        served = got["served_by"]
        assert served.get("peer r2", 0) >= CHUNK_SIZE, got  # verified chunks from r2
        assert sum(served.values()) == path.stat().st_size, got
        assert _blob(r3, sha).read_bytes() == path.read_bytes()
        out, err = slow.communicate(timeout=120)
        assert slow.returncode == 0, out + err + r2.log()
        done = json.loads(out.strip().splitlines()[-1])
        assert done["status"] == "success" and done["digest"] == got["digest"]
        assert _blob(r2, sha).read_bytes() == path.read_bytes()
        assert fast < 60, fast
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait(5)
