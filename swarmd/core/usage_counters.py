"""Swarm-wide usage totals as replicated G-counters (pure rules).

Theory of operation
-------------------
Every node counts the requests it served into *slots* of the replicated
``usage`` table (kind ``max``, :mod:`swarmd.core.replica`): one slot per
(node, period, group), written only by that node, holding cumulative
``[requests, prompt_tokens, completion_tokens, cost_micro_usd, errors]``.
A slot only grows, so merging copies by element-wise max loses nothing and
any node sums the slots for swarm-wide totals (one G-counter per group and
period, one slot per node).

Slot keys: ``<node>|<period>|<group>``.  Periods are UTC buckets:
``h2026120318`` (hour), ``d20261203`` (day), ``m202612`` (month).  Groups:
``*`` (everything), ``k:<key id>``, ``u:<user>``, ``p:<project>``,
``m:<model>``.  At most :data:`MAX_GROUPS` groups of each kind per node and
period (past it, ``<kind>:~other``) bounds the table whatever the traffic.

Retention (:func:`retained`, applied by every node alike): hours for
:data:`KEEP_HOURS`, days for :data:`KEEP_DAYS`, months for
:data:`KEEP_MONTHS`.  The per-request history is in each node's SQLite
store; these counters are what any node can answer for the whole swarm.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from swarmd.core.replica import Entry, TableSpec

__all__ = ["USAGE_TABLE", "Counts", "Tally", "groups_of", "periods_at", "retained",
           "totals", "usage_spec"]

USAGE_TABLE = "usage"
KEEP_HOURS = 48
KEEP_DAYS = 35
KEEP_MONTHS = 13
MAX_GROUPS = 256
FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cost_micro_usd", "errors")


@dataclass(frozen=True)
class Counts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro_usd: int = 0
    errors: int = 0

    def as_tuple(self) -> tuple[int, ...]:
        return (self.requests, self.prompt_tokens, self.completion_tokens, self.cost_micro_usd,
                self.errors)


def periods_at(wall: float) -> tuple[str, str, str]:
    t = time.gmtime(wall)
    return (time.strftime("h%Y%m%d%H", t), time.strftime("d%Y%m%d", t),
            time.strftime("m%Y%m", t))


def _period_start(period: str) -> float | None:
    try:
        if period[0] == "h":
            st = time.strptime(period[1:], "%Y%m%d%H")
        elif period[0] == "d":
            st = time.strptime(period[1:], "%Y%m%d")
        elif period[0] == "m":
            st = time.strptime(period[1:], "%Y%m")
        else:
            return None
    except (ValueError, IndexError):
        return None
    return float(calendar.timegm(st))


def retained(period: str, wall: float) -> bool:
    """Whether every node still keeps slots of ``period`` at wall time ``wall``."""
    start = _period_start(period)
    if start is None:
        return False
    keep = {"h": KEEP_HOURS * 3600.0, "d": KEEP_DAYS * 86400.0,
            "m": KEEP_MONTHS * 31 * 86400.0}[period[0]]
    return wall - start < keep


def groups_of(*, key_id: str, user: str, project: str, model: str) -> list[str]:
    out = ["*"]
    for kind, v in (("k", key_id), ("u", user), ("p", project), ("m", model)):
        if v:
            out.append(f"{kind}:{v[:128]}")
    return out


def _valid(key: str, value: Any) -> bool:
    parts = key.split("|")
    return len(parts) == 3 and all(parts) and _period_start(parts[1]) is not None


def _keep(key: str, wall: float) -> bool:
    parts = key.split("|")
    return len(parts) == 3 and retained(parts[1], wall)


def usage_spec() -> TableSpec:
    return TableSpec(USAGE_TABLE, kind="max", max_entries=200_000, validate=_valid,
                     retain=_keep)


class Tally:
    """This node's pending counts, folded into its slots when flushed.

    The API side adds each finished request (:meth:`add`); every second or so
    :meth:`flush` turns what accumulated into new cumulative slot values to
    write, reading the current ones from the table so a restarted node (whose
    slots peers still hold, or that it rebuilt) keeps counting up.
    """

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._pending: dict[str, list[int]] = {}
        self._groups: dict[tuple[str, str], set[str]] = {}
        #: Slot keys per group list, for the UTC hour they were made in (days
        #: and months begin on an hour too): a request costs dictionary reads,
        #: not three strftime calls and a dozen f-strings.
        self._hour = -1
        self._keys: dict[tuple[str, ...], list[str]] = {}

    def add(self, wall: float, groups: Iterable[str], counts: Counts) -> None:
        inc = counts.as_tuple()
        hour = int(wall // 3600)
        if hour != self._hour:
            self._hour, self._keys = hour, {}
        gk = tuple(groups)
        keys = self._keys.get(gk)
        if keys is None:
            keys = [f"{self.node_id}|{period}|{self._bounded(period, g)}"
                    for period in periods_at(wall) for g in gk]
            if len(self._keys) < 4096:
                self._keys[gk] = keys
        pending = self._pending
        for key in keys:
            cur = pending.get(key)
            if cur is None:
                pending[key] = list(inc)
            else:
                for i, x in enumerate(inc):
                    cur[i] += x

    def _bounded(self, period: str, group: str) -> str:
        if group == "*":
            return group
        kind = group.split(":", 1)[0]
        seen = self._groups.setdefault((period, kind), set())
        if group in seen or len(seen) < MAX_GROUPS:
            seen.add(group)
            return group
        return f"{kind}:~other"

    def flush(self, table: Mapping[str, Entry]) -> list[tuple[str, tuple[int, ...]]]:
        """Slot values to write: current value (from ``table``) plus what is pending."""
        out = self.peek(table)
        self._pending.clear()
        return out

    def peek(self, table: Mapping[str, Entry]) -> list[tuple[str, tuple[int, ...]]]:
        """What :meth:`flush` would write, without taking it."""
        out = []
        for key, inc in self._pending.items():
            e = table.get(key)
            base = list(e.value) if e is not None else []
            base += [0] * (len(FIELDS) - len(base))
            out.append((key, tuple(b + i for b, i in zip(base, inc, strict=False))))
        return out

    def __bool__(self) -> bool:
        return bool(self._pending)


def totals(table: Mapping[str, Entry], *, by: str, since: float, wall: float,
           alive: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Swarm-wide totals grouped ``by`` (key, user, project, model, node) since ``wall - since``.

    The finest retained period that covers ``since`` is summed (hours up to
    :data:`KEEP_HOURS` h, then days, then months); buckets count whole, so
    ``since`` is rounded out to the bucket boundary.
    """
    if since <= KEEP_HOURS * 3600:
        kind = "h"
    elif since <= KEEP_DAYS * 86400:
        kind = "d"
    else:
        kind = "m"
    cut = wall - since
    prefix = {"key": "k:", "user": "u:", "project": "p:", "model": "m:"}.get(by)
    rows: dict[str, list[int]] = {}
    for key, e in table.items():
        node, period, group = key.split("|", 2)
        if period[0] != kind:
            continue
        start = _period_start(period)
        if start is None or start + {"h": 3600, "d": 86400, "m": 31 * 86400}[kind] <= cut:
            continue
        if by == "node":
            if group != "*":
                continue
            name = node
        elif prefix is not None and group.startswith(prefix):
            name = group[len(prefix):]
        else:
            continue
        acc = rows.setdefault(name, [0] * len(FIELDS))
        for i, x in enumerate(e.value[:len(FIELDS)]):
            acc[i] += x
    out = []
    for name, acc in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        out.append({by: name, "requests": acc[0], "prompt_tokens": acc[1],
                    "completion_tokens": acc[2], "cost_usd": acc[3] / 1e6, "errors": acc[4]})
    return out
