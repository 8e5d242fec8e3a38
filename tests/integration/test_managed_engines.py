"""vLLM, TGI, mlx-lm and Ollama launched by swarmd: real supervisor, stand-in executables.

The engines are the testing kit's stand-ins (swarmd/testing/fake_engine.py)
on PATH, which refuse flags their real tools lack and record how they were
started.  The real :class:`~swarmd.engines.launching.Launcher` and
:class:`~swarmd.engines.supervisor.Supervisor` launch them from the plugins'
commands and health-wait them; requests go through the plugins' own request
path (rename included).  The last test runs a real daemon: ``swarmctl run``
of a safetensors model on a node whose ``rocm-smi`` (a stand-in too) reports
one GPU places it on vLLM there, and the API routes to it.  No real vLLM,
TGI, mlx-lm or Ollama runs here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from swarmd.core.deployments import DeploymentSpec
from swarmd.core.fit import Device, GiB, ModelFacts, facts_to_dict
from swarmd.engines.base import EngineSpec, open_upstream
from swarmd.engines.launching import Launcher
from swarmd.engines.registry import EngineRegistry
from swarmd.engines.supervisor import Managed, Supervisor, SupervisorConfig
from swarmd.testing import fake_engine
from swarmd.testing.daemon import Daemon, free_port, pid_alive, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FACTS = facts_to_dict(ModelFacts(weights_bytes=64 << 20, n_layers=2, n_embd=256, n_head=4,
                                 n_head_kv=4, n_vocab=1000, n_ff=512, n_ctx_train=2048))
ROCM = [Device("cpu", "cpu", 64 * GiB, 60 * GiB), Device("gpu0", "rocm", 24 * GiB, 23 * GiB,
                                                         index=0)]


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = fake_engine.install(tmp_path / "bin")
    rec = tmp_path / "rec"
    rec.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_ENGINE_RECORD", str(rec))
    monkeypatch.setenv("FAKE_ENGINE_STARTUP", "0.5")
    # no Ollama daemon answers where OLLAMA_HOST points: swarmd launches `ollama serve`
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{free_port()}")
    return rec


async def _healthy(m: Managed) -> bool:
    try:
        async with aiohttp.ClientSession() as http, \
                http.get(m.url + "/v1/models", timeout=aiohttp.ClientTimeout(total=1)) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _chat(http: aiohttp.ClientSession, spec: EngineSpec, model: str) -> dict[str, Any]:
    engine = EngineRegistry(eps=[]).create(spec)
    assert await engine.health(http)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    resp = await open_upstream(http, engine, "/v1/chat/completions", body.encode(), {})
    async with resp:
        doc: dict[str, Any] = json.loads(await resp.read())
        assert resp.status == 200, doc
    return doc


def _dep(kind: str, slots: int = 2) -> DeploymentSpec:
    return DeploymentSpec("tiny", "src", 1, False, None, 1024, slots, kind=kind, facts=FACTS)


@pytest.mark.parametrize("kind,exe", [("vllm", "vllm"), ("tgi", "text-generation-launcher"),
                                      ("mlx", "mlx_lm.server")])
def test_launched_by_command_health_waited_and_served(fakes: Path, tmp_path: Path, kind: str,
                                                      exe: str) -> None:
    model_dir = tmp_path / "store" / "tiny"
    model_dir.mkdir(parents=True)

    async def t() -> None:
        sup = Supervisor(tmp_path / "engines", _healthy, SupervisorConfig(backoff_min=0.1))
        async with aiohttp.ClientSession() as http:
            launcher = Launcher(sup, http)
            cls = EngineRegistry(eps=[]).get(kind)
            m, spec = await launcher.start(cls, _dep(kind), "managed-tiny",
                                           model_path=str(model_dir), devices=ROCM)
            assert m.state == "ready" and spec.url == m.url and spec.models == ("tiny",)
            doc = await _chat(http, spec, "tiny")  # the public name, renamed where needed
            assert doc["choices"][0]["message"]["content"].startswith(f"fake-{exe}")
            pid = m.pid
            assert pid is not None
            await launcher.stop("managed-tiny")
            assert m.state == "stopped"
        [rec] = fake_engine.records(fakes, exe)
        argv, env = rec["argv"][1:], rec["env"]
        port = str(m.port)
        if kind == "vllm":
            assert argv[:2] == ["serve", str(model_dir)] and "--served-model-name" in argv
            frac = float(argv[argv.index("--gpu-memory-utilization") + 1])
            assert 0 < frac < 0.98 and env["HIP_VISIBLE_DEVICES"] == "0"
            assert argv[argv.index("--max-num-seqs") + 1] == "2"
            assert spec.capacity == 2
        elif kind == "tgi":
            assert argv[argv.index("--max-total-tokens") + 1] == "1024"
            assert argv[argv.index("--max-input-tokens") + 1] == "1023"
            assert "--cuda-memory-fraction" in argv and env["HIP_VISIBLE_DEVICES"] == "0"
            assert spec.options["rename"] == {str(model_dir): "tiny"}
        else:  # mlx: Apple silicon only, so no ROCm pinning; renamed from its path
            assert argv == ["--model", str(model_dir.resolve()), "--host", "127.0.0.1",
                            "--port", port]
            assert "HIP_VISIBLE_DEVICES" not in env
        assert port in argv

    asyncio.run(t())


def _gguf(tmp_path: Path) -> tuple[Path, str]:
    f = tmp_path / "store" / "tiny" / "tiny.gguf"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"GGUF" + os.urandom(4096))
    return f, hashlib.sha256(f.read_bytes()).hexdigest()


def test_ollama_launched_when_none_answers_then_model_imported_and_loaded(
        fakes: Path, tmp_path: Path) -> None:
    gguf, digest = _gguf(tmp_path)

    async def t() -> None:
        sup = Supervisor(tmp_path / "engines", _healthy, SupervisorConfig(backoff_min=0.1))
        async with aiohttp.ClientSession() as http:
            launcher = Launcher(sup, http)
            cls = EngineRegistry(eps=[]).get("ollama")
            # no digest given: hashed from the file
            m, spec = await launcher.start(cls, _dep("ollama", slots=3), "managed-tiny",
                                           model_path=str(gguf))
            assert m.state == "ready" and sup.engines["managed-tiny"] is m
            assert spec.options["rename"] == {"tiny:latest": "tiny"}
            doc = await _chat(http, spec, "tiny")
            assert doc["choices"][0]["message"]["content"].startswith("fake-ollama")
            models = await EngineRegistry(eps=[]).create(spec).models(http)
            assert [x.id for x in models] == ["tiny:latest"] and models[0].loaded
            await launcher.stop("managed-tiny")
            assert m.state == "stopped"
        [rec] = fake_engine.records(fakes, "ollama")
        assert rec["argv"][1:] == ["serve"]
        assert rec["env"]["OLLAMA_HOST"] == f"127.0.0.1:{m.port}"
        assert rec["env"]["OLLAMA_NUM_PARALLEL"] == "3"
        ev = fake_engine.events(fakes, "ollama")
        assert [e["call"] for e in ev] == ["blob", "create", "generate"]
        assert ev[0]["ok"] and ev[0]["digest"] == f"sha256:{digest}"
        assert ev[1]["doc"]["files"] == {"tiny.gguf": f"sha256:{digest}"}
        assert ev[1]["doc"]["parameters"] == {"num_ctx": 1024}
        assert ev[2]["doc"]["keep_alive"] == -1 and "prompt" not in ev[2]["doc"]

    asyncio.run(t())


def test_a_running_ollama_is_used_and_only_unloads_on_stop(
        fakes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf, digest = _gguf(tmp_path)
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}"}
    daemon = subprocess.Popen(["ollama", "serve"], env=env)
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")
    try:
        def up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(up, 20, what="the Ollama stand-in")

        async def t() -> None:
            sup = Supervisor(tmp_path / "engines", _healthy)
            async with aiohttp.ClientSession() as http:
                launcher = Launcher(sup, http)
                cls = EngineRegistry(eps=[]).get("ollama")
                for _ in range(2):  # the second time the blob is there already
                    m, spec = await launcher.start(cls, _dep("ollama"), "managed-tiny",
                                                   model_path=str(gguf), sha256=digest)
                    assert spec.url == f"http://127.0.0.1:{port}" and not sup.engines
                    assert (await _chat(http, spec, "tiny"))["choices"]
                    await launcher.stop("managed-tiny")

        asyncio.run(t())
        assert daemon.poll() is None  # not ours: still running
        calls = [(e["call"], e.get("doc", {}).get("keep_alive"))
                 for e in fake_engine.events(fakes, "ollama")]
        assert calls == [("blob", None), ("create", None), ("generate", -1), ("generate", 0),
                         ("create", None), ("generate", -1), ("generate", 0)]
    finally:
        daemon.kill()
        daemon.wait(5)


def test_a_bad_flag_is_refused_like_the_real_tool(fakes: Path) -> None:
    r = subprocess.run(["vllm", "serve", "/m", "--max-model-length", "5"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "--max-model-length" in r.stderr
    r = subprocess.run(["text-generation-launcher", "--max-total-tokens", "8",
                        "--max-input-tokens", "8"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "must be <" in r.stderr


# ----------------------------------------------------------------------- a real daemon


def _safetensors_dir(root: Path) -> Path:
    d = root / "tiny-st"
    d.mkdir()
    header = json.dumps({"w": {"dtype": "F16", "shape": [256, 256],
                               "data_offsets": [0, 131072]}}).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header
                                          + bytes(131072))
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 2048,
        "torch_dtype": "float16"}))
    return d


def _ps(d: Daemon) -> list[dict[str, Any]]:
    r = d.ctl("ps", "--json")
    assert r.returncode == 0, r.stderr
    rows: list[dict[str, Any]] = json.loads(r.stdout)
    return rows


@pytest.mark.timeout(300)
def test_swarmctl_run_places_a_safetensors_model_on_vllm_on_the_gpu(
        fakes: Path, tmp_path: Path) -> None:
    fake_engine.install_rocm_smi(tmp_path / "bin")
    src = _safetensors_dir(tmp_path)
    d = Daemon(tmp_path, "st", secret="6b" * 32).start()
    try:
        r = d.ctl("run", str(src), "--name", "tiny-st", "--ctx", "1024", "--slots", "2",
                  "--gpu", timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr + d.log()
        [row] = [x for x in _ps(d) if x["model"] == "tiny-st"]
        assert row["state"] == "ready" and row["slots"] == 2
        body = json.dumps({"model": "tiny-st", "messages": [{"role": "user", "content": "hi"}],
                           "stream": True}).encode()
        req = urllib.request.Request(d.api_url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = resp.read().decode()
        assert "fake-vllm" in text and "[DONE]" in text
        [rec] = fake_engine.records(fakes, "vllm")
        argv = rec["argv"]
        assert argv[1] == "serve" and argv[argv.index("--served-model-name") + 1] == "tiny-st"
        assert argv[argv.index("--max-model-len") + 1] == "1024"
        assert 0 < float(argv[argv.index("--gpu-memory-utilization") + 1]) < 0.98
        assert rec["env"]["HIP_VISIBLE_DEVICES"] == "0"
        r = d.ctl("stop", "tiny-st")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: not pid_alive(int(rec["pid"])), 30, what="vllm stand-in stopped")
        # --engine chooses the kind; one that cannot launch the format is refused
        r = d.ctl("run", "tiny-st", "--engine", "llamacpp", "--no-chat", timeout=60)
        assert r.returncode != 0 and "cannot launch safetensors" in r.stderr, r.stderr
        r = d.ctl("run", "tiny-st", "--engine", "tgi", "--ctx", "1024", "--gpu", "--no-chat",
                  timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr + d.log()
        [tgi] = fake_engine.records(fakes, "text-generation-launcher")
        assert tgi["argv"][tgi["argv"].index("--max-total-tokens") + 1] == "1024"
    finally:
        d.kill()

