"""swarmd.core.fit: the memory formula per engine kind, devices from records, fit (pure)."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from swarmd.core.fit import (
    Device,
    GiB,
    MiB,
    ModelFacts,
    Need,
    bits_per_weight,
    devices_of,
    facts_from_dict,
    facts_to_dict,
    fit,
    fmt_bytes,
    margin,
    need_bytes,
    normalize_kind,
    vllm_memory_utilization,
)

#: Llama 3 8B (Q4_K_M file size): 32 layers, 32 heads, 8 KV heads of 128, vocab 128256.
LLAMA3_8B = ModelFacts(weights_bytes=4_920_000_000, n_layers=32, n_ctx_train=131072,
                       n_embd=4096, n_head=32, n_head_kv=8, n_vocab=128256, n_ff=14336,
                       parameters=8_030_000_000, quantization="Q4_K_M", format="gguf")
#: Gemma 3 270M Q4_K_M as its GGUF header says (see test_model_facts).
GEMMA3_270M = ModelFacts(weights_bytes=253_113_024, n_layers=18, n_ctx_train=32768,
                         n_embd=640, n_head=4, n_head_kv=1, head_dim_k=256, head_dim_v=256,
                         n_vocab=262144, n_ff=2048, format="gguf")
#: swarmd.testing.tiny_gguf: 2 layers, n_embd 64, 4 heads (and KV heads), vocab 289.
TINY = ModelFacts(weights_bytes=485_632, n_layers=2, n_embd=64, n_head=4, n_head_kv=4,
                  n_vocab=289, n_ff=128, n_ctx_train=512)


def test_llama3_8b_kv_at_8192_is_one_gib_as_llama_cpp_allocates() -> None:
    # 32 layers * 8192 tokens * 8 KV heads * 128 * 2 (K and V) * 2 bytes (f16)
    n = need_bytes(LLAMA3_8B, engine_kind="llamacpp", ctx=8192, slots=1)
    assert n.kv_cache == 32 * 8192 * 8 * 128 * 2 * 2 == 1 * GiB
    assert n.weights == LLAMA3_8B.weights_bytes
    assert n.total == n.weights + n.kv_cache + n.overhead
    # slots each hold a full context (llama-server -c ctx*slots -np slots)
    assert need_bytes(LLAMA3_8B, engine_kind="llamacpp", ctx=8192, slots=4).kv_cache == 4 * GiB
    # q8_0 / fp8 KV halves it
    assert need_bytes(LLAMA3_8B, engine_kind="llama.cpp", ctx=8192, kv_bytes=1).kv_cache \
        == GiB // 2


@pytest.mark.parametrize(("ctx", "kv_mib"), [(2048, 36), (8192, 144), (32768, 576)])
def test_gemma3_270m_matches_llama_cpp_measured_buffers(ctx: int, kv_mib: int) -> None:
    # llama-cpp-python 0.3.36 (CPU) printed, for this model: KV 6+30 MiB at
    # 2048, 24+120 at 8192, 96+480 at 32768 (full-size SWA cache), compute
    # buffer 514.5 MiB and output buffer 1.0 MiB at every one of those sizes.
    n = need_bytes(GEMMA3_270M, engine_kind="llamacpp", ctx=ctx)
    assert n.kv_cache == kv_mib * MiB
    compute = n.overhead - 128 * MiB  # the profile's fixed runtime term
    assert 515.5 * MiB <= compute <= 1.05 * 515.5 * MiB
    assert not n.estimated


@pytest.mark.parametrize(("ctx", "measured_mib"), [(512, 5.88), (4096, 40.88)])
def test_tiny_llama_compute_buffer_grows_with_the_attention_scores(
        ctx: int, measured_mib: float) -> None:
    # Without flash attention ggml holds n_kv x ubatch x n_head f32 scores.
    n = need_bytes(TINY, engine_kind="llamacpp", ctx=ctx)
    compute = n.overhead - 128 * MiB
    assert measured_mib * MiB <= compute <= 1.15 * measured_mib * MiB


def test_vllm_tgi_need_gpu_and_count_blocks_and_the_driver_context() -> None:
    v = need_bytes(LLAMA3_8B, engine_kind="vllm", ctx=1000, slots=3)
    assert v.kinds == frozenset({"cuda", "rocm"})
    per_token = 32 * 8 * 128 * 2 * 2
    assert v.kv_cache == per_token * 3008  # 3000 tokens in 16-token blocks
    assert v.on("cuda") == v.total + 512 * MiB and v.on("cpu") == v.total
    assert v.overhead >= GiB  # CUDA graphs and the profile run
    t = need_bytes(LLAMA3_8B, engine_kind="tgi", ctx=1000, slots=3)
    assert t.kinds == v.kinds and t.overhead < v.overhead  # 4096 vs 8192 warm-up tokens
    dev = Device("gpu0", "cuda", 80 * GiB, 80 * GiB, 0)
    u = vllm_memory_utilization(v, dev)
    assert u * dev.total_bytes >= v.reserve("cuda") and u - 0.01 < v.reserve("cuda") / dev.total_bytes
    assert vllm_memory_utilization(v, Device("gpu0", "cuda", 0, 0)) == 0.0


def test_other_kinds() -> None:
    mlx = need_bytes(LLAMA3_8B, engine_kind="mlx", ctx=4096)
    assert mlx.kinds == frozenset({"metal"}) and mlx.gpu_extra == 0
    o = need_bytes(LLAMA3_8B, engine_kind="ollama", ctx=4096, slots=2)
    lc = need_bytes(LLAMA3_8B, engine_kind="llamacpp", ctx=4096, slots=2)
    assert o.kv_cache == lc.kv_cache and o.overhead > lc.overhead and o.gpu_extra == 457 * MiB
    g = need_bytes(LLAMA3_8B, engine_kind="my-plugin", ctx=4096, slots=2)
    assert g.kinds == frozenset({"cpu", "cuda", "rocm", "metal"})
    assert g.kv_cache == lc.kv_cache and g.engine_kind == "myplugin"
    assert normalize_kind("Llama_CPP") == "llamacpp"


def test_context_defaults_to_the_models_own_up_to_4096() -> None:
    assert need_bytes(LLAMA3_8B, engine_kind="llamacpp", ctx=0).ctx == 4096
    assert need_bytes(TINY, engine_kind="llamacpp", ctx=0).ctx == 512
    assert need_bytes(ModelFacts(weights_bytes=GiB), engine_kind="llamacpp", ctx=-1).ctx == 4096
    assert need_bytes(TINY, engine_kind="llamacpp", ctx=100, slots=0).slots == 1


#: (parameters, layers, KV heads, head dim) of released dense models.
REAL = [
    (124_000_000, 12, 12, 64),  # GPT-2
    (2_780_000_000, 32, 32, 80),  # Phi-2
    (6_740_000_000, 32, 32, 128),  # Llama 2 7B
    (13_000_000_000, 40, 40, 128),  # Llama 2 13B
    (7_240_000_000, 32, 8, 128),  # Mistral 7B
    (8_030_000_000, 32, 8, 128),  # Llama 3 8B
    (70_600_000_000, 80, 8, 128),  # Llama 3 70B
]


@pytest.mark.parametrize(("params", "layers", "kv_heads", "head"), REAL)
def test_fallback_without_layer_facts_is_conservative(params: int, layers: int,
                                                      kv_heads: int, head: int) -> None:
    exact_kv = layers * 4096 * kv_heads * head * 2 * 2
    est = need_bytes(ModelFacts(weights_bytes=params * 2, parameters=params),
                     engine_kind="llamacpp", ctx=4096)
    assert est.estimated and est.kv_cache >= exact_kv
    # from the file size alone (parameters unknown): 4-bit assumed, even more
    by_size = need_bytes(ModelFacts(weights_bytes=params // 2), engine_kind="llamacpp", ctx=4096)
    assert by_size.kv_cache >= exact_kv
    # a partial shape without KV heads assumes full multi-head attention
    partial = need_bytes(ModelFacts(weights_bytes=1, n_layers=layers, n_embd=kv_heads * head,
                                    n_head=kv_heads), engine_kind="llamacpp", ctx=4096)
    assert partial.kv_cache == exact_kv and partial.estimated


def test_bits_per_weight() -> None:
    assert bits_per_weight("Q4_K_M") == 4.5 and bits_per_weight("IQ2_XXS") == 2.7
    assert bits_per_weight("BF16") == 16 and bits_per_weight("float32") == 32
    assert bits_per_weight("Q8_0") == 8.5 and bits_per_weight("awq-4bit") == 4.5
    assert bits_per_weight(None) == 4.0 and bits_per_weight("weird") == 4.0


def test_margin_and_text() -> None:
    assert margin(0) == 512 * MiB and margin(10 * GiB) == GiB
    n = need_bytes(LLAMA3_8B, engine_kind="llamacpp", ctx=8192)
    assert n.reserve("cuda") == n.on("cuda") + margin(n.on("cuda"))
    text = n.describe("cuda")
    assert text.startswith(fmt_bytes(n.reserve("cuda"))) and "1.0 GiB KV cache" in text
    assert fmt_bytes(1536 * MiB) == "1.5 GiB" and fmt_bytes(300 * MiB) == "300 MiB"


def test_facts_round_trip_and_untrusted_input() -> None:
    assert facts_from_dict(facts_to_dict(GEMMA3_270M)) == GEMMA3_270M
    assert facts_from_dict({"weights_bytes": -1}) is None
    assert facts_from_dict({"weights_bytes": True}) is None
    assert facts_from_dict([1]) is None
    f = facts_from_dict({"weights_bytes": 5, "n_layers": "32", "n_head": 0, "format": 7,
                         "n_embd": 1 << 60, "quantization": "Q4"})
    assert f == ModelFacts(weights_bytes=5, quantization="Q4")


# ----------------------------------------------------------------------- devices

CAPS = {
    "memory": {"total": 64 * GiB},
    "gpus": [
        {"index": 0, "vendor": "nvidia", "name": "H100", "memory_total": 80 * GiB,
         "memory_used": 1 * GiB},
        {"index": 1, "vendor": "nvidia", "name": "H100", "memory_total": 80 * GiB,
         "memory_used": 2 * GiB},
    ],
}


def test_devices_of_nvidia_node() -> None:
    load = {"memory_available": 40 * GiB,
            "gpus": [{"index": 1, "memory_used": 30 * GiB}]}
    devs = devices_of(CAPS, load)
    assert [d.id for d in devs] == ["cpu", "gpu0", "gpu1"]
    cpu, g0, g1 = devs
    assert (cpu.kind, cpu.total_bytes, cpu.free_bytes) == ("cpu", 64 * GiB, 40 * GiB)
    assert (g0.kind, g0.free_bytes, g0.index, g0.name) == ("cuda", 79 * GiB, 0, "H100")
    assert g1.free_bytes == 50 * GiB  # the live reading wins over caps
    # before the first load report: RAM not known to be free
    assert devices_of(CAPS, {})[0].free_bytes == 0


def test_devices_of_apple_is_one_metal_pool() -> None:
    caps = {"memory": {"total": 64 * GiB}, "apple": {"unified_memory": 64 * GiB},
            "gpus": [{"index": 0, "vendor": "apple", "memory_total": 64 * GiB}]}
    devs = devices_of(caps, {"memory_available": 60 * GiB})
    assert [(d.id, d.kind) for d in devs] == [("gpu0", "metal")]
    assert devs[0].total_bytes == 48 * GiB and devs[0].free_bytes == 48 * GiB
    small = devices_of({**caps, "gpus": [{"vendor": "apple", "memory_total": 16 * GiB}]},
                       {"memory_available": 4 * GiB})
    assert small[0].total_bytes == 16 * GiB * 2 // 3 and small[0].free_bytes == 4 * GiB


def test_devices_of_amd_and_odd_rows() -> None:
    caps = {"memory": {"total": 8 * GiB}, "gpus": [
        {"index": 0, "vendor": "amd", "memory_total": 16 * GiB},  # no used reading
        {"index": 1, "vendor": "intel", "memory_total": 16 * GiB},  # unknown vendor
        {"index": 2, "vendor": "nvidia", "memory_total": None},
        "junk",
    ]}
    devs = devices_of(caps, {"memory_available": 9 * GiB, "gpus": [
        {"index": 0, "memory_used": 4 * GiB}, {"index": 0, "memory_used": 1}]})
    assert [(d.id, d.kind) for d in devs] == [("cpu", "cpu"), ("gpu0", "rocm")]
    assert devs[0].free_bytes == 8 * GiB  # clamped to the total
    assert devs[1].free_bytes == 0  # duplicate live index: ambiguous; caps has no reading


def _garbage(rng: random.Random, depth: int = 0) -> Any:
    choices: list[Any] = [None, True, -1, 0, 3.5, float("nan"), 1 << 70, "x", b"y",
                          [], {}]
    if depth < 3:
        choices += [[_garbage(rng, depth + 1) for _ in range(rng.randrange(4))],
                    {rng.choice(["memory", "gpus", "total", "memory_total", "index",
                                 "vendor", "memory_used", "memory_available", "name"]):
                     _garbage(rng, depth + 1) for _ in range(rng.randrange(5))}]
    return rng.choice(choices)


def test_devices_of_never_raises_on_garbage() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        caps = _garbage(rng)
        if rng.random() < 0.5:
            caps = {"memory": _garbage(rng), "gpus": [
                {"vendor": rng.choice(["nvidia", "amd", "apple", 1]),
                 "memory_total": _garbage(rng), "index": _garbage(rng),
                 "memory_used": _garbage(rng), "name": _garbage(rng)}
                for _ in range(rng.randrange(3))]}
        for d in devices_of(caps, _garbage(rng)):
            assert 0 <= d.free_bytes <= d.total_bytes and d.total_bytes > 0


# ----------------------------------------------------------------------- fit


def _need(total_gib: float, kind: str = "llamacpp") -> Need:
    w = int(total_gib * GiB)
    return Need(engine_kind=kind, weights=w, kv_cache=0, overhead=0, gpu_extra=0,
                kinds=frozenset({"cpu", "cuda", "rocm", "metal"}), ctx=1, slots=1)


def test_fit_prefers_gpu_then_best_fit() -> None:
    devs = [Device("cpu", "cpu", 128 * GiB, 100 * GiB),
            Device("gpu0", "cuda", 80 * GiB, 70 * GiB, 0),
            Device("gpu1", "cuda", 24 * GiB, 20 * GiB, 1)]
    n = _need(4)
    assert fit(n, devs, gpu=None).device == devs[2]  # least room left
    assert fit(n, devs, gpu=None, policy="worst").device == devs[1]
    assert fit(n, devs, gpu=False).device == devs[0]
    assert fit(_need(30), devs, gpu=None).device == devs[1]
    assert fit(_need(65), devs, gpu=None).device == devs[0]  # no GPU holds it: RAM
    assert fit(_need(65), devs, gpu=True).device is None
    # memory committed to other models on the device is not free (4 GiB + 512 MiB margin)
    assert fit(n, devs, gpu=True, committed={"gpu1": 15 * GiB}).device == devs[2]
    assert fit(n, devs, gpu=True, committed={"gpu1": 16 * GiB}).device == devs[1]
    assert fit(n, devs, gpu=True, committed={"gpu0": 70 * GiB, "gpu1": 16 * GiB}).device \
        is None


def test_fit_reason_names_need_and_largest_free() -> None:
    devs = [Device("cpu", "cpu", 4 * GiB, int(1.5 * GiB)),
            Device("gpu0", "cuda", 8 * GiB, int(2.1 * GiB), 0)]
    n = _need(2.7)  # + 512 MiB margin = 3.2 GiB
    r = fit(n, devs, gpu=None)
    assert not r.ok and r.reserved == 0
    assert r.reason.startswith("needs 3.2 GiB (2.7 GiB weights")
    assert r.reason.endswith("largest free: gpu0 2.1 GiB, cpu 1.5 GiB")
    vllm = need_bytes(LLAMA3_8B, engine_kind="vllm", ctx=4096)
    r = fit(vllm, [devs[0]], gpu=None)
    assert "no GPU to run it on" in r.reason and "cuda, rocm" in r.reason
    r = fit(vllm, devs, gpu=False)
    assert re.search(r"vllm runs on cuda, rocm devices only .* no GPU", r.reason)
    ok = fit(_need(1), devs, gpu=None)
    assert ok.ok and ok.reserved == _need(1).reserve("cuda") and "fits gpu0" in ok.reason
