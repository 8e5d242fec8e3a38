"""Model metadata from the files themselves: GGUF (fast reader vs GGUFReader), config.json,
safetensors headers, pickle sniffing."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from swarmd.models import meta
from swarmd.testing.tiny_gguf import write_tiny_gguf


def test_fast_gguf_reader_agrees_with_gguf_reader(tmp_path: Path) -> None:
    from gguf import GGUFReader

    p = write_tiny_gguf(tmp_path / "t.gguf", n_ctx=777)
    plain, fast = GGUFReader(str(p)), meta._reader(p)
    assert type(fast) is not GGUFReader  # the skipping subclass is in use
    assert list(plain.fields) == list(fast.fields)
    for key in ("general.architecture", "llama.context_length"):
        assert plain.fields[key].contents() == fast.fields[key].contents()
    assert [t.name for t in plain.tensors] == [t.name for t in fast.tensors]
    assert plain.data_offset == fast.data_offset
    m = meta.gguf_meta(p)
    assert (m.format, m.architecture, m.context_length) == ("gguf", "llama", 777)
    assert m.parameters == sum(int(t.n_elements) for t in plain.tensors)


def test_not_gguf(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"GGML" + bytes(100))
    with pytest.raises(meta.MetaError, match="bad magic"):
        meta.gguf_meta(tmp_path / "x.gguf")
    p = write_tiny_gguf(tmp_path / "t.gguf")
    (tmp_path / "cut.gguf").write_bytes(p.read_bytes()[:3000])
    with pytest.raises(meta.MetaError, match="does not parse"):
        meta.gguf_meta(tmp_path / "cut.gguf")


def test_safetensors_header(tmp_path: Path) -> None:
    hdr = json.dumps({"__metadata__": {}, "a": {"dtype": "F16", "shape": [3, 4], "data_offsets": [0, 24]},
                      "b": {"dtype": "F16", "shape": [5], "data_offsets": [24, 34]}}).encode()
    p = tmp_path / "m.safetensors"
    p.write_bytes(struct.pack("<Q", len(hdr)) + hdr + bytes(34))
    assert meta.safetensors_params(p) == 17
    for bad in (b"\x80\x02" + bytes(20), struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 4) + b"nope"):
        p.write_bytes(bad)
        with pytest.raises(meta.MetaError):
            meta.safetensors_params(p)


def test_config_json_and_mlx() -> None:
    m = meta.config_meta({"architectures": ["Qwen2ForCausalLM"], "max_position_embeddings": 32768,
                          "quantization": {"group_size": 64, "bits": 4}}, "safetensors")
    assert (m.format, m.architecture, m.context_length, m.quantization) == (
        "mlx", "Qwen2ForCausalLM", 32768, "4bit")
    m = meta.config_meta({"model_type": "gemma3", "text_config": {"max_position_embeddings": 8192},
                          "quantization_config": {"quant_method": "awq", "bits": 4}}, "safetensors")
    assert (m.architecture, m.context_length, m.quantization) == ("gemma3", 8192, "awq-4bit")
    with pytest.raises(meta.MetaError):
        meta.config_meta([1], "safetensors")


def test_pickle_detection() -> None:
    assert meta.is_pickle_path("pytorch_model.bin") and meta.is_pickle_path("x/model.CKPT")
    assert not meta.is_pickle_path("model.safetensors")
    assert meta.looks_like_pickle(b"\x80\x02") and meta.looks_like_pickle(b"PK\x03\x04")
    assert not meta.looks_like_pickle(b"GGUF")
