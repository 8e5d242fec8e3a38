"""swarmd.models.facts: the fit formula's facts from GGUF headers and config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swarmd.core.fit import MiB, ModelFacts, need_bytes
from swarmd.models.facts import (
    config_facts,
    facts_from_manifest,
    gguf_facts,
    model_facts,
    weight_files,
)
from swarmd.models.manifest import CHUNK_SIZE, FileEntry, Manifest, chunk_count
from swarmd.testing.hub_servers import CACHE, GEMMA_NAME
from swarmd.testing.tiny_gguf import write_tiny_gguf

HEX = "0" * 64


def _manifest(fmt: str, files: dict[str, int], **kw: object) -> Manifest:
    entries = tuple(FileEntry(p, n, HEX, (HEX,) * chunk_count(n, CHUNK_SIZE))
                    for p, n in files.items())
    return Manifest(name="m", source="hf:x/y", format=fmt, files=entries, **kw)  # type: ignore[arg-type]


def test_tiny_gguf_header(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "model.gguf", n_ctx=2048)
    size = path.stat().st_size
    m = _manifest("gguf", {"model.gguf": size, "README.md": 100}, architecture="llama",
                  context_length=2048, quantization="ALL_F32")
    f = model_facts(m, tmp_path)
    assert f == ModelFacts(weights_bytes=size, n_layers=2, n_ctx_train=2048, n_embd=64,
                           n_head=4, n_head_kv=4, n_vocab=289, n_ff=128, format="gguf",
                           architecture="llama", quantization="ALL_F32")
    # the same through a path mapping
    assert model_facts(m, {"model.gguf": path}) == f
    n = need_bytes(f, engine_kind="llamacpp", ctx=512)
    assert n.kv_cache == 2 * 512 * 4 * (16 + 16) * 2 and not n.estimated


def test_per_layer_arrays_read_as_their_maximum(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "arr.gguf"
    w = gguf.GGUFWriter(str(path), "openelm")
    w.add_block_count(3)
    w.add_embedding_length(128)
    w.add_array("openelm.attention.head_count", [4, 8, 8])
    w.add_array("openelm.attention.head_count_kv", [1, 2, 4])
    w.add_array("openelm.feed_forward_length", [256, 512, 384])
    w.add_tensor("token_embd.weight", np.zeros((50, 128), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got = gguf_facts(path)
    assert got == {"architecture": "openelm", "n_layers": 3, "n_embd": 128, "n_head": 8,
                   "n_head_kv": 4, "n_ff": 512, "n_vocab": 50}


@pytest.mark.skipif(not (CACHE / GEMMA_NAME).is_file(), reason="Gemma 3 270M GGUF not cached")
def test_real_gemma3_270m_gguf() -> None:
    path = CACHE / GEMMA_NAME
    size = path.stat().st_size
    m = _manifest("gguf", {GEMMA_NAME: size})
    f = model_facts(m, {GEMMA_NAME: path})
    assert (f.architecture, f.n_layers, f.n_ctx_train, f.n_embd, f.n_head, f.n_head_kv,
            f.head_dim_k, f.head_dim_v, f.n_vocab, f.n_ff) == \
        ("gemma3", 18, 32768, 640, 4, 1, 256, 256, 262144, 2048)
    assert f.weights_bytes == size
    # what llama.cpp allocates for it at 8192 (see test_fit)
    assert need_bytes(f, engine_kind="llamacpp", ctx=8192).kv_cache == 144 * MiB


def test_safetensors_config(tmp_path: Path) -> None:
    cfg = {"architectures": ["Gemma3ForConditionalGeneration"],
           "text_config": {"num_hidden_layers": 26, "hidden_size": 1152,
                           "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                           "intermediate_size": 6912, "max_position_embeddings": 32768},
           "vocab_size": 262208, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = _manifest("safetensors", {"config.json": 500, "model-00001.safetensors": 3000,
                                  "model-00002.safetensors": 2000, "tokenizer.json": 700},
                  quantization="bfloat16")
    assert weight_files(m) == ["model-00001.safetensors", "model-00002.safetensors"]
    f = model_facts(m, tmp_path)
    assert (f.weights_bytes, f.n_layers, f.n_embd, f.n_head, f.n_head_kv, f.head_dim_k,
            f.head_dim_v, f.n_ff, f.n_vocab, f.n_ctx_train) == \
        (5000, 26, 1152, 4, 1, 256, 256, 6912, 262208, 32768)
    assert config_facts([1]) == {} and config_facts({"num_hidden_layers": True}) == {}


def test_mlx_weights_and_missing_config(tmp_path: Path) -> None:
    m = _manifest("mlx", {"weights.npz": 4000, "config.json": 10})
    assert weight_files(m) == ["weights.npz"]
    f = model_facts(m, tmp_path)  # config.json absent on disk: manifest facts only
    assert f == ModelFacts(weights_bytes=4000, format="mlx")
    assert weight_files(_manifest("other", {"a.bin": 5, "b.txt": 6})) == ["a.bin", "b.txt"]


def test_bad_files_fall_back_to_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF" + b"\xff" * 60)
    m = _manifest("gguf", {"model.gguf": 64}, parameters=1000, context_length=99)
    assert model_facts(m, tmp_path) == facts_from_manifest(m) == ModelFacts(
        weights_bytes=64, n_ctx_train=99, format="gguf", parameters=1000)
    (tmp_path / "config.json").write_text("{not json")
    st = _manifest("safetensors", {"config.json": 9, "x.safetensors": 10})
    assert model_facts(st, tmp_path) == ModelFacts(weights_bytes=10, format="safetensors")
    assert model_facts(m, {}) == facts_from_manifest(m)
