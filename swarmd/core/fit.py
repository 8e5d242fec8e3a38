"""Fit: the memory a model needs on a device, and which device of a node it fits (pure).

Theory of operation
-------------------
:class:`ModelFacts` is what the fit formula knows about a model: weight bytes
(the weight files' sizes) and, where the files said so, the transformer's
shape (layers, heads, KV heads, head sizes, vocabulary, feed-forward width).
:mod:`swarmd.models.facts` reads them from GGUF headers or ``config.json``;
:func:`facts_from_dict` reads them back from a peer as untrusted input.

:func:`need_bytes` turns facts plus a serving setup (engine kind, context per
request ``ctx``, parallel ``slots``) into a :class:`Need`, by one formula
per engine kind (protocol/placement.md gives them with the measurements
behind them)::

    need  = weights + kv_cache + overhead            (+ gpu_extra on CUDA/ROCm)
    kv    = n_layers * tokens * n_head_kv * (head_dim_k + head_dim_v) * kv_bytes
    tokens = ctx * slots                             (every kind: each slot can
                                                      hold a full context)

``overhead`` is the engine's compute/activation buffers (a term
proportional to the batch the engine reserves for, and for llama.cpp the
attention-score matrix, which grows with the context) plus a fixed
runtime cost; ``gpu_extra`` is the driver context a process pays on a GPU.
When the layer facts are unknown (a manifest without readable headers) the
shape is estimated from the parameter count as a dense model *without*
grouped-query attention and with a 256k vocabulary: an over-estimate for
almost every real model (GQA models hold 4-8x less KV), flagged
``estimated``.

A need fits a device when ``need + margin <= budget`` where the margin is
``max(512 MiB, 10% of need)`` (:func:`margin`): the formula's error is
proportional to the estimate, and a fixed floor covers allocator rounding and
fragmentation.  llama.cpp's own ``--fit`` keeps 1 GiB free per device by
default; swarmd's margin is per model, so two models on one GPU keep 1 GiB.

:func:`devices_of` reads a node's gossiped ``caps`` and ``load``
(protocol/records-capabilities.md) as untrusted input into :class:`Device`
rows: ``cpu`` (RAM: ``memory.total``, free = ``load.memory_available``),
``gpu<i>`` per NVIDIA/AMD GPU (total ``memory_total``, free = total minus
the latest ``memory_used``) and, on Apple Silicon, one ``metal`` device
instead of ``cpu`` (unified memory is one pool; macOS lets the GPU wire
about 2/3 of it, 3/4 above 36 GiB).  A reading that is missing counts as no
free memory: a node is not given new work before its first load report.

:func:`fit` picks a device of one node for a need (GPU first unless
``gpu=False``; among devices of a class, best fit: the least room left) and
otherwise says why, naming what is needed and the largest free memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

__all__ = ["CPU", "GPU_KINDS", "KINDS", "PROFILES", "Device", "FitResult", "GiB", "MiB",
           "ModelFacts", "Need", "Policy", "allowed", "bits_per_weight", "devices_of",
           "facts_from_dict", "facts_to_dict", "fit", "fmt_bytes", "margin", "need_bytes",
           "normalize_kind", "nothing_fits", "order_key", "vllm_memory_utilization"]

MiB = 1024 * 1024
GiB = 1024 * MiB

CPU = "cpu"
#: Device kinds that are GPUs.
GPU_KINDS = ("cuda", "rocm", "metal")
KINDS = (CPU, *GPU_KINDS)
_VENDOR_KIND = {"nvidia": "cuda", "amd": "rocm", "apple": "metal"}

#: Margin kept on top of every need: max(MARGIN_MIN, MARGIN_FRACTION * need).
MARGIN_MIN = 512 * MiB
MARGIN_FRACTION = 0.10
#: Context per slot when a deployment does not say (and the model's own is larger).
DEFAULT_CTX = 4096
#: Largest count or size accepted from untrusted input.
_MAX_INT = 1 << 56
_MAX_GPUS = 64

Policy = Literal["best", "worst"]


@dataclass(frozen=True)
class ModelFacts:
    """What the fit formula knows about a model; None where unknown."""

    weights_bytes: int
    n_layers: int | None = None
    n_ctx_train: int | None = None
    n_embd: int | None = None
    n_head: int | None = None
    n_head_kv: int | None = None
    head_dim_k: int | None = None
    head_dim_v: int | None = None
    n_vocab: int | None = None
    n_ff: int | None = None
    format: str = ""
    architecture: str | None = None
    quantization: str | None = None
    parameters: int | None = None


def facts_to_dict(f: ModelFacts) -> dict[str, Any]:
    """A msgpack/JSON-able form (None fields left out)."""
    return {k.name: getattr(f, k.name) for k in fields(f) if getattr(f, k.name) is not None}


def facts_from_dict(raw: Any) -> ModelFacts | None:
    """Facts from a peer (untrusted): None without a valid ``weights_bytes``;
    any other field of the wrong type or out of range reads as unknown."""
    if not isinstance(raw, Mapping):
        return None
    w = _nonneg(raw.get("weights_bytes"))
    if w is None:
        return None
    vals: dict[str, Any] = {"weights_bytes": w}
    for k in fields(ModelFacts):
        if k.name == "weights_bytes":
            continue
        v = raw.get(k.name)
        if k.name in ("format", "architecture", "quantization"):
            if isinstance(v, str) and len(v) <= 256:
                vals[k.name] = v
        else:
            n = _nonneg(v)
            vals[k.name] = n if n else None
    return ModelFacts(**vals)


def _nonneg(v: Any) -> int | None:
    return v if type(v) is int and 0 <= v < _MAX_INT else None


# ----------------------------------------------------------------------- the formula


@dataclass(frozen=True)
class _Profile:
    kinds: frozenset[str]
    style: Literal["ggml", "torch", "mlx"]
    batch: int  # tokens the engine reserves activations for (ubatch / batched tokens)
    fixed: int  # runtime cost on any device
    gpu_extra: int  # driver context on CUDA/ROCm
    pad: int  # tokens of KV rounded up to a multiple of this


_ALL = frozenset(KINDS)
_CUDA = frozenset({"cuda", "rocm"})
#: Per engine kind; see protocol/placement.md for where each number comes from.
PROFILES: dict[str, _Profile] = {
    # llama.cpp: n_ubatch 512; ggml's CUDA/ROCm backend init ~ Ollama's 457 MiB floor.
    "llamacpp": _Profile(_ALL, "ggml", 512, 128 * MiB, 457 * MiB, 256),
    # Ollama runs llama.cpp's kernels; it reserves 457 MiB per CUDA/ROCm GPU itself.
    "ollama": _Profile(_ALL, "ggml", 512, 256 * MiB, 457 * MiB, 256),
    # vLLM: profile run of max_num_batched_tokens (8192 on big GPUs), CUDA graphs.
    "vllm": _Profile(_CUDA, "torch", 8192, 1 * GiB, 512 * MiB, 16),
    # TGI: warm-up with max_batch_prefill_tokens 4096, CUDA graphs.
    "tgi": _Profile(_CUDA, "torch", 4096, 1 * GiB, 512 * MiB, 16),
    # mlx_lm.server: prefill in steps of 2048 tokens, lazy logits; Apple GPU only.
    "mlx": _Profile(frozenset({"metal"}), "mlx", 2048, 256 * MiB, 0, 1),
}
#: Kinds not listed (plugins): llama.cpp's formula on any device.
GENERIC = PROFILES["llamacpp"]


def normalize_kind(kind: str) -> str:
    """``llama.cpp`` / ``llama_cpp`` / ``LlamaCpp`` -> ``llamacpp``."""
    return re.sub(r"[^a-z0-9]", "", kind.lower())


@dataclass(frozen=True)
class Need:
    """Bytes a model needs on one device, with the breakdown."""

    engine_kind: str
    weights: int
    kv_cache: int
    overhead: int
    #: Added on a CUDA/ROCm device (driver context); 0 elsewhere.
    gpu_extra: int
    #: Device kinds this engine kind runs on.
    kinds: frozenset[str]
    ctx: int
    slots: int
    #: True when the shape was estimated from the parameter count (conservative).
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    def on(self, kind: str) -> int:
        """The need on a device of ``kind``."""
        return self.total + (self.gpu_extra if kind in _CUDA else 0)

    def reserve(self, kind: str) -> int:
        """What placing it on a ``kind`` device takes from the budget: need + margin."""
        n = self.on(kind)
        return n + margin(n)

    def describe(self, kind: str = CPU) -> str:
        n = self.on(kind)
        parts = [f"{fmt_bytes(self.weights)} weights", f"{fmt_bytes(self.kv_cache)} KV cache",
                 f"{fmt_bytes(self.overhead + n - self.total)} overhead",
                 f"{fmt_bytes(margin(n))} margin"]
        est = ", estimated" if self.estimated else ""
        return f"{fmt_bytes(n + margin(n))} ({' + '.join(parts)}{est})"


def margin(n: int) -> int:
    return max(MARGIN_MIN, math.ceil(n * MARGIN_FRACTION))


_BITS = [(re.compile(p), b) for p, b in (
    (r"(?:^|[^0-9])i?q1", 1.8), (r"(?:^|[^0-9])i?q2", 2.7), (r"(?:^|[^0-9])i?q3", 3.5),
    (r"(?:^|[^0-9])i?q4|4bit|int4|awq|gptq|nf4", 4.5), (r"(?:^|[^0-9])i?q5|5bit", 5.5),
    (r"(?:^|[^0-9])i?q6|6bit", 6.6), (r"(?:^|[^0-9])i?q8|8bit|int8|fp8", 8.5),
    (r"f16|float16|half", 16.0), (r"f32|float32", 32.0))]


def bits_per_weight(quantization: str | None) -> float:
    """Bits per parameter a quantization name implies; unknown: 4 (small bits
    over-estimate the parameter count from the file size: conservative)."""
    q = (quantization or "").lower()
    for rx, bits in _BITS:
        if rx.search(q):
            return bits
    return 4.0


@dataclass(frozen=True)
class _Shape:
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_k: int
    head_v: int
    n_vocab: int
    n_ff: int
    estimated: bool


_FALLBACK_VOCAB = 262_144
_HEAD = 128
_ASPECT = 64


def _shape(f: ModelFacts) -> _Shape:
    """The model's shape; missing parts estimated (MHA, 256k vocabulary)."""
    if f.n_layers and (f.n_embd or (f.n_head and f.head_dim_k)):
        n_head = f.n_head or max(1, (f.n_embd or 0) // _HEAD)
        n_embd = f.n_embd or n_head * (f.head_dim_k or _HEAD)
        head_k = f.head_dim_k or max(1, n_embd // n_head)
        return _Shape(f.n_layers, n_embd, n_head, f.n_head_kv or n_head, head_k,
                      f.head_dim_v or head_k, f.n_vocab or _FALLBACK_VOCAB,
                      f.n_ff or 4 * n_embd, not f.n_head_kv)
    # Dense transformer: P ~ 12 * L * d^2.  Taking L = d / 64 (deeper than
    # nearly every released model: Llama 2 7B has d/L = 128, Phi-2 80) and no
    # GQA gives KV per token 4 * L * d = d^2 / 16 bytes at f16, which for a
    # fixed P grows as the model gets deeper: an upper bound in practice.
    params = f.parameters or int(f.weights_bytes * 8 / bits_per_weight(f.quantization))
    d = max(64, int(round((max(params, 1) * _ASPECT / 12) ** (1 / 3))))
    layers = max(1, d // _ASPECT)
    heads = max(1, d // _HEAD)
    return _Shape(layers, d, heads, heads, _HEAD, _HEAD, f.n_vocab or _FALLBACK_VOCAB, 4 * d,
                  True)


def need_bytes(facts: ModelFacts, *, engine_kind: str, ctx: int, slots: int = 1,
               kv_bytes: int = 2) -> Need:
    """Memory ``facts``' model needs under ``engine_kind`` serving ``slots``
    requests of up to ``ctx`` tokens each (``ctx`` <= 0: the model's trained
    context, at most :data:`DEFAULT_CTX`).  ``kv_bytes``: bytes per KV element
    (2: f16/bf16, the default of every engine here; 1 for q8_0/fp8)."""
    kind = normalize_kind(engine_kind)
    p = PROFILES.get(kind, GENERIC)
    slots = max(1, slots)
    if ctx <= 0:
        ctx = min(DEFAULT_CTX, facts.n_ctx_train or DEFAULT_CTX)
    s = _shape(facts)
    tokens = -(-ctx * slots // p.pad) * p.pad
    kv = s.n_layers * tokens * s.n_head_kv * (s.head_k + s.head_v) * max(1, kv_bytes)
    b = p.batch
    act = b * 4 * (4 * s.n_embd + 2 * s.n_ff)
    if p.style == "ggml":
        # ggml reserves the worst-case graph for one ubatch: the largest live
        # tensor is either the logits (n_vocab x ubatch, f32) or, without flash
        # attention, the attention scores (n_kv x ubatch x n_head, f32; 1.25x
        # for the softmax copy), plus the per-layer activations and the output
        # buffer (n_vocab x slots).  Measured: Gemma 3 270M 514.5 + 1.0 MiB
        # (formula 526), tiny llama at ctx 4096 40.9 MiB (formula 41.0).
        scores = ctx * b * s.n_head * 4 * 5 // 4
        compute = max(s.n_vocab * b * 4, scores) + act + s.n_vocab * slots * 4
    elif p.style == "torch":
        # Profile run of ``batch`` tokens (activations in f32 upper bound) and the
        # sampler's logits, probabilities and sort for every running sequence.
        compute = act + slots * s.n_vocab * 4 * 3
    else:
        # MLX evaluates lazily: no logits for the prefill chunk; the attention
        # scores of one chunk against the whole context (f16).
        compute = b * 2 * (4 * s.n_embd + 2 * s.n_ff) + b * ctx * s.n_head * 2
    return Need(engine_kind=kind, weights=facts.weights_bytes, kv_cache=kv,
                overhead=compute + p.fixed, gpu_extra=p.gpu_extra, kinds=p.kinds, ctx=ctx,
                slots=slots, estimated=s.estimated)


def vllm_memory_utilization(need: Need, device: Device) -> float:
    """``--gpu-memory-utilization`` (or TGI's ``--cuda-memory-fraction``) that
    gives the engine its need plus margin on ``device``: vLLM takes that
    fraction of the GPU's *total* memory, whatever else runs there."""
    if device.total_bytes <= 0:
        return 0.0
    frac = need.reserve(device.kind) / device.total_bytes
    return min(0.98, math.ceil(frac * 100) / 100)


# ----------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Device:
    """One memory pool of a node a model can be loaded into."""

    id: str  # "cpu", "gpu0", ...
    kind: str  # "cpu" | "cuda" | "rocm" | "metal"
    total_bytes: int
    free_bytes: int
    #: The vendor's device index (CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES); None for cpu.
    index: int | None = None
    name: str = ""

    @property
    def gpu(self) -> bool:
        return self.kind != CPU


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, float) and math.isfinite(v):
        v = int(v)
    return v if isinstance(v, int) and 0 <= v < _MAX_INT else None


def _m(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _apple_wired(total: int) -> int:
    return total * 3 // 4 if total > 36 * GiB else total * 2 // 3


def devices_of(caps: Any, load: Any) -> list[Device]:
    """A node's devices from its record's ``caps`` and ``load`` (untrusted;
    never raises).  Free memory unknown: 0."""
    caps, load = _m(caps), _m(load)
    gpus_raw = caps.get("gpus")
    gpus = [g for g in gpus_raw[:_MAX_GPUS] if isinstance(g, Mapping)] \
        if isinstance(gpus_raw, list) else []
    lgpus_raw = load.get("gpus")
    lgpus = [g for g in lgpus_raw[:_MAX_GPUS] if isinstance(g, Mapping)] \
        if isinstance(lgpus_raw, list) else []
    by_index: dict[int, Mapping[str, Any]] = {}
    for g in lgpus:
        i = _int(g.get("index"))
        if i is not None:
            by_index[i] = g if i not in by_index else {}  # a duplicate index: ambiguous
    avail = _int(load.get("memory_available"))
    out: list[Device] = []
    apple = False
    for pos, g in enumerate(gpus):
        vendor = g.get("vendor")
        kind = _VENDOR_KIND.get(vendor) if isinstance(vendor, str) else None
        total = _int(g.get("memory_total"))
        if kind is None or not total:
            continue
        index = _int(g.get("index"))
        raw_name = g.get("name")
        name = raw_name if isinstance(raw_name, str) else ""
        if kind == "metal":
            if apple:
                continue
            apple = True
            total = _apple_wired(total)
            free = min(avail or 0, total)
        else:
            used = _int(by_index.get(index, {}).get("memory_used")) if index is not None \
                else None
            if used is None:
                used = _int(g.get("memory_used"))
            free = max(0, total - used) if used is not None else 0
        out.append(Device(f"gpu{pos}", kind, total, free, index, name[:256]))
    if not apple:
        total = _int(_m(caps.get("memory")).get("total"))
        if total:
            out.insert(0, Device(CPU, CPU, total, min(avail or 0, total)))
    return out


# ----------------------------------------------------------------------- fit


@dataclass(frozen=True)
class FitResult:
    device: Device | None
    reason: str
    #: What the chosen device gives up (need + margin); 0 when none fits.
    reserved: int = 0

    @property
    def ok(self) -> bool:
        return self.device is not None


def allowed(need: Need, device: Device, gpu: bool | None) -> bool:
    """Whether ``need``'s engine runs on ``device`` under the ``gpu`` choice."""
    if device.kind not in need.kinds:
        return False
    return gpu is None or device.gpu == gpu


def fmt_bytes(n: int) -> str:
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / MiB:.0f} MiB"


def _class_word(gpu: bool | None, need: Need) -> str:
    if gpu is True or not (need.kinds & {CPU}):
        return "GPU"
    return "RAM" if gpu is False else "device"


def nothing_fits(need: Need, candidates: Iterable[tuple[str, Device, int]],
                 gpu: bool | None) -> str:
    """The reason text: ``candidates`` are ``(where, device, free bytes)``."""
    rows = sorted(candidates, key=lambda c: (-c[2], c[0], c[1].id))
    kinds = [k for k in (*GPU_KINDS, CPU) if k in need.kinds and (gpu is None or
                                                                   (k != CPU) == gpu)]
    if not kinds:
        return (f"{need.engine_kind} runs on {', '.join(sorted(need.kinds))} devices only "
                f"and the deployment asks for {'a GPU' if gpu else 'no GPU'}")
    if not rows:
        return (f"needs {need.describe(kinds[0])}; no {_class_word(gpu, need)} to run it on "
                f"({need.engine_kind} runs on {', '.join(sorted(need.kinds))})")
    best: dict[bool, str] = {}
    for where, dev, free in rows:  # the largest GPU, then the largest RAM
        best.setdefault(dev.gpu, f"{dev.id}{' on ' + where if where else ''} {fmt_bytes(free)}")
    text = ", ".join(best[g] for g in (True, False) if g in best)
    return f"needs {need.describe(kinds[0])}; largest free: {text}"


def order_key(need: Need, device: Device, room: int, gpu: bool | None,
              policy: Policy = "best") -> tuple[int, int, str]:
    """Sort key among the devices a need fits: GPU before CPU when ``gpu`` is
    None, then best fit (least room left after it) or worst fit, then id."""
    left = room - need.reserve(device.kind)
    return (0 if device.gpu or gpu is False else 1, left if policy == "best" else -left,
            device.id)


def fit(need: Need, devices: Iterable[Device], *, gpu: bool | None,
        committed: Mapping[str, int] | None = None, policy: Policy = "best",
        where: str = "") -> FitResult:
    """The device of one node ``need`` fits (its free memory less ``committed``
    bytes by device id), or None and why: the need and the largest free memory."""
    committed = committed or {}
    best: tuple[tuple[int, int, str], Device] | None = None
    rows: list[tuple[str, Device, int]] = []
    for d in devices:
        if not allowed(need, d, gpu):
            continue
        room = d.free_bytes - committed.get(d.id, 0)
        rows.append((where, d, max(0, room)))
        if need.reserve(d.kind) <= room:
            k = order_key(need, d, room, gpu, policy)
            if best is None or k < best[0]:
                best = (k, d)
    if best is None:
        return FitResult(None, nothing_fits(need, rows, gpu))
    d = best[1]
    return FitResult(d, f"fits {d.id} ({need.describe(d.kind)} of "
                        f"{fmt_bytes(d.free_bytes - committed.get(d.id, 0))} free)",
                     need.reserve(d.kind))
