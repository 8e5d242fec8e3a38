"""Prometheus metrics of one daemon.

Theory of operation
-------------------
One :class:`prometheus_client.CollectorRegistry` per daemon (never the
process-global one: tests run several daemons' worth of objects in one
process, and importing swarmd registers nothing).  It is served as
``GET /metrics`` on the OpenAI port (so Prometheus can scrape it over the
network, as it does vLLM's or LiteLLM's) and on the control socket.

Two kinds of series:

- Counters the daemon already keeps -- the sans-IO membership's and the p2p
  transport's ``stats`` (carried in the :class:`Snapshot`), the forwarder's,
  the proxy's error counts -- and state (members by state, the lease, local
  engines) are read at scrape time by :class:`SwarmCollector`; nothing is
  counted twice and the hot paths do no extra work for them.
- Per-request series the proxy observes as requests finish
  (:class:`RequestMetrics`): count and duration by route and status, and the
  time to the first byte, by route.

Names: ``swarmd_`` prefix; counters end in ``_total``; durations in seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from swarmd.core.snapshot import Snapshot

__all__ = ["RequestMetrics", "SwarmCollector", "metrics_response", "new_registry"]

#: Request-duration buckets, seconds: a cached short answer (~ms) up to a
#: long generation (minutes).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Time-to-first-byte buckets, seconds.
#: Seconds waited in a model's queue.
QUEUE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: Most models with a queue-depth series.
MAX_QUEUE_MODELS = 256
TTFB_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

STATES = ("alive", "suspect", "dead", "left")


class EngineView(Protocol):
    id: str
    kind: str
    healthy: bool
    models: tuple[str, ...]
    inflight: int


#: Most distinct values of the model and project labels of the usage series.
MAX_USAGE_LABELS = 200


class RequestMetrics:
    """What the proxy observes per request (thread-safe, prometheus_client)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._queue_models: set[str] = set()
        self.requests = Counter(
            "swarmd_api_requests", "OpenAI API requests answered, by route and HTTP status",
            ["route", "status"], registry=registry)
        self.duration = Histogram(
            "swarmd_api_request_duration_seconds",
            "Seconds from request received to the last byte sent, by route",
            ["route"], buckets=DURATION_BUCKETS, registry=registry)
        self.ttfb = Histogram(
            "swarmd_api_first_byte_seconds",
            "Seconds from request received to the engine's first byte, by route "
            "(includes routing, retries and a remote hop)",
            ["route"], buckets=TTFB_BUCKETS, registry=registry)
        self.queued = Gauge(
            "swarmd_queue_depth", "Requests waiting on this node for a free engine slot, "
            "by model (bounded: models this node was asked for)",
            ["model"], registry=registry)
        self.queue_wait_s = Histogram(
            "swarmd_queue_wait_seconds",
            "Seconds a queued request waited for a free engine slot",
            buckets=QUEUE_BUCKETS, registry=registry)


        self.usage_requests = Counter(
            "swarmd_usage_requests", "Requests booked on this node, by model and project "
            "(bounded: past MAX_USAGE_LABELS values a label reads \"~other\")",
            ["model", "project"], registry=registry)
        self.usage_tokens = Counter(
            "swarmd_usage_tokens", "Tokens booked on this node, by model, project and kind "
            "(prompt, completion)", ["model", "project", "kind"], registry=registry)
        self.usage_cost = Counter(
            "swarmd_usage_cost_usd", "Cost booked on this node ([[prices]]), USD, by model "
            "and project", ["model", "project"], registry=registry)
        self.limit_refusals = Counter(
            "swarmd_limit_refusals", "Requests refused by a key's limits, by reason "
            "(insufficient_quota, rate_limit_exceeded)", ["reason"], registry=registry)
        self.auth_failures = Counter(
            "swarmd_auth_failures", "Requests refused by auth, by status (401, 403)",
            ["status"], registry=registry)
        self.budget_used = Gauge(
            "swarmd_budget_used", "Fraction of a budget used swarm-wide, set when it passes "
            "its warn fraction ([limits] warn), by owner and kind (tok_d, usd_d, usd_m)",
            ["owner", "kind"], registry=registry)
        self._labels: dict[str, set[str]] = {"model": set(), "project": set()}

    def _bounded(self, kind: str, value: str) -> str:
        seen = self._labels[kind]
        if value in seen:
            return value
        if len(seen) >= MAX_USAGE_LABELS:
            return "~other"
        seen.add(value)
        return value

    def booked(self, model: str, project: str, prompt_tokens: int, completion_tokens: int,
               cost_usd: float) -> None:
        m, p = self._bounded("model", model or "?"), self._bounded("project", project or "")
        self.usage_requests.labels(m, p).inc()
        if prompt_tokens:
            self.usage_tokens.labels(m, p, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.usage_tokens.labels(m, p, "completion").inc(completion_tokens)
        if cost_usd:
            self.usage_cost.labels(m, p).inc(cost_usd)

    def finished(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.duration.labels(route).observe(seconds)

    def first_byte(self, route: str, seconds: float) -> None:
        self.ttfb.labels(route).observe(seconds)

    def queue_depth(self, model: str, depth: int) -> None:
        if depth == 0 and model not in self._queue_models:
            return
        if model not in self._queue_models:
            if len(self._queue_models) >= MAX_QUEUE_MODELS:
                return  # bounded cardinality
            self._queue_models.add(model)
        self.queued.labels(model).set(depth)

    def queue_wait(self, seconds: float) -> None:
        self.queue_wait_s.observe(seconds)


class SwarmCollector(Collector):
    """Reads the daemon's own counters and state at scrape time."""

    def __init__(self, snapshot: Callable[[], Snapshot],
                 engines: Callable[[], list[Any]] | None = None,
                 counters: Mapping[str, Callable[[], Mapping[str, int]]] | None = None) -> None:
        self.snapshot = snapshot
        self.engines = engines
        #: Extra counter groups: prefix -> function returning {name: value}.
        self.counters = dict(counters or {})

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        members = GaugeMetricFamily("swarmd_members", "Members this node knows, by state",
                                    labels=["state"])
        counts = dict.fromkeys(STATES, 0)
        for n in snap.nodes:
            counts[n.state] = counts.get(n.state, 0) + 1
        for state, c in counts.items():
            members.add_metric([state], c)
        yield members
        coord = snap.coordinator
        yield GaugeMetricFamily("swarmd_coordinator_epoch",
                                "Epoch of the coordinator lease this node follows (0: none)",
                                value=coord[1] if coord else 0)
        yield GaugeMetricFamily("swarmd_is_coordinator",
                                "1 while this node holds the coordinator lease",
                                value=1 if coord and coord[0] == snap.node_id else 0)
        yield GaugeMetricFamily("swarmd_health_score",
                                "Lifeguard local health: 0 healthy; each point stretches "
                                "this node's probe interval by one interval",
                                value=snap.health_score)
        groups: dict[str, Mapping[str, int]] = {"": snap.stats}
        for prefix, fn in self.counters.items():
            groups[prefix] = fn()
        for prefix, stats in groups.items():
            for key, value in sorted(stats.items()):
                name = f"swarmd_{prefix}{key}"
                fam = CounterMetricFamily(name, f"{prefix}{key} (see the daemon's stats)")
                fam.add_metric([], value)
                yield fam
        if self.engines is not None:
            healthy = GaugeMetricFamily("swarmd_engine_healthy",
                                        "1 while a local engine answers its health check",
                                        labels=["engine", "kind"])
            inflight = GaugeMetricFamily("swarmd_engine_inflight",
                                         "Requests this node has in flight on a local engine",
                                         labels=["engine"])
            models = GaugeMetricFamily("swarmd_engine_models",
                                       "Models a local engine serves", labels=["engine"])
            for e in self.engines():
                healthy.add_metric([e.id, e.kind], 1 if e.healthy else 0)
                inflight.add_metric([e.id], e.inflight)
                models.add_metric([e.id], len(e.models))
            yield healthy
            yield inflight
            yield models


def new_registry(collector: SwarmCollector) -> tuple[CollectorRegistry, RequestMetrics]:
    """A fresh registry with the daemon's collector and request metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry, RequestMetrics(registry)


def metrics_response(registry: CollectorRegistry) -> web.Response:
    """``GET /metrics``: the registry in Prometheus' text format."""
    resp = web.Response(body=generate_latest(registry))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp
