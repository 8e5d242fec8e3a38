"""swarmd.metrics: the collector over a made-up swarm, and request series."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from swarmd.metrics import SwarmCollector, new_registry
from tests.fakes.control import fake_snapshot


@dataclass
class _Engine:
    id: str
    kind: str
    healthy: bool
    models: tuple[str, ...]
    inflight: int


def _samples(text: bytes) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def test_collector_reads_snapshot_engines_and_counters_at_scrape_time() -> None:
    stats = {"requests": 3}
    engines = [_Engine("e1", "llamacpp", True, ("a", "b"), 2), _Engine("e2", "vllm", False, (), 0)]
    collector = SwarmCollector(fake_snapshot, engines=lambda: engines,
                               counters={"forward_client_": lambda: stats})
    registry, req = new_registry(collector)
    req.finished("/v1/chat/completions", 200, 0.02)
    req.finished("/v1/chat/completions", 404, 0.001)
    req.first_byte("/v1/chat/completions", 0.003)
    got = _samples(generate_latest(registry))
    assert got["swarmd_members{state=alive}"] == 2
    assert got["swarmd_members{state=suspect}"] == 1
    assert got["swarmd_members{state=dead}"] == 0
    assert got["swarmd_coordinator_epoch{}"] == 7
    assert got["swarmd_is_coordinator{}"] == 0  # beta holds it, we are alpha
    assert got["swarmd_dropped_total{}"] == 0
    assert got["swarmd_health_score{}"] == 2
    assert got["swarmd_forward_client_requests_total{}"] == 3
    assert got["swarmd_engine_healthy{engine=e1,kind=llamacpp}"] == 1
    assert got["swarmd_engine_healthy{engine=e2,kind=vllm}"] == 0
    assert got["swarmd_engine_inflight{engine=e1}"] == 2
    assert got["swarmd_engine_models{engine=e1}"] == 2
    assert got["swarmd_api_requests_total{route=/v1/chat/completions,status=200}"] == 1
    assert got["swarmd_api_requests_total{route=/v1/chat/completions,status=404}"] == 1
    assert got["swarmd_api_request_duration_seconds_count{route=/v1/chat/completions}"] == 2
    assert got["swarmd_api_first_byte_seconds_count{route=/v1/chat/completions}"] == 1
    stats["requests"] = 5  # read live, not copied at registration
    assert _samples(generate_latest(registry))["swarmd_forward_client_requests_total{}"] == 5


def test_registries_are_independent() -> None:
    r1, m1 = new_registry(SwarmCollector(fake_snapshot))
    r2, _ = new_registry(SwarmCollector(fake_snapshot))
    m1.finished("/v1/embeddings", 200, 0.01)
    assert b'route="/v1/embeddings"' in generate_latest(r1)
    assert b'route="/v1/embeddings"' not in generate_latest(r2)
