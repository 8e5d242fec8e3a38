"""The model store inside a real daemon: pull through swarmctl, the
inventory in gossip (``stored_on`` on another node), rm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swarmd.testing.daemon import Daemon, wait_for
from swarmd.testing.tiny_gguf import write_tiny_gguf

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = "ef" * 32


def _models(d: Daemon) -> dict[str, dict]:  # type: ignore[type-arg]
    r = d.ctl("models", "--json")
    assert r.returncode == 0, r.stderr
    return {m["id"]: m for m in json.loads(r.stdout)["models"]}


def test_pull_a_local_file_is_known_swarm_wide_then_removed(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    write_tiny_gguf(model)
    a = Daemon(tmp_path, "a", secret=SECRET).start()
    b = Daemon(tmp_path, "b", secret=SECRET, seeds=[a.seed]).start()
    try:
        r = a.ctl("pull", str(model), "--name", "tiny", "--json", timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        last = json.loads(r.stdout.strip().splitlines()[-1])
        assert last.get("name") == "tiny" and last.get("size") == model.stat().st_size
        node_a = a.node_id
        wait_for(lambda: node_a in _models(b).get("tiny", {}).get("stored_on", []), 20,
                 what="b sees tiny stored on a")
        r = a.ctl("rm", "tiny", timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: "tiny" not in _models(b), 20, what="b sees tiny gone")
    finally:
        b.stop()
        a.stop()
