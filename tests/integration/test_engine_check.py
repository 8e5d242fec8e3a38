"""``swarmctl engines test``: an OpenAI-compatible upstream that needs a key.

The upstream is a SIMULATED engine started with ``--api-key`` (it answers 401
to any other key), configured once with the right key and once with a wrong
one; requests through the good one are booked at its ``[[prices]]``.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from swarmd.testing.daemon import VENV_BIN, Daemon, free_port, wait_for

pytestmark = pytest.mark.integration
MODEL = "cloud-sim"


def test_engines_test_reports_a_good_and_a_refused_key(tmp_path: Path) -> None:
    port = free_port()
    eng = subprocess.Popen([str(VENV_BIN / "swarmd-simengine"), "--port", str(port), "--model",
                            MODEL, "--api-key", "upstream-secret", "--max-tokens", "5"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    good, bad = tmp_path / "good.key", tmp_path / "bad.key"
    good.write_text("upstream-secret\n")
    bad.write_text("wrong\n")
    extra = (f'[[engines]]\nkind = "openai"\nurl = "http://127.0.0.1:{port}/v1"\nid = "cloud"\n'
             f'api_key_file = "{good}"\n'
             f'[[engines]]\nkind = "openai"\nurl = "http://127.0.0.1:{port}/v1"\nid = "badkey"\n'
             f'api_key_file = "{bad}"\nmodels = ["{MODEL}"]\n'
             f'[[prices]]\nmodel = "{MODEL}"\ninput = 2.0\noutput = 8.0\n')
    d = Daemon(tmp_path, "e1", secret=secrets.token_hex(32), extra_toml=extra)
    try:
        wait_for(lambda: eng.poll() is None and _up(port), 20, what="upstream up")
        d.start()
        r = d.ctl("engines", "test", "cloud", "--chat", "--json")
        doc = json.loads(r.stdout)
        assert r.returncode == 0 and doc["ok"] and doc["key"] and MODEL in doc["models"], doc
        assert doc["chat_status"] == 200
        r = d.ctl("engines", "test", "badkey", "--json")
        doc = json.loads(r.stdout)
        assert r.returncode == 1 and not doc["ok"] and "401" in doc["error"], doc
        r = d.ctl("engines", "test", "nope")
        assert r.returncode == 1 and "no engine 'nope'" in r.stderr
        listed = json.loads(d.ctl("engines", "list", "--json").stdout)
        assert {e["id"] for e in listed} == {"cloud", "badkey"}
        # spend through the upstream is booked at its price
        wait_for(lambda: _chat(d.api_url), 20, what="a chat through the upstream")
        rows = json.loads(d.ctl("usage", "--by", "model", "--json").stdout)
        row = next(x for x in rows if x["model"] == MODEL)
        assert row["cost_usd"] > 0
    finally:
        if d.alive():
            d.kill()
        eng.send_signal(signal.SIGKILL)
        eng.wait(5)


def _up(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
        return True
    except OSError:
        return False


def _chat(api: str) -> bool:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    req = urllib.request.Request(api + "/v1/chat/completions", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False
