"""Budgets with no central server: each node spends only the share it holds (escrow).

Theory of operation
-------------------
A *budget* is one limit of one key for one window: ``<key id>:<kind>:<window>``
with kind ``tok_d`` (tokens per UTC day), ``usd_d`` (micro-USD per UTC day) or
``usd_m`` (micro-USD per UTC month), window ``d20261203`` or ``m202612``.
Its amount is split in *rights* (a bounded counter, Balegas et al. 2015):

* **mint** -- at the start of each window, each of the key's ``holders`` (the
  alive nodes when the key was made) owns ``amount // len(holders)`` (the
  first holder also the remainder).  Computed from the key, never stored,
  so it cannot be minted twice.
* **transfers** -- node *i* gives *j* part of its rights by growing its own
  slot ``i|<budget>|>j`` in the replicated ``escrow`` table (a G-counter
  only *i* writes).
* **spent** -- slot ``i|<budget>|$`` (cumulative, only *i* writes).
* **want** -- slot ``i|<budget>|?``: cumulative amount *i* asked for and
  lacked; peers with spare rights answer it with transfers.

Rights of *i* = mint(i) + given to i - given by i - spent by i - reserved by
i (requests in flight on *i*, held locally).  A node admits a request only
if its worst case (prompt estimate + ``max_tokens``, at the model's price)
fits its rights, and *reserves* that much until the request settles at its
real cost.  Every term is either computed from the key or a G-counter only
its owner grows, so no interleaving of messages, no partition and no clock
can make the rights the nodes hold add up to more than the amount:

    sum over nodes of (spent + reserved) <= amount        (the invariant)

**Overspend bound.**  Charges beyond the amount come only from a request
whose real cost exceeds the reservation it was admitted under:
``overspend <= sum over requests of max(0, real - reserved)``.  The proxy
caps ``max_tokens`` at what the reservation covers and estimates prompt
tokens from above (:func:`prompt_bound`: one token per UTF-8 byte plus a
per-message allowance for chat-template tokens), so for an engine that
honours ``max_tokens`` the bound is 0 tokens.  An engine that ignores
``max_tokens`` can overspend by what it generates past it.  Rights a node
holds while it is down or cut off are unusable (never spent twice) until it
returns or the window ends: the cost of a partition is under-use, never
overspend.

**Liveness.**  Transfers answer wants (the API side gives half its spare
a round), so an idle node could be drained by its neighbours' early
reservations and then be cut off with nothing for its own clients.  A
giver therefore keeps a quarter of its mint while its own clients asked in
the last minute, or while under half of the amount is spent swarm-wide as
it sees it (:meth:`swarmd.api.limits.Limits._keep`).  Past half the floor
of an idle node lifts: by then a single busy node has been given at least
3/4 of every other mint, more than half of the amount, so it can still
reach all of it.

Everything here is pure: the API side (:mod:`swarmd.api.limits`) holds
this node's own counters and reservations, reads peers' slots from the
snapshot, and writes its slots through the node machine.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from swarmd.core.keys import KeyInfo
from swarmd.core.replica import Entry, TableSpec
from swarmd.core.usage_counters import retained

__all__ = ["ESCROW_TABLE", "Budget", "budgets_of", "escrow_spec", "mint", "prompt_bound",
           "rights", "swarm_spent", "window_start"]

ESCROW_TABLE = "escrow"
#: Tokens allowed per chat message for template tokens (role markers and the like).
MESSAGE_OVERHEAD = 16
REQUEST_OVERHEAD = 32


@dataclass(frozen=True)
class Budget:
    #: Whose budget: a key id, or ``u<hash>`` / ``p<hash>`` for a user's or a
    #: project's (:func:`owner_of`; the name is in ``label``).
    key_id: str
    kind: str  # tok_d | usd_d | usd_m
    window: str  # d20261203 | m202612
    amount: int  # tokens or micro-USD
    holders: tuple[str, ...]
    resets_at: float  # unix seconds when the window ends
    id: str = ""  # <owner>:<kind>:<window> (filled in)
    #: What people call the owner: "key 3f2a...", "user ann", "project demo".
    label: str = ""
    #: Fraction of the amount past which a warning goes out (0: none).
    warn: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", f"{self.key_id}:{self.kind}:{self.window}")

    @property
    def unit(self) -> str:
        return "tokens" if self.kind == "tok_d" else "USD"


def _day_end(wall: float) -> float:
    return (int(wall) // 86400 + 1) * 86400.0


def _month_end(wall: float) -> float:
    t = time.gmtime(wall)
    y, m = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((y, m, 1, 0, 0, 0)))


def budgets_of(info: KeyInfo, wall: float) -> list[Budget]:
    """The key's budgets for the windows current at ``wall``."""
    holders = info.holders or ((info.created_on,) if info.created_on else ())
    return _windows(info.id, f"key {info.prefix}...", info.budget_tokens_day,
                    info.budget_usd_day, info.budget_usd_month, holders, 0.0, wall)


def _windows(owner: str, label: str, tokens_day: int, usd_day: float, usd_month: float,
             holders: tuple[str, ...], warn: float, wall: float) -> list[Budget]:
    out = []
    day = time.strftime("d%Y%m%d", time.gmtime(wall))
    month = time.strftime("m%Y%m", time.gmtime(wall))
    if tokens_day:
        out.append(Budget(owner, "tok_d", day, tokens_day, holders, _day_end(wall),
                          label=label, warn=warn))
    if usd_day:
        out.append(Budget(owner, "usd_d", day, round(usd_day * 1e6), holders, _day_end(wall),
                          label=label, warn=warn))
    if usd_month:
        out.append(Budget(owner, "usd_m", month, round(usd_month * 1e6), holders,
                          _month_end(wall), label=label, warn=warn))
    return out


# -- user and project budgets: the ``budgets`` table --------------------------------

BUDGETS_TABLE = "budgets"


@dataclass(frozen=True)
class BudgetSpec:
    """A user's or project's limits (table key ``user:<name>`` / ``project:<name>``)."""

    scope: str  # user | project
    name: str
    tokens_day: int = 0
    usd_day: float = 0.0
    usd_month: float = 0.0
    #: Warn (log, metric, webhook) once a window's use passes this fraction; 0: never.
    warn: float = 0.8
    holders: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.scope}:{self.name}"

    @property
    def owner(self) -> str:
        return owner_of(self.scope, self.name)

    def value(self) -> dict[str, Any]:
        return {"tokens_day": self.tokens_day, "usd_day": self.usd_day,
                "usd_month": self.usd_month, "warn": self.warn, "holders": list(self.holders)}

    def windows(self, wall: float) -> list[Budget]:
        return _windows(self.owner, f"{self.scope} {self.name}", self.tokens_day, self.usd_day,
                        self.usd_month, self.holders, self.warn, wall)


def owner_of(scope: str, name: str) -> str:
    """A 12-character owner id for escrow slot keys (names may hold any character)."""
    import hashlib

    return scope[0] + hashlib.sha256(f"{scope}:{name}".encode()).hexdigest()[:11]


def parse_budget(key: str, v: Mapping[str, Any]) -> BudgetSpec | None:
    scope, _, name = key.partition(":")
    if scope not in ("user", "project") or not 0 < len(name) <= 128:
        return None
    t, ud, um, warn, holders = (v.get("tokens_day", 0), v.get("usd_day", 0.0),
                                v.get("usd_month", 0.0), v.get("warn", 0.8),
                                v.get("holders", []))
    nums = (t, ud, um, warn)
    if (any(isinstance(x, bool) or not isinstance(x, int | float) or x < 0 for x in nums)
            or not isinstance(t, int) or warn > 1 or not isinstance(holders, list)
            or len(holders) > 64 or not all(isinstance(h, str) and h for h in holders)):
        return None
    return BudgetSpec(scope, name, t, float(ud), float(um), float(warn), tuple(holders))


def budgets_spec() -> TableSpec:
    return TableSpec(BUDGETS_TABLE, max_entries=10_000,
                     validate=lambda k, v: parse_budget(k, v) is not None)


def window_start(window: str) -> float:
    """Unix seconds at which ``d20261203`` / ``m202612`` begins."""
    fmt = "%Y%m%d" if window[0] == "d" else "%Y%m"
    return float(calendar.timegm(time.strptime(window[1:], fmt)))


def mint(b: Budget, node: str) -> int:
    if node not in b.holders:
        return 0
    share = b.amount // len(b.holders)
    return share + (b.amount - share * len(b.holders) if node == b.holders[0] else 0)


def rights(b: Budget, node: str, table: Mapping[str, Entry],
           own: Mapping[str, int] | None = None) -> int:
    """Rights ``node`` holds in ``b`` (before its local reservations); see EscrowIndex."""
    return EscrowIndex(table).rights(b, node, own or {})


def swarm_spent(b: Budget, table: Mapping[str, Entry],
                own: Mapping[str, int] | None = None) -> int:
    """What every node spent of ``b``; ``own`` may be ahead of the table for its slots."""
    idx = EscrowIndex(table)
    spent = dict(idx.spent.get(b.id, {}))
    for k, v in (own or {}).items():
        if k.endswith(f"|{b.id}|$"):
            n = k.split("|", 1)[0]
            spent[n] = max(spent.get(n, 0), v)
    return sum(spent.values())


class EscrowIndex:
    """The shares table arranged by budget, built once per table version.

    ``rights`` and ``spent`` then cost a few dictionary reads instead of a
    scan of the table.  This node's own counters (``own``, authoritative and
    never behind the table for its own slots) are passed in per call.
    """

    def __init__(self, table: Mapping[str, Entry]) -> None:
        self.spent: dict[str, dict[str, int]] = {}
        self.given: dict[str, dict[tuple[str, str], int]] = {}
        self.want: dict[str, dict[str, int]] = {}
        for key, e in table.items():
            parts = key.split("|")
            if len(parts) != 3 or not e.value:
                continue
            node, bid, tail = parts
            v = int(e.value[0])
            if tail == "$":
                self.spent.setdefault(bid, {})[node] = v
            elif tail == "?":
                self.want.setdefault(bid, {})[node] = v
            elif tail.startswith(">"):
                self.given.setdefault(bid, {})[(node, tail[1:])] = v

    def rights(self, b: Budget, node: str, own: Mapping[str, int]) -> int:
        bid = b.id
        total = mint(b, node) - max(own.get(f"{node}|{bid}|$", 0),
                                    self.spent.get(bid, {}).get(node, 0))
        for (giver, to), v in self.given.get(bid, {}).items():
            if to == node and giver != node:
                total += v
            elif giver == node:
                total -= max(v, own.get(f"{node}|{bid}|>{to}", 0))
        prefix = f"{node}|{bid}|>"
        for k, v in own.items():  # transfers of ours the table has not seen yet
            if k.startswith(prefix) and (node, k[len(prefix):]) not in self.given.get(bid, {}):
                total -= v
        return total

    def swarm_spent(self, b: Budget, node: str, own: Mapping[str, int]) -> int:
        spent = dict(self.spent.get(b.id, {}))
        spent[node] = max(spent.get(node, 0), own.get(f"{node}|{b.id}|$", 0))
        return sum(spent.values())

    def wants(self, b: Budget, me: str) -> dict[str, int]:
        return {n: v for n, v in self.want.get(b.id, {}).items() if n != me}

    def received(self, b: Budget, node: str) -> int:
        return sum(v for (_, to), v in self.given.get(b.id, {}).items() if to == node)


def prompt_fast_bound(raw_len: int, messages: int) -> int:
    """An upper bound on the prompt's tokens from the body's size alone.

    The JSON body holds every byte of prompt text (escaping only adds bytes),
    so its length bounds the text's UTF-8 bytes, and a token is at least one
    byte; chat templates add up to :data:`MESSAGE_OVERHEAD` tokens a message.
    """
    return REQUEST_OVERHEAD + MESSAGE_OVERHEAD * messages + raw_len


def prompt_bound(body: Mapping[str, Any]) -> int:
    """An upper bound on the prompt's tokens, from the request body alone."""
    total = REQUEST_OVERHEAD
    msgs = body.get("messages")
    if isinstance(msgs, list):
        for m in msgs:
            total += MESSAGE_OVERHEAD + _text_bytes(m)
    for field in ("prompt", "input", "instructions", "tools", "system"):
        if field in body:
            total += _text_bytes(body[field])
    return total


def _text_bytes(v: Any) -> int:
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, Mapping):
        return sum(_text_bytes(x) for x in v.values()) + sum(len(str(k)) for k in v)
    if isinstance(v, list | tuple):
        return sum(_text_bytes(x) for x in v) + (len(v) if v and isinstance(v[0], int) else 0)
    if isinstance(v, int | float):
        return 8
    return 0


def _window_of(key: str) -> str | None:
    parts = key.split("|")
    if len(parts) != 3:
        return None
    bid = parts[1].split(":")
    return bid[2] if len(bid) == 3 else None


def _valid(key: str, value: Any) -> bool:
    parts = key.split("|")
    return (len(parts) == 3 and bool(parts[0]) and parts[2][:1] in ("$", "?", ">")
            and _window_of(key) is not None)


def _keep(key: str, wall: float) -> bool:
    w = _window_of(key)
    return w is not None and retained(w, wall)


def escrow_spec() -> TableSpec:
    return TableSpec(ESCROW_TABLE, kind="max", max_entries=200_000, validate=_valid,
                     retain=_keep)

