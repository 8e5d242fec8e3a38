"""The facts the fit formula needs, read from a stored model's own files.

:func:`model_facts` builds a :class:`swarmd.core.fit.ModelFacts` for a
manifest whose files are on disk:

- weights: the sum of the weight files' sizes (``.gguf`` for GGUF;
  ``.safetensors`` and MLX's ``.npz`` otherwise; every file when none is
  either): what an engine maps or copies into memory;
- GGUF (the largest ``.gguf`` file; an mmproj or draft rides along): the
  header through ``gguf.GGUFReader`` (:func:`swarmd.models.meta._reader`,
  which skips over the tokenizer's large arrays): ``<arch>.block_count``,
  ``.context_length``, ``.embedding_length``, ``.feed_forward_length``,
  ``.attention.head_count``, ``.attention.head_count_kv``,
  ``.attention.key_length`` / ``.value_length`` and ``.vocab_size``, else the
  vocabulary from the ``token_embd.weight`` tensor's shape.  Per-layer arrays
  (some architectures give ``head_count_kv`` per layer) read as their maximum;
- safetensors / MLX: ``config.json`` (``text_config`` first for multimodal
  models): ``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``,
  ``num_key_value_heads``, ``head_dim``, ``intermediate_size``,
  ``vocab_size``, ``max_position_embeddings``.

A field that is missing or does not parse stays None (the formula then
estimates conservatively); nothing here raises on a bad file.
:func:`facts_from_manifest` gives the facts a manifest alone carries, for a
node that does not hold the files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from swarmd.core.fit import ModelFacts
from swarmd.models.manifest import Manifest
from swarmd.models.meta import MAX_CONFIG_BYTES, _reader

__all__ = ["config_facts", "facts_from_manifest", "gguf_facts", "model_facts", "weight_files"]

_WEIGHT_SUFFIXES = {"gguf": (".gguf",), "safetensors": (".safetensors",),
                    "mlx": (".safetensors", ".npz")}


def weight_files(manifest: Manifest) -> list[str]:
    """Paths of the files that are the model's weights."""
    suffixes = _WEIGHT_SUFFIXES.get(manifest.format, (".gguf", ".safetensors", ".npz"))
    found = [f.path for f in manifest.files if f.path.lower().endswith(suffixes)]
    return found or [f.path for f in manifest.files]


def facts_from_manifest(manifest: Manifest) -> ModelFacts:
    """What the manifest alone says (no layer facts: the formula estimates)."""
    names = set(weight_files(manifest))
    return ModelFacts(
        weights_bytes=sum(f.size for f in manifest.files if f.path in names),
        n_ctx_train=manifest.context_length, format=manifest.format,
        architecture=manifest.architecture, quantization=manifest.quantization,
        parameters=manifest.parameters)


def _pos(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return v if isinstance(v, int) and 0 < v < 1 << 40 else None


def _field_int(field: Any) -> int | None:
    """A scalar integer field, or the largest element of an integer array."""
    import numpy as np
    from gguf import GGUFValueType

    types = list(field.types)
    if not types:
        return None
    if types[0] != GGUFValueType.ARRAY:
        return _pos(field.contents())
    if len(types) < 2 or types[1] in (GGUFValueType.STRING, GGUFValueType.ARRAY,
                                      GGUFValueType.FLOAT32, GGUFValueType.FLOAT64,
                                      GGUFValueType.BOOL):
        return None
    data = list(field.data)
    raw = field.parts[data[0]] if len(data) == 1 else None
    if raw is not None and getattr(raw, "dtype", None) == np.uint8:
        # The skipping reader keeps an array's elements as one raw byte part.
        from gguf import GGUFReader

        np_type = GGUFReader.gguf_scalar_to_np[GGUFValueType(types[1])]
        vals = np.frombuffer(raw.tobytes(), dtype=np_type)
    else:
        vals = np.asarray(field.contents())
    return _pos(int(vals.max())) if vals.size else None


def gguf_facts(path: Path) -> dict[str, Any]:
    """Shape fields from a GGUF header (only those present)."""
    reader = _reader(path)
    flds = reader.fields

    def get(key: str) -> int | None:
        f = flds.get(key)
        if f is None:
            return None
        try:
            return _field_int(f)
        except (ValueError, TypeError, IndexError, KeyError):
            return None

    arch_f = flds.get("general.architecture")
    arch = arch_f.contents() if arch_f is not None else None
    if not isinstance(arch, str) or not arch:
        return {}
    out: dict[str, Any] = {
        "architecture": arch,
        "n_layers": get(f"{arch}.block_count"),
        "n_ctx_train": get(f"{arch}.context_length"),
        "n_embd": get(f"{arch}.embedding_length"),
        "n_ff": get(f"{arch}.feed_forward_length"),
        "n_head": get(f"{arch}.attention.head_count"),
        "n_head_kv": get(f"{arch}.attention.head_count_kv"),
        "head_dim_k": get(f"{arch}.attention.key_length"),
        "head_dim_v": get(f"{arch}.attention.value_length"),
        "n_vocab": get(f"{arch}.vocab_size"),
    }
    if out["n_vocab"] is None:
        for t in reader.tensors:
            if t.name == "token_embd.weight" and len(t.shape) >= 2:
                out["n_vocab"] = _pos(int(t.shape[-1]))
                break
    return {k: v for k, v in out.items() if v is not None}


def config_facts(doc: Any) -> dict[str, Any]:
    """Shape fields from a Hugging Face / MLX ``config.json`` document."""
    if not isinstance(doc, Mapping):
        return {}
    layers: list[Mapping[str, Any]] = []
    if isinstance(doc.get("text_config"), Mapping):
        layers.append(doc["text_config"])
    layers.append(doc)

    def get(*keys: str) -> int | None:
        for d in layers:
            for k in keys:
                v = _pos(d.get(k))
                if v is not None:
                    return v
        return None

    out: dict[str, Any] = {
        "n_layers": get("num_hidden_layers", "n_layer", "num_layers"),
        "n_ctx_train": get("max_position_embeddings", "max_sequence_length", "n_positions",
                           "seq_length"),
        "n_embd": get("hidden_size", "n_embd", "d_model"),
        "n_ff": get("intermediate_size", "n_inner", "ffn_dim"),
        "n_head": get("num_attention_heads", "n_head"),
        "n_head_kv": get("num_key_value_heads", "n_head_kv"),
        "head_dim_k": get("head_dim"),
        "n_vocab": get("vocab_size"),
    }
    if out["head_dim_k"]:
        out["head_dim_v"] = out["head_dim_k"]
    return {k: v for k, v in out.items() if v is not None}


def _resolve(files: Path | Mapping[str, Path], rel: str) -> Path | None:
    if isinstance(files, Mapping):
        return files.get(rel)
    return Path(files) / rel


def model_facts(manifest: Manifest, files: Path | Mapping[str, Path]) -> ModelFacts:
    """Facts for ``manifest`` whose files are under the model directory
    ``files`` (a store's ``models/<hex>/``) or at ``files[relative path]``."""
    base = facts_from_manifest(manifest)
    extra: dict[str, Any] = {}
    try:
        ggufs = [f for f in manifest.files if f.path.lower().endswith(".gguf")]
        if ggufs:
            path = _resolve(files, max(ggufs, key=lambda f: f.size).path)
            if path is not None and path.is_file():
                extra = gguf_facts(path)
        else:
            path = _resolve(files, "config.json")
            if path is not None and path.is_file() and path.stat().st_size <= MAX_CONFIG_BYTES:
                extra = config_facts(json.loads(path.read_bytes()))
    except Exception:  # a file that does not parse: the manifest's facts only
        extra = {}
    # The manifest's own reading (from the same header) wins where it has one.
    for key in ("architecture", "n_ctx_train"):
        if getattr(base, key):
            extra.pop(key, None)
    return replace(base, **extra)
