"""Reading an engine's Prometheus ``/metrics`` text.

Theory of operation: engines (vLLM, TGI, llama-server with ``--metrics``, the
SIMULATED engine) export their queue and batch sizes as Prometheus gauges.
:func:`parse_samples` turns the exposition text into ``{sample name: [(labels,
value)]}`` with prometheus_client's own parser; a malformed scrape is parsed
line by line so that one bad line costs only that line.  A metric can have
several series (vLLM labels each data-parallel engine with ``engine="0"``,
``engine="1"`` ...), so callers combine them with :func:`total` or
:func:`highest`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

Samples = Mapping[str, list[tuple[dict[str, str], float]]]


def _parse(text: str, out: dict[str, list[tuple[dict[str, str], float]]]) -> None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            value = float(s.value)
            if math.isnan(value):
                continue
            out.setdefault(s.name, []).append((dict(s.labels), value))


def parse_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        _parse(text, out)
        return out
    except (ValueError, TypeError, IndexError):
        out.clear()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            _parse(line + "\n", out)
        except (ValueError, TypeError, IndexError):
            continue
    return out


def _values(samples: Samples, names: Iterable[str]) -> list[float] | None:
    for name in names:
        series = samples.get(name)
        if series:
            return [v for _, v in series]
    return None


def total(samples: Samples, *names: str) -> float | None:
    """Sum over the series of the first of ``names`` present; None if none is."""
    vals = _values(samples, names)
    return None if vals is None else sum(vals)


def highest(samples: Samples, *names: str) -> float | None:
    """Largest series value of the first of ``names`` present; None if none is."""
    vals = _values(samples, names)
    return None if vals is None else max(vals)


def as_count(value: float | None) -> int | None:
    if value is None or value < 0 or math.isinf(value):
        return None
    return int(round(value))


def as_fraction(value: float | None) -> float | None:
    if value is None or math.isinf(value):
        return None
    return min(1.0, max(0.0, value))
