"""What a model is, read from its own files: GGUF metadata, config.json, safetensors headers.

Theory of operation
-------------------
After every file of a model is in the store and verified, :func:`describe`
looks at them and returns a :class:`ModelMeta` for the manifest:

- a ``.gguf`` file is read with the ``gguf`` package's ``GGUFReader``
  (memory-mapped; only the key/value header and tensor infos are touched):
  ``general.architecture``, ``<arch>.context_length``, ``general.file_type``
  (as llama.cpp's name, e.g. ``Q4_K_M``) and the parameter count (sum of the
  tensors' element counts);
- ``.safetensors`` files are checked to be safetensors (an 8-byte length and
  a JSON header: not a pickle in disguise) and their headers give the
  parameter count; ``config.json`` gives the architecture, context length
  and quantization.  A repo whose config carries MLX's ``quantization``
  table (``group_size``/``bits``) or whose files include MLX's
  ``weights.npz`` is format ``mlx``.

Files that claim a format and do not parse as it raise :class:`MetaError`,
so such a model is refused rather than stored.  :func:`is_pickle_path` names
the weight files that are Python pickles (``.bin``, ``.pt``, ``.pth``,
``.ckpt``, ``.pkl``): loading them can run code, so a pull refuses them
unless ``[models] allow_pickle`` is set.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class MetaError(ValueError):
    """A model file that does not parse as what it claims to be."""


@dataclass(frozen=True)
class ModelMeta:
    format: str
    architecture: str | None = None
    parameters: int | None = None
    quantization: str | None = None
    context_length: int | None = None


def is_pickle_path(path: str) -> bool:
    return path.lower().endswith(PICKLE_SUFFIXES)


def looks_like_pickle(head: bytes) -> bool:
    """Pickle protocol 2+ starts with 0x80; torch.save writes a zip (PK\\x03\\x04)."""
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


_U64 = struct.Struct("<Q")


def _reader(path: Path) -> Any:
    """A ``gguf.GGUFReader`` that skips over metadata arrays instead of building
    one numpy view per element: the tokenizer's 262,144-entry string arrays
    take GGUFReader 11 s to walk here, the skip about 0.05 s.  Arrays keep their
    raw bytes as one part (their ``contents()`` is not used).  If this gguf
    version's internals differ, the plain reader is used."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    class _SkippingReader(GGUFReader):  # type: ignore[misc]
        def _get_field_parts(self, orig_offs: int, raw_type: int) -> Any:
            if GGUFValueType(raw_type) != GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            itype = GGUFValueType(int(raw_itype[0]))
            offs = orig_offs + 12
            n = int(alen[0])
            if itype == GGUFValueType.STRING:
                mv = memoryview(self.data)  # type: ignore[arg-type]
                u64 = _U64.unpack_from  # the loop runs once per token: keep it bare
                try:
                    for _ in range(n):
                        offs += 8 + u64(mv, offs)[0]
                except struct.error:  # a length read past the end of the file
                    raise ValueError("string array runs past the end of the file") from None
                if offs > len(mv):
                    raise ValueError("string array runs past the end of the file")
            elif itype in self.gguf_scalar_to_np:
                offs += n * np.dtype(self.gguf_scalar_to_np[itype]).itemsize
            else:
                return super()._get_field_parts(orig_offs, raw_type)
            blob = self._get(orig_offs + 12, np.uint8, offs - orig_offs - 12)
            return offs - orig_offs, [raw_itype, alen, blob], [2], [GGUFValueType.ARRAY, itype]

    try:
        return _SkippingReader(str(path))
    except (AttributeError, TypeError):
        return GGUFReader(str(path))


def gguf_meta(path: Path) -> ModelMeta:
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise MetaError(f"{path.name}: not a GGUF file (bad magic)")
    try:
        from gguf import LlamaFileType

        reader = _reader(path)
        fields = reader.fields

        def value(key: str) -> Any:
            f = fields.get(key)
            return None if f is None else f.contents()

        arch = value("general.architecture")
        ctx = value(f"{arch}.context_length") if arch else None
        ftype = value("general.file_type")
        quant = None
        if isinstance(ftype, int):
            try:
                quant = LlamaFileType(ftype).name.removeprefix("MOSTLY_")
            except ValueError:
                quant = f"file_type_{ftype}"
        params = sum(int(t.n_elements) for t in reader.tensors)
    except MetaError:
        raise
    except Exception as exc:  # the gguf reader raises many types on bad input
        raise MetaError(f"{path.name}: GGUF header does not parse ({type(exc).__name__}: {exc})") from None
    return ModelMeta(
        format="gguf", architecture=arch if isinstance(arch, str) else None,
        parameters=params or None, quantization=quant,
        context_length=int(ctx) if isinstance(ctx, int) else None,
    )


def safetensors_params(path: Path) -> int:
    """Element count of every tensor in a safetensors file; MetaError if it is not one."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8 or looks_like_pickle(head):
            raise MetaError(f"{path.name}: not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_SAFETENSORS_HEADER or n > path.stat().st_size - 8:
            raise MetaError(f"{path.name}: not a safetensors file (header length {n})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise MetaError(f"{path.name}: safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise MetaError(f"{path.name}: safetensors header is not an object")
    total = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise MetaError(f"{path.name}: tensor {key!r} has no valid shape")
        count = 1
        for d in shape:
            count *= d
        total += count
    return total


def config_meta(doc: Any, fmt: str) -> ModelMeta:
    """Architecture, context and quantization from a Hugging Face/MLX ``config.json``."""
    if not isinstance(doc, dict):
        raise MetaError("config.json is not a JSON object")
    text: dict[str, Any] = doc["text_config"] if isinstance(doc.get("text_config"), dict) else {}
    archs = doc.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    arch = arch or (doc.get("model_type") if isinstance(doc.get("model_type"), str) else None)
    ctx = None
    for d in (doc, text):
        for key in ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length"):
            if isinstance(d.get(key), int) and not isinstance(d.get(key), bool):
                ctx = ctx or d[key]
    quant = None
    q = doc.get("quantization")
    if isinstance(q, dict) and isinstance(q.get("bits"), int):
        quant = f"{q['bits']}bit"
        fmt = "mlx"
    qc = doc.get("quantization_config")
    if quant is None and isinstance(qc, dict):
        method = qc.get("quant_method")
        bits = qc.get("bits")
        quant = "-".join(str(x) for x in (method, f"{bits}bit" if bits else None) if x) or None
    if quant is None and isinstance(doc.get("torch_dtype"), str):
        quant = doc["torch_dtype"]
    return ModelMeta(format=fmt, architecture=arch, quantization=quant, context_length=ctx)


def preload(paths: Sequence[str]) -> None:
    """Start importing, in a thread, what :func:`describe` will need for files
    at these relative paths (nothing to do: no thread).  ``gguf`` (and numpy
    under it) takes about 0.2 s to import here, a cost the first describe()
    in a process paid after the last byte of a pull; a pull calls this as it
    starts, so the import overlaps the transfer."""
    if any(p.lower().endswith(".gguf") for p in paths):
        threading.Thread(target=_import_gguf, daemon=True, name="swarmd-meta-import").start()


def _import_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except Exception:  # noqa: BLE001 - describe() reports it
        pass


def describe(files: Sequence[tuple[str, Path]]) -> ModelMeta:
    """Metadata for a model made of ``files`` (relative path, file on disk)."""
    ggufs = [(p, f) for p, f in files if p.lower().endswith(".gguf")]
    if ggufs:
        # The largest GGUF is the model; others (mmproj, draft) ride along.
        return gguf_meta(max(ggufs, key=lambda pf: pf[1].stat().st_size)[1])
    sts = [f for p, f in files if p.lower().endswith(".safetensors")]
    fmt = "safetensors" if sts else "other"
    if any(p.lower().endswith("weights.npz") for p, _ in files):
        fmt = "mlx"
    params = sum(safetensors_params(f) for f in sts) if sts else None
    configs = [f for p, f in files if p == "config.json"]
    meta = ModelMeta(format=fmt)
    if configs:
        if configs[0].stat().st_size > MAX_CONFIG_BYTES:
            raise MetaError("config.json is larger than 4 MiB")
        try:
            doc = json.loads(configs[0].read_bytes())
        except (UnicodeDecodeError, ValueError):
            raise MetaError("config.json is not JSON") from None
        meta = config_meta(doc, fmt)
    return ModelMeta(format=meta.format, architecture=meta.architecture, parameters=params or None,
                     quantization=meta.quantization, context_length=meta.context_length)
