"""When is a new load sample worth gossiping?

Theory of operation
-------------------
A node samples its host load (CPU %, load average, memory, per-GPU
utilisation, memory, temperature, power) every ``load_interval`` seconds.
Raw samples differ every time -- used memory moves by a few kilobytes -- so
gossiping each one would send a record delta to the whole swarm every
interval for nothing (in an idle 3-node swarm that was most of the daemon's
CPU).  :func:`significant` compares the new sample with the one last
gossiped, leaf by leaf, with a tolerance per kind of figure; a change of
shape (a GPU appears, a key is added) is always significant.  The caller
also re-gossips after ``load_heartbeat`` seconds regardless, so a reader
never sees load older than that.

Engine load (queue depth, KV-cache use), which routing relies on, is not
filtered here: it travels in the ``engines`` record, published on change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Absolute tolerance for figures in percent (CPU %, GPU utilisation).
PERCENT_POINTS = 5.0
#: Absolute tolerance for temperatures, degrees Celsius.
DEGREES = 3.0
#: Absolute tolerance for load averages (runnable tasks).
LOAD_AVG = 0.5
#: Relative tolerance for everything else (bytes of memory, watts).
RELATIVE = 0.05


def _tolerance(key: str, old: float) -> float:
    k = key.lower()
    if "percent" in k or "utilization" in k:
        return PERCENT_POINTS
    if "temperature" in k:
        return DEGREES
    if "load_avg" in k:
        return LOAD_AVG
    return abs(old) * RELATIVE


def significant(old: Any, new: Any, key: str = "") -> bool:
    """True if ``new`` differs from ``old`` by more than the tolerances."""
    if isinstance(old, bool) or isinstance(new, bool):
        return bool(old is not new)
    if isinstance(old, int | float) and isinstance(new, int | float):
        return abs(float(new) - float(old)) > _tolerance(key, float(old))
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        if old.keys() != new.keys():
            return True
        return any(significant(old[k], new[k], str(k)) for k in new)
    if isinstance(old, list | tuple) and isinstance(new, list | tuple):
        if len(old) != len(new):
            return True
        return any(significant(a, b, key) for a, b in zip(old, new, strict=True))
    return bool(old != new)
