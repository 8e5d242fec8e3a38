"""A simulated swarm for placement tests and benchmarks (pure data).

:func:`swarm` makes ``n_models`` deployments of mixed sizes (0.3B to 70B
parameters, 4.5 to 16 bits, llama.cpp or vLLM, 1 to 5 replicas, some
everywhere) and ``n_nodes`` machines: a quarter with no GPU, the rest with
8, 24 (one or two) or 80 GiB GPUs, each holding a few of the models.
Deterministic for a seed.
"""

from __future__ import annotations

import random

from swarmd.core.fit import Device, GiB, ModelFacts, Need, need_bytes
from swarmd.core.placement import Deployment, NodeView

LAYERS = {0.3e9: 18, 1e9: 16, 3e9: 28, 7e9: 32, 8e9: 32, 14e9: 40, 32e9: 64, 70e9: 80}


def make_nodes(n: int, rng: random.Random, models: list[str], *, id_width: int = 4,
               prefix: str = "node-") -> list[NodeView]:
    """Mixed machines: a quarter with no GPU, then 8, 24 (one or two) and 80 GiB GPUs."""
    nodes = []
    for i in range(n):
        ram = rng.choice([16, 32, 64, 128]) * GiB
        devs = [Device("cpu", "cpu", ram, int(ram * rng.uniform(0.4, 0.9)))]
        kind = i % 4
        if kind:
            size = {1: 8, 2: 24, 3: 80}[kind] * GiB
            for g in range(2 if kind == 2 and rng.random() < 0.5 else 1):
                devs.append(Device(f"gpu{g}", "cuda", size, int(size * rng.uniform(0.7, 1.0)), g))
        holds = frozenset(rng.sample(models, rng.randrange(4)))
        nodes.append(NodeView(f"{prefix}{i:0{id_width}d}", tuple(devs), holds=holds,
                              started=float(rng.randrange(1000))))
    return nodes


def make_models(n: int, rng: random.Random) -> tuple[list[Deployment], dict[str, Need]]:
    deps, needs = [], {}
    for i in range(n):
        name = f"model-{i:03d}"
        params = rng.choice(list(LAYERS))
        bits = rng.choice([4.5, 8.5, 16])
        layers = LAYERS[params]
        facts = ModelFacts(weights_bytes=int(params * bits / 8), n_layers=layers,
                           n_embd=128 * layers, n_head=layers, n_head_kv=8, n_vocab=128_000,
                           n_ff=512 * layers)
        kind = "vllm" if bits == 16 and rng.random() < 0.5 else "llamacpp"
        ctx, slots = rng.choice([2048, 4096, 8192]), rng.choice([1, 2, 4])
        replicas = 0 if i % 15 == 7 else rng.choice([1, 1, 2, 3, 5])
        gpu = True if kind == "vllm" else rng.choice([None, None, True, False])
        deps.append(Deployment(name, replicas, gpu, ctx, slots))
        needs[name] = need_bytes(facts, engine_kind=kind, ctx=ctx, slots=slots)
    return deps, needs


def swarm(n_nodes: int = 100, n_models: int = 30, seed: int = 1, **node_kw: object
          ) -> tuple[list[Deployment], dict[str, Need], list[NodeView]]:
    rng = random.Random(seed)
    deps, needs = make_models(n_models, rng)
    return deps, needs, make_nodes(n_nodes, rng, [d.model for d in deps],
                                   **node_kw)  # type: ignore[arg-type]
