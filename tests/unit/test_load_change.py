"""swarmd.core.load_change: which load samples are worth gossiping."""

from __future__ import annotations

import copy

import pytest

from swarmd.config import ConfigError, from_mapping
from swarmd.core.load_change import significant

BASE = {
    "cpu_percent": 12.0,
    "load_avg": [0.5, 0.4, 0.3],
    "memory_used": 8 * 2**30,
    "memory_available": 24 * 2**30,
    "gpus": [{"index": 0, "utilization": 40.0, "memory_used": 10 * 2**30,
              "temperature": 55.0, "power_w": 200.0}],
}


def changed(path: list, value: object) -> dict:
    doc = copy.deepcopy(BASE)
    obj: object = doc
    for p in path[:-1]:
        obj = obj[p]  # type: ignore[index]
    obj[path[-1]] = value  # type: ignore[index]
    return doc


@pytest.mark.parametrize("path, value", [
    (["cpu_percent"], 15.0),                 # 3 points
    (["memory_used"], 8 * 2**30 + 4096),     # a page
    (["load_avg", 0], 0.8),
    (["gpus", 0, "utilization"], 44.0),
    (["gpus", 0, "temperature"], 57.0),
    (["gpus", 0, "power_w"], 205.0),
])
def test_noise_is_not_significant(path: list, value: object) -> None:
    assert not significant(BASE, changed(path, value))


@pytest.mark.parametrize("path, value", [
    (["cpu_percent"], 40.0),
    (["memory_used"], 12 * 2**30),
    (["load_avg", 0], 2.5),
    (["gpus", 0, "utilization"], 95.0),
    (["gpus", 0, "memory_used"], 20 * 2**30),
    (["gpus", 0, "temperature"], 80.0),
    (["gpus", 0, "power_w"], 350.0),
])
def test_real_changes_are_significant(path: list, value: object) -> None:
    assert significant(BASE, changed(path, value))


def test_shape_changes_are_significant() -> None:
    more = copy.deepcopy(BASE)
    more["gpus"].append(dict(more["gpus"][0], index=1))
    assert significant(BASE, more)
    fewer = {k: v for k, v in BASE.items() if k != "load_avg"}
    assert significant(BASE, fewer)
    assert significant({"x": 1}, {"x": "1"})
    assert significant({"ok": True}, {"ok": False})
    assert not significant(BASE, copy.deepcopy(BASE))


@pytest.mark.parametrize("key", ["load_interval", "load_heartbeat"])
def test_load_timing_must_be_positive(key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_mapping({"membership": {key: 0}})
    assert f"membership.{key}" in str(exc.value)
