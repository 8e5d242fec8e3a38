"""Enforcing a key's rate limits and budgets on the request path (asyncio side).

Theory of operation
-------------------
:class:`Limits` is the proxy's admission hook (``Proxy.admission``): called
once the model is known, before routing.  For a key without limits it
returns at once.  Otherwise:

* **Rates** (``rpm``, ``tpm``, swarm-wide): this node keeps the key's
  requests and tokens of the last 60 s, publishes them in its gossiped
  record (``rates``, every ``[limits] rate_publish_interval``) and admits a
  request only if its own count plus what every other alive node last
  published stays within the limit.  Over it: 429 ``rate_limit_exceeded``
  naming the limit, with ``Retry-After`` when the oldest request leaves the
  window.  Peers' counts lag by a publication interval plus gossip, so a
  burst spread over N nodes can overshoot by what they admit in that lag.
* **Budgets** (tokens/day, USD/day, USD/month): the escrow rules of
  :mod:`swarmd.core.escrow`.  The request's worst case (prompt bound +
  ``max_tokens``, capped by the proxy so it cannot exceed it) must fit this
  node's rights; it is reserved, then settled at the real usage when the
  exchange closes (:class:`Hold`).  Short of rights, the node raises its
  ``want`` slot and waits up to ``[limits] borrow_wait`` for peers to give
  it some; nodes with spare rights answer wants every :data:`GIVE_EVERY`
  seconds with transfers.  When the swarm as a whole has too little left:
  429 ``insufficient_quota`` naming the budget and when it resets.

This node's own slots (spent, given, want) are authoritative here and
written to the replicated ``escrow`` table through the node machine
(``write_many``) every :data:`FLUSH_EVERY` seconds, and at once after a
transfer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from swarmd.api.errors import ApiError
from swarmd.api.validate import ParsedRequest
from swarmd.config import LimitsSection
from swarmd.core import escrow
from swarmd.core.escrow import BUDGETS_TABLE, ESCROW_TABLE, Budget
from swarmd.core.keys import KeyInfo
from swarmd.core.replica import Entry
from swarmd.core.snapshot import Snapshot
from swarmd.usage.prices import PriceBook

log = logging.getLogger("swarmd.limits")

FLUSH_EVERY = 1.0
GIVE_EVERY = 0.25
RATE_WINDOW = 60.0
#: Seconds after its last local request during which a node keeps part of its share.
KEEP_FOR = 60.0
MAX_RATE_KEYS = 256

WriteMany = Callable[[str, list[tuple[str, tuple[int, ...]]]], None]


class _RateWindow:
    """A key's requests of the last minute on this node, with a running token sum."""

    __slots__ = ("q", "tokens")

    def __init__(self) -> None:
        self.q: collections.deque[tuple[float, int]] = collections.deque()
        self.tokens = 0

    def __len__(self) -> int:
        return len(self.q)

    def oldest(self) -> float:
        return self.q[0][0]

    def trim(self, cut: float) -> None:
        q = self.q
        while q and q[0][0] <= cut:
            self.tokens -= q.popleft()[1]

    def add(self, t: float, tokens: int) -> None:
        self.q.append((t, tokens))
        self.tokens += tokens

    def fix_last(self, used: int) -> None:
        if self.q:
            t, old = self.q.pop()
            self.q.append((t, used))
            self.tokens += used - old


class Hold:
    """One admitted request's reservations (a :class:`swarmd.api.usage.Ticket`)."""

    def __init__(self, limits: Limits, info: KeyInfo, model: str,
                 reserved: list[tuple[Budget, int]], raw: bytes | None) -> None:
        self._limits = limits
        self._info = info
        self._model = model
        self._reserved = reserved
        self.raw = raw
        self._done = False

    def settle(self, prompt_tokens: int, completion_tokens: int, known: bool) -> None:
        if self._done:
            return
        self._done = True
        self._limits._settle(self._info, self._model, self._reserved, prompt_tokens,
                             completion_tokens, known)

    def release(self) -> None:
        if self._done:
            return
        self._done = True
        self._limits._release(self._reserved)


class Limits:
    def __init__(self, *, node_id: str, config: LimitsSection, prices: PriceBook,
                 snapshot: Callable[[], Snapshot], write_many: WriteMany,
                 publish_rates: Callable[[dict[str, list[int]]], None] | None = None,
                 wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id
        self.config = config
        self.prices = prices
        self._snapshot = snapshot
        self._write_many = write_many
        self._publish_rates = publish_rates
        self._wall = wall
        self._clock = clock
        self._started = clock()
        #: Our own slots of the escrow table: key -> cumulative value.
        self.own: dict[str, int] = {}
        self._dirty: set[str] = set()
        self.reserved: dict[str, int] = collections.defaultdict(int)
        self._budgets: dict[str, Budget] = {}  # budgets seen lately, by id
        self._rates: dict[str, _RateWindow] = {}
        self._published: dict[str, list[int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._bcache: dict[str, tuple[int, KeyInfo, list[Budget], object]] = {}
        self._warned: set[str] = set()
        self._last_local: dict[str, float] = {}
        self._hooked: set[str] = set()
        #: Called once per budget window when its swarm-wide use passes its
        #: warn fraction: (budget, fraction used).
        self.on_warn: Callable[[Budget, float], None] | None = None
        #: Like on_warn, but only while this node is the coordinator (webhooks).
        self.on_hook: Callable[[Budget, float], None] | None = None
        self._idx = escrow.EscrowIndex({})
        self._idx_table: object = None
        self._was_caught_up = False
        self.stats = {"admitted": 0, "rate_limited": 0, "over_budget": 0, "borrowed": 0,
                      "gave": 0, "capped": 0}

    # -- admission ----------------------------------------------------------------

    async def admit(self, principal: Mapping[str, Any], p: ParsedRequest) -> Hold | None:
        info = principal.get("key")
        if not isinstance(info, KeyInfo):
            return None
        wall = self._wall()
        budgets = self._budgets_of(info, wall)
        if not (info.rpm or info.tpm or budgets):
            return None
        body = p.body
        asked = _max_tokens(body)
        gen = asked if asked is not None else (
            0 if p.route == "/v1/embeddings" else self.config.default_max_tokens)
        msgs = body.get("messages")
        prompt = escrow.prompt_fast_bound(len(p.raw), len(msgs) if isinstance(msgs, list) else 0)
        self._check_rates(info, prompt + gen)
        reserved: list[tuple[Budget, int]] = []
        try:
            for b in budgets:
                self._budgets[b.id] = b
                worst = self._worst(b, p.model, prompt, gen)
                await self._reserve(b, worst, info)
                reserved.append((b, worst))
        except BaseException:
            self._release(reserved)
            raise
        raw = None
        if budgets and asked is None and p.route != "/v1/embeddings":
            doc = dict(body)
            doc["max_tokens"] = gen  # the reservation covers this much, no more
            raw = json.dumps(doc).encode()
            self.stats["capped"] += 1
        self._count_rate(info, prompt + gen)
        self.stats["admitted"] += 1
        return Hold(self, info, p.model, reserved, raw)

    def _worst(self, b: Budget, model: str, prompt: int, gen: int) -> int:
        if b.kind == "tok_d":
            return prompt + gen
        return self.prices.worst_case_micro(model, prompt, gen)

    async def _reserve(self, b: Budget, worst: int, info: KeyInfo) -> None:
        if worst <= 0:
            return
        deadline = self._clock() + self.config.borrow_wait
        hold_until = self._started + self.config.startup_hold
        asked = False
        self._last_local[b.id] = self._clock()  # local demand: keep a quarter (see _keep)
        while True:
            idx = self._index()
            if self._clock() >= hold_until or self._caught_up():
                have = idx.rights(b, self.node_id, self.own) - self.reserved[b.id]
                if have >= worst:
                    self.reserved[b.id] += worst
                    if asked:
                        self.stats["borrowed"] += 1
                    return
                left = b.amount - idx.swarm_spent(b, self.node_id, self.own) - self.reserved[b.id]
                if left < worst:
                    self.stats["over_budget"] += 1
                    raise _quota_error(b, info, max(0, left), worst, self._wall())
                if not asked:
                    key = f"{self.node_id}|{b.id}|?"
                    self.own[key] = self.own.get(key, 0) + worst - max(0, have)
                    self._dirty.add(key)
                    self.flush()
                    asked = True
            if self._clock() >= deadline:
                self.stats["over_budget"] += 1
                raise ApiError(
                    429, f"this node's share of {_describe(b)} is spent and no other node "
                         f"gave it more within {self.config.borrow_wait:g} s; retry",
                    type="insufficient_quota", code="insufficient_quota", retry_after=1.0)
            await asyncio.sleep(0.02)

    def _budgets_of(self, info: KeyInfo, wall: float) -> list[Budget]:
        """The key's current budgets, its user's and its project's (cached per second)."""
        sec = int(wall)
        table = self._snapshot().tables.get(BUDGETS_TABLE, {})
        hit = self._bcache.get(info.id)
        if hit is not None and hit[0] == sec and hit[1] is info and hit[3] is table:
            return hit[2]
        bs = [dataclasses.replace(b, warn=self.config.warn)
              for b in escrow.budgets_of(info, wall)]
        for scope, name in (("user", info.user), ("project", info.project)):
            e = table.get(f"{scope}:{name}") if name else None
            spec = escrow.parse_budget(e.key, e.value) if e is not None and e.value else None
            if spec is not None:
                bs += spec.windows(wall)
        if len(self._bcache) > 10_000:
            self._bcache.clear()
        self._bcache[info.id] = (sec, info, bs, table)
        return bs

    def _index(self) -> escrow.EscrowIndex:
        table = self._table()
        if table is not self._idx_table:
            self._idx = escrow.EscrowIndex(table)
            self._idx_table = table
        return self._idx

    def _caught_up(self) -> bool:
        if self._was_caught_up:
            return True
        snap = self._snapshot()
        mine: Any = next((n.record.get("tables", {}) for n in snap.nodes if n.is_self), {})
        others = [n for n in snap.alive() if not n.is_self]
        if not others:
            self._was_caught_up = True
            return True
        want = mine.get(ESCROW_TABLE) if isinstance(mine, Mapping) else None
        self._was_caught_up = any(isinstance(n.record.get("tables"), Mapping)
                                  and n.record["tables"].get(ESCROW_TABLE) == want
                                  for n in others)
        return self._was_caught_up

    def _settle(self, info: KeyInfo, model: str, reserved: list[tuple[Budget, int]],
                prompt_tokens: int, completion_tokens: int, known: bool) -> None:
        for b, worst in reserved:
            self.reserved[b.id] -= worst
            if not known:
                cost = worst  # the engine did not say: charge the reservation
            elif b.kind == "tok_d":
                cost = prompt_tokens + completion_tokens
            else:
                cost = self.prices.cost_micro(model, prompt_tokens, completion_tokens)
            key = f"{self.node_id}|{b.id}|$"
            self.own[key] = self.own.get(key, 0) + cost
            self._dirty.add(key)
        if known and (info.tpm or info.rpm):
            self._fix_rate(info, prompt_tokens + completion_tokens)

    def _release(self, reserved: list[tuple[Budget, int]]) -> None:
        for b, worst in reserved:
            self.reserved[b.id] -= worst

    # -- rates --------------------------------------------------------------------

    def _window(self, info: KeyInfo) -> _RateWindow:
        w = self._rates.get(info.id)
        if w is None:
            w = self._rates[info.id] = _RateWindow()
        w.trim(self._clock() - RATE_WINDOW)
        return w

    def _others(self, key_id: str) -> tuple[int, int]:
        req = tok = 0
        for n in self._snapshot().alive():
            if n.is_self:
                continue
            r = n.record.get("rates")
            v = r.get(key_id) if isinstance(r, Mapping) else None
            if isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v):
                req += v[0]
                tok += v[1]
        return req, tok

    def _check_rates(self, info: KeyInfo, tokens: int) -> None:
        if not (info.rpm or info.tpm):
            return
        q = self._window(info)
        oreq, otok = self._others(info.id)
        retry = max(1.0, (q.oldest() + RATE_WINDOW - self._clock()) if len(q) else 1.0)
        if info.rpm and len(q) + oreq + 1 > info.rpm:
            self.stats["rate_limited"] += 1
            raise ApiError(429, f"rate limit of {info.rpm} requests per minute reached for key "
                                f"{info.prefix}...", code="rate_limit_exceeded",
                           retry_after=retry)
        if info.tpm and q.tokens + otok + tokens > info.tpm:
            self.stats["rate_limited"] += 1
            raise ApiError(429, f"rate limit of {info.tpm} tokens per minute reached for key "
                                f"{info.prefix}... (this request may use {tokens})",
                           code="rate_limit_exceeded", retry_after=retry)

    def _count_rate(self, info: KeyInfo, tokens: int) -> None:
        if info.rpm or info.tpm:
            self._window(info).add(self._clock(), tokens)

    def _fix_rate(self, info: KeyInfo, used: int) -> None:
        """Replace the newest estimate with the real token count."""
        w = self._rates.get(info.id)
        if w is not None:
            w.fix_last(used)

    def rates_doc(self) -> dict[str, list[int]]:
        out = {}
        cut = self._clock() - RATE_WINDOW
        for kid in list(self._rates)[:MAX_RATE_KEYS]:
            w = self._rates[kid]
            w.trim(cut)
            if len(w):
                out[kid] = [len(w), w.tokens]
            else:
                del self._rates[kid]
        return out

    # -- shares: flushing and giving ---------------------------------------------

    def _table(self) -> Mapping[str, Entry]:
        return self._snapshot().tables.get(ESCROW_TABLE, {})

    def load_own(self, spent: Mapping[str, int]) -> None:
        """This node's spending read back at start (e.g. from its usage records)."""
        for key, v in spent.items():
            if v > self.own.get(key, 0):
                self.own[key] = v
                self._dirty.add(key)

    def flush(self) -> None:
        if not self._dirty:
            return
        table = self._table()
        items: list[tuple[str, tuple[int, ...]]] = []
        for key in sorted(self._dirty):
            cur = table.get(key)
            v = max(self.own[key], int(cur.value[0]) if cur is not None else 0)
            self.own[key] = v
            items.append((key, (v,)))
        self._dirty.clear()
        self._write_many(ESCROW_TABLE, items)

    def give(self) -> int:
        """Answer other nodes' wants from our spare rights; returns transfers made."""
        idx = self._index()
        made = 0
        for bid, b in list(self._budgets.items()):
            if b.resets_at <= self._wall():
                del self._budgets[bid]
                continue
            for node, want in idx.wants(b, self.node_id).items():
                key = f"{self.node_id}|{bid}|>{node}"
                mine = max(self.own.get(key, 0), idx.given.get(bid, {}).get((self.node_id, node), 0))
                got = idx.received(b, node) - idx.given.get(bid, {}).get((self.node_id, node), 0) + mine
                outstanding = want - got
                if outstanding <= 0:
                    continue
                spare = (idx.rights(b, self.node_id, self.own) - self.reserved[bid]
                         - self._keep(b, idx))
                amount = min(outstanding, spare // 2 if spare > 1 else spare)
                if amount <= 0:
                    continue
                self.own[key] = mine + amount
                self._dirty.add(key)
                made += 1
        if made:
            self.stats["gave"] += made
            self.flush()
        return made

    def _keep(self, b: Budget, idx: escrow.EscrowIndex) -> int:
        """Rights a giver keeps for its own clients: a quarter of its minted share
        while less than half of the budget is spent swarm-wide (as this node
        sees it), or while its own clients asked for this budget in the last
        KEEP_FOR seconds; else 0.

        The first clause is the partition guarantee: an idle node cannot be
        drained by its neighbours' early traffic and then cut off with
        nothing for the clients it gets next.  Past half, the floor lifts, so
        one busy node can still reach the whole budget: before half, the
        others give it at least 3/4 of their mint, which with its own share
        is more than half of the amount.
        """
        quarter = escrow.mint(b, self.node_id) // 4
        if idx.swarm_spent(b, self.node_id, self.own) * 2 < b.amount:
            return quarter
        last = self._last_local.get(b.id)
        if last is None or self._clock() - last > KEEP_FOR:
            return 0
        return quarter

    def watch_budgets(self, infos: Mapping[str, KeyInfo]) -> None:
        """Track the current windows of every budget (so wants get answered)."""
        wall = self._wall()
        for info in infos.values():
            for b in self._budgets_of(info, wall):
                self._budgets.setdefault(b.id, b)

    def check_warnings(self) -> list[tuple[Budget, float]]:
        """Budgets whose swarm-wide use passed their warn fraction.

        ``on_warn`` hears each once per window on every node (a log line and
        a gauge); ``on_hook`` (the webhook) only on the coordinator, once per
        window there -- at least once in all: a new coordinator may repeat it.
        """
        idx = self._index()
        out = []
        snap = self._snapshot()
        coordinator = snap.coordinator is not None and snap.coordinator[0] == self.node_id
        for bid, b in self._budgets.items():
            if not b.warn or b.amount <= 0 or (bid in self._warned and (
                    bid in self._hooked or not coordinator)):
                continue
            used = idx.swarm_spent(b, self.node_id, self.own) / b.amount
            if used < b.warn:
                continue
            out.append((b, used))
            for seen, hook in ((self._warned, self.on_warn),
                               (self._hooked, self.on_hook if coordinator else None)):
                if bid in seen or (hook is None and seen is self._hooked):
                    continue
                seen.add(bid)
                if hook is not None:
                    try:
                        hook(b, used)
                    except Exception:
                        log.exception("budget warning hook failed")
        return out

    async def _run(self, keys: Callable[[], Mapping[str, KeyInfo]]) -> None:
        next_rates = next_flush = 0.0
        while True:
            await asyncio.sleep(GIVE_EVERY)
            try:
                self.watch_budgets(keys())
                self.check_warnings()
                self.give()  # flushes at once after a transfer or a want
                now = self._clock()
                if now >= next_flush:  # spending: others only estimate with it
                    next_flush = now + FLUSH_EVERY
                    self.flush()
                if self._publish_rates is not None and now >= next_rates:
                    next_rates = now + self.config.rate_publish_interval
                    doc = self.rates_doc()
                    if doc != self._published:
                        self._published = doc
                        self._publish_rates(doc)
            except Exception:
                log.exception("limits upkeep failed")

    def start(self, keys: Callable[[], Mapping[str, KeyInfo]]) -> None:
        self._tasks.append(asyncio.ensure_future(self._run(keys)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.flush()


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for f in ("max_completion_tokens", "max_tokens"):
        v = body.get(f)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _describe(b: Budget) -> str:
    what = {"tok_d": "tokens per day", "usd_d": "USD per day", "usd_m": "USD per month"}[b.kind]
    amount = f"{b.amount}" if b.kind == "tok_d" else f"{b.amount / 1e6:g}"
    return f"the budget of {amount} {what} of {b.label or 'key ' + b.key_id}"


def _quota_error(b: Budget, info: KeyInfo, left: int, worst: int, wall: float) -> ApiError:
    unit_left = f"{left}" if b.kind == "tok_d" else f"{left / 1e6:.6f}"
    unit_worst = f"{worst}" if b.kind == "tok_d" else f"{worst / 1e6:.6f}"
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b.resets_at))
    return ApiError(429, f"{_describe(b)} is used up: {unit_left} {b.unit} left, this request "
                         f"may use up to {unit_worst}; it resets at {reset}",
                    type="insufficient_quota", code="insufficient_quota",
                    retry_after=max(1.0, b.resets_at - wall))
