"""Launch commands, availability and the kind/device choice (swarmd/engines/launching.py).

Pure: PATH points at a temporary directory holding the testing kit's
stand-in executables (swarmd/testing/fake_engine.py) or nothing; no
process is started.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from swarmd.core.deployments import DeploymentSpec
from swarmd.core.fit import (
    Device,
    GiB,
    ModelFacts,
    facts_to_dict,
    need_bytes,
    vllm_memory_utilization,
)
from swarmd.engines import launching
from swarmd.engines.base import Engine
from swarmd.engines.launching import LaunchError, choose_kind, local_placement
from swarmd.engines.registry import EngineRegistry
from swarmd.testing.fake_engine import install
from swarmd_engines.llamacpp import LlamaCppEngine
from swarmd_engines.mlx import MlxEngine
from swarmd_engines.ollama import OllamaEngine, configured_url
from swarmd_engines.tgi import TgiEngine
from swarmd_engines.vllm import VllmEngine

KW: dict[str, Any] = {"model_id": "m", "ctx": 2048, "slots": 4}


@pytest.fixture
def fake_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = install(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))


def test_vllm_command(fake_path: Path) -> None:
    assert VllmEngine.launch_available()
    argv = VllmEngine.launch_command("/store/m", **KW, memory_fraction=0.4312)
    assert argv == [str(fake_path / "vllm"), "serve", "/store/m", "--host", "127.0.0.1",
                    "--port", "{port}", "--served-model-name", "m", "--max-model-len", "2048",
                    "--max-num-seqs", "4", "--gpu-memory-utilization", "0.43"]
    no_frac = VllmEngine.launch_command("/store/m", **KW)
    assert no_frac is not None and "--gpu-memory-utilization" not in no_frac
    assert VllmEngine.launched_name("/store/m", "m") == "m"
    assert VllmEngine.launched_capacity(no_frac, 4) == 4
    assert VllmEngine.launch_formats == ("safetensors",)


def test_tgi_command(fake_path: Path) -> None:
    assert TgiEngine.launch_available()
    argv = TgiEngine.launch_command("/store/m", **KW, memory_fraction=0.25)
    assert argv == [str(fake_path / "text-generation-launcher"), "--model-id", "/store/m",
                    "--hostname", "127.0.0.1", "--port", "{port}", "--max-total-tokens", "2048",
                    "--max-input-tokens", "2047", "--max-concurrent-requests", "4",
                    "--cuda-memory-fraction", "0.25"]
    assert TgiEngine.launched_name("/store/m", "m") == "/store/m"  # /info's model_id


def test_mlx_command(fake_path: Path, tmp_path: Path) -> None:
    model = tmp_path / "link"
    model.symlink_to(tmp_path)
    assert MlxEngine.launch_available()
    argv = MlxEngine.launch_command(str(model), **KW)
    assert argv == [str(fake_path / "mlx_lm.server"), "--model", str(tmp_path.resolve()),
                    "--host", "127.0.0.1", "--port", "{port}"]
    assert MlxEngine.launched_name(str(model), "m") == str(tmp_path.resolve())
    assert MlxEngine.launch_formats == ("mlx",)


def test_ollama_command_env_and_names(fake_path: Path) -> None:
    assert OllamaEngine.launch_available()
    assert OllamaEngine.launch_command("/store/m.gguf", **KW) == [str(fake_path / "ollama"),
                                                                  "serve"]
    assert OllamaEngine.launch_env(ctx=2048, slots=4) == {"OLLAMA_HOST": "127.0.0.1:{port}",
                                                          "OLLAMA_NUM_PARALLEL": "4"}
    assert OllamaEngine.launched_name("/x", "tiny") == "tiny:latest"
    assert OllamaEngine.launched_name("/x", "tiny:q4") == "tiny:q4"
    assert OllamaEngine.launched_name("/x", "org/tiny") == "org/tiny:latest"


def test_ollama_host_as_ollama_reads_it() -> None:
    assert configured_url({}) == "http://127.0.0.1:11434"
    assert configured_url({"OLLAMA_HOST": "0.0.0.0"}) == "http://127.0.0.1:11434"
    assert configured_url({"OLLAMA_HOST": "10.0.0.2:9999"}) == "http://10.0.0.2:9999"
    assert configured_url({"OLLAMA_HOST": "https://o.example:443"}) == "https://o.example:443"
    assert configured_url({"OLLAMA_HOST": "[::1]:8000"}) == "http://[::1]:8000"
    assert configured_url({"OLLAMA_HOST": ":7000"}) == "http://127.0.0.1:7000"


def test_nothing_installed_means_not_available(empty_path: None) -> None:
    for cls in (VllmEngine, TgiEngine, MlxEngine, OllamaEngine):
        assert not cls.launch_available(), cls.kind
        assert cls.launch_command("/store/m", **KW) is None, cls.kind


def test_llamacpp_native_and_capacity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "llama-server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    argv = LlamaCppEngine.launch_command("/m.gguf", **KW)
    assert argv is not None and argv[0] == str(exe) and "-np" in argv
    assert LlamaCppEngine.launch_available()
    assert LlamaCppEngine.launched_capacity(argv, 4) == 4
    py = ["/usr/bin/python3", "-m", "llama_cpp.server"]
    assert LlamaCppEngine.launched_capacity(py, 4) == 1  # one request at a time


def _classes() -> list[type[Engine]]:
    return EngineRegistry(eps=[]).loadable()


def test_choose_kind_by_format_and_availability(fake_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_kind("safetensors", _classes()) == ("vllm", True)
    assert choose_kind("mlx", _classes()) == ("mlx", True)
    monkeypatch.setattr(LlamaCppEngine, "launch_available", classmethod(lambda cls: False))
    assert choose_kind("gguf", _classes()) == ("ollama", True)  # llama.cpp missing here
    monkeypatch.setattr(LlamaCppEngine, "launch_available", classmethod(lambda cls: True))
    assert choose_kind("gguf", _classes()) == ("llamacpp", True)
    with pytest.raises(LaunchError, match="no engine kind launches other"):
        choose_kind("other", _classes())


def test_choose_kind_when_nothing_is_installed_here(empty_path: None) -> None:
    # another node may have it: the first kind that launches the format
    assert choose_kind("safetensors", _classes()) == ("vllm", False)
    tgi_only = [c for c in _classes() if c.kind != "vllm"]
    assert choose_kind("safetensors", tgi_only) == ("tgi", False)


FACTS = ModelFacts(weights_bytes=4 * GiB, n_layers=32, n_embd=4096, n_head=32, n_head_kv=8,
                   n_vocab=128_256, n_ff=14_336, n_ctx_train=8192)


def _dep(kind: str, gpu: bool | None = None) -> DeploymentSpec:
    return DeploymentSpec("m", "src", 1, False, gpu, 4096, 2, kind=kind,
                          facts=facts_to_dict(FACTS))


DEVICES = [Device("cpu", "cpu", 64 * GiB, 60 * GiB),
           Device("gpu0", "rocm", 24 * GiB, 23 * GiB, index=3),
           Device("gpu1", "cuda", 80 * GiB, 2 * GiB, index=0)]


def test_local_placement_sizes_vllm_from_the_fit_and_pins_its_gpu() -> None:
    p = local_placement(_dep("vllm"), DEVICES)
    need = need_bytes(FACTS, engine_kind="vllm", ctx=4096, slots=2)
    assert p.device == DEVICES[1] and p.gpus == (3,) and p.gpu_vendor == "amd"
    assert p.memory_fraction == vllm_memory_utilization(need, DEVICES[1])
    assert 0 < p.memory_fraction < 0.98
    # llama.cpp allocates by itself: a GPU is chosen, nothing pinned
    q = local_placement(_dep("llamacpp"), DEVICES)
    assert q.gpus is None and q.device is not None and q.device.gpu
    assert local_placement(_dep("llamacpp", gpu=False), DEVICES).gpus == ()  # hides GPUs
    nofacts = DeploymentSpec("m", "src", 1, False, None, 4096, 1, kind="llamacpp")
    assert local_placement(nofacts, DEVICES).gpus == ()  # no fit: RAM, as before
    assert local_placement(replace(nofacts, gpu=True), DEVICES).gpus is None
    # the fit chose RAM (no GPU holds it): GPUs hidden
    big = replace(_dep("llamacpp"), facts=facts_to_dict(replace(FACTS, weights_bytes=30 * GiB)))
    r0 = local_placement(big, DEVICES)
    assert r0.device is not None and r0.device.id == "cpu" and r0.gpus == ()
    # free memory moved since placement: still the largest GPU it may use
    full = [Device("gpu0", "cuda", 24 * GiB, 0, index=1)]
    r = local_placement(_dep("vllm"), full)
    assert r.gpus == (1,) and r.gpu_vendor == "nvidia" and r.memory_fraction > 0


def test_preference_lists_every_builtin_launcher() -> None:
    kinds = {c.kind for c in _classes() if c.launch_formats}
    assert kinds == set(launching.PREFERENCE)
