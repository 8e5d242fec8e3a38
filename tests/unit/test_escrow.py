"""Budgets by escrow (swarmd.core.escrow) and their enforcement (swarmd.api.limits).

The invariant is checked on a simulated swarm of :class:`Limits` objects whose
copies of the shares table are merged with random delays and partitions:
whatever the interleaving, spent + reserved over all nodes never exceeds the
budget, and transfers move shares to where the requests are.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from swarmd.api.errors import ApiError
from swarmd.api.limits import Limits
from swarmd.api.validate import ParsedRequest
from swarmd.config import LimitsSection
from swarmd.core import escrow
from swarmd.core.escrow import ESCROW_TABLE, Budget, budgets_of, mint, prompt_bound, rights
from swarmd.core.hlc import Stamp
from swarmd.core.keys import KeyInfo
from swarmd.core.replica import Entry, Table
from swarmd.usage.prices import Price, PriceBook

WALL = 1_790_000_000.0
KEY = KeyInfo(id="0123456789ab", name="k", hash="0" * 64, prefix="sk-swarm-0123", scopes=(
    "inference",), models=(), budget_tokens_day=10_000, holders=("a", "b", "c"))


def test_mint_splits_the_amount_exactly_among_holders() -> None:
    b = budgets_of(replace(KEY, budget_tokens_day=10_001), WALL)[0]
    assert [mint(b, n) for n in "abc"] == [3335, 3333, 3333]
    assert sum(mint(b, n) for n in "abcd") == 10_001 and mint(b, "d") == 0


def test_budgets_and_windows() -> None:
    k = replace(KEY, budget_usd_day=1.5, budget_usd_month=20.0)
    bs = {b.kind: b for b in budgets_of(k, WALL)}
    assert set(bs) == {"tok_d", "usd_d", "usd_m"}
    assert bs["usd_d"].amount == 1_500_000 and bs["usd_m"].amount == 20_000_000
    assert bs["tok_d"].window.startswith("d") and bs["usd_m"].window.startswith("m")
    assert bs["tok_d"].resets_at > WALL and bs["tok_d"].resets_at - WALL <= 86400
    assert escrow.window_start(bs["tok_d"].window) <= WALL < bs["tok_d"].resets_at


def _e(key: str, v: int) -> Entry:
    return Entry(key, Stamp(1, 0, "x"), (v,))


def test_rights_count_mint_transfers_and_spending() -> None:
    b = budgets_of(KEY, WALL)[0]
    bid = b.id
    t = {k: _e(k, v) for k, v in {f"a|{bid}|$": 1000, f"a|{bid}|>b": 500,
                                   f"c|{bid}|>b": 100, f"b|{bid}|$": 50}.items()}
    assert rights(b, "a", t) == 3334 - 1000 - 500
    assert rights(b, "b", t) == 3333 + 600 - 50
    assert rights(b, "c", t) == 3333 - 100
    assert rights(b, "d", t) == 0
    # our own counters win where they are ahead of the table
    assert rights(b, "a", t, {f"a|{bid}|$": 1200}) == 3334 - 1200 - 500
    assert escrow.swarm_spent(b, t) == 1050


def test_prompt_bound_is_an_upper_bound_on_text() -> None:
    body = {"messages": [{"role": "user", "content": "héllo wörld"}]}
    assert prompt_bound(body) >= len("héllo wörld".encode()) + 16
    assert prompt_bound({"input": [1, 2, 3]}) >= 3


class Swarm:
    """Limits objects over copies of one shares table, merged with delays."""

    def __init__(self, nodes: list[str], seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.tables = {n: Table(escrow.escrow_spec()) for n in nodes}
        self.cut: set[str] = set()
        self.pending: list[tuple[str, list[tuple[str, tuple[int, ...]]]]] = []
        self.limits = {n: self._limits(n, nodes) for n in nodes}

    def _limits(self, node: str, nodes: list[str]) -> Limits:
        def snapshot() -> Any:
            t = self.tables[node]
            alive = [SimpleNamespace(node_id=x, is_self=x == node, record={}) for x in nodes
                     if x not in self.cut or x == node]
            return SimpleNamespace(tables={ESCROW_TABLE: {e.key: e for e in t.entries()}},
                                   nodes=alive, alive=lambda: alive, coordinator=None)

        def write(table: str, items: list[tuple[str, tuple[int, ...]]]) -> None:
            for k, v in items:
                self.tables[node].merge(Entry(k, Stamp(1, 0, node), tuple(v)))
            self.pending.append((node, items))

        cfg = LimitsSection(default_max_tokens=200, borrow_wait=0.3, startup_hold=0.0)
        return Limits(node_id=node, config=cfg, prices=PriceBook([Price("m", 1.0, 2.0)]),
                      snapshot=snapshot, write_many=write)

    def gossip(self, fraction: float = 1.0) -> None:
        keep = []
        for src, items in self.pending:
            if self.rng.random() > fraction:
                keep.append((src, items))
                continue
            for dst, t in self.tables.items():
                if dst != src and (src in self.cut) == (dst in self.cut):
                    for k, v in items:
                        t.merge(Entry(k, Stamp(1, 0, src), tuple(v)))
            if src in self.cut:
                keep.append((src, items))  # delivered again after the heal
        self.pending = keep

    def spent(self) -> int:
        b = budgets_of(KEY, WALL)[0]
        return sum(lim.own.get(f"{n}|{b.id}|$", 0) for n, lim in self.limits.items())


def _req(text: str, max_tokens: int | None = None) -> ParsedRequest:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return ParsedRequest(route="/v1/chat/completions", body=body, raw=json.dumps(body).encode(),
                         model="m", requested_model="m", stream=False)


def _pin_wall(s: Swarm) -> None:
    for lim in s.limits.values():
        lim._wall = lambda: WALL


async def _client(s: Swarm, node: str, rng: random.Random, stats: dict[str, int],
                  requests: int = 40) -> None:
    lim = s.limits[node]
    principal = {"key": KEY}
    for _ in range(requests):
        try:
            hold = await lim.admit(principal, _req("x" * rng.randint(1, 50),
                                                   rng.choice([None, 20, 100])))
        except ApiError as err:
            assert err.status == 429 and err.code == "insufficient_quota"
            stats["refused"] += 1
            await asyncio.sleep(0.01)
            continue
        assert hold is not None
        await asyncio.sleep(rng.random() * 0.01)
        body = json.loads(hold.raw) if hold.raw else {}
        cap = body.get("max_tokens", 100)
        hold.settle(rng.randint(1, 40), rng.randint(0, cap), True)  # engine honours max_tokens
        stats["ok"] += 1


async def _upkeep(s: Swarm, stop: asyncio.Event, fraction: float) -> None:
    while not stop.is_set():
        for lim in s.limits.values():
            lim.watch_budgets({KEY.id: KEY})
            lim.give()
            lim.flush()
        s.gossip(fraction)
        b = budgets_of(KEY, WALL)[0]
        inflight = sum(lim.reserved[b.id] for lim in s.limits.values())
        assert s.spent() + inflight <= KEY.budget_tokens_day  # the invariant, at every step
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("partition", [False, True])
def test_fifty_clients_on_three_nodes_never_overspend(partition: bool) -> None:
    s = Swarm(["a", "b", "c"], seed=3)
    _pin_wall(s)
    stats = {"ok": 0, "refused": 0}

    async def main() -> None:
        stop = asyncio.Event()
        up = asyncio.ensure_future(_upkeep(s, stop, 0.5))
        rng = random.Random(7)
        clients = [asyncio.ensure_future(_client(s, "abc"[i % 3], random.Random(rng.random()),
                                                 stats)) for i in range(50)]
        if partition:
            await asyncio.sleep(0.05)
            s.cut = {"c"}
            await asyncio.sleep(0.3)
            s.cut = set()
        await asyncio.gather(*clients)
        stop.set()
        await up

    asyncio.run(main())
    assert s.spent() <= KEY.budget_tokens_day
    assert stats["ok"] > 0 and stats["refused"] > 0
    # the budget was actually used, not stranded: most of it went to requests
    assert s.spent() > 0.6 * KEY.budget_tokens_day


def test_shares_move_to_the_node_with_the_traffic() -> None:
    s = Swarm(["a", "b", "c"], seed=1)
    _pin_wall(s)
    stats = {"ok": 0, "refused": 0}

    async def main() -> None:
        stop = asyncio.Event()
        up = asyncio.ensure_future(_upkeep(s, stop, 1.0))
        await asyncio.gather(*[_client(s, "a", random.Random(i), stats) for i in range(10)])
        stop.set()
        await up

    asyncio.run(main())
    b = budgets_of(KEY, WALL)[0]
    # node a alone spent far more than its own third: b and c gave it theirs,
    # and past half of the budget their kept quarters too (nothing stranded)
    assert s.limits["a"].own[f"a|{b.id}|$"] > 0.9 * KEY.budget_tokens_day
    assert s.limits["b"].stats["gave"] + s.limits["c"].stats["gave"] > 0


def _ask(s: Swarm, node: str, b: Budget, want: int, spent: int = 0) -> None:
    lim = s.limits[node]
    for tail, v in (("?", want), ("$", spent)):
        if v:
            lim.own[f"{node}|{b.id}|{tail}"] = v
            lim._dirty.add(f"{node}|{b.id}|{tail}")
    lim.flush()
    s.gossip()


def _answer_wants(s: Swarm, node: str, rounds: int) -> None:
    for _ in range(rounds):
        s.limits[node].watch_budgets({KEY.id: KEY})
        s.limits[node].give()
        s.gossip()


def test_an_idle_node_keeps_a_quarter_until_half_the_budget_is_spent() -> None:
    """Liveness under a partition.  Node a's many clients reserve far more than it
    holds, so it asks for more than c's whole share while little is spent; idle c
    answers, round after round, but keeps a quarter of its mint.  Cut off then,
    c still serves the clients it gets next (before the floor, c gave all but a
    token of its share away and refused them)."""
    s = Swarm(["a", "b", "c"], seed=0)
    _pin_wall(s)
    b = budgets_of(KEY, WALL)[0]
    _ask(s, "a", b, want=KEY.budget_tokens_day, spent=2000)
    _answer_wants(s, "c", 40)
    c_rights = rights(b, "c", {}, s.limits["c"].own)
    assert s.limits["c"].stats["gave"] > 0
    assert mint(b, "c") // 4 <= c_rights < mint(b, "c") // 2

    s.cut = {"c"}
    late = {"ok": 0, "refused": 0}

    async def main() -> None:
        await asyncio.gather(*[_client(s, "c", random.Random(i), late, 4) for i in range(3)])

    asyncio.run(main())
    assert late["ok"] >= 3


def test_past_half_the_budget_an_idle_node_gives_its_quarter_too() -> None:
    """The floor lifts once half is spent, so one busy node can use the whole
    budget: nothing stays stranded on nodes with no traffic."""
    s = Swarm(["a", "b", "c"], seed=0)
    _pin_wall(s)
    b = budgets_of(KEY, WALL)[0]
    _ask(s, "a", b, want=KEY.budget_tokens_day, spent=KEY.budget_tokens_day // 2 + 1)
    _answer_wants(s, "c", 40)
    assert rights(b, "c", {}, s.limits["c"].own) <= 1
    # but a node whose own clients asked in the last KEEP_FOR seconds keeps its quarter
    s2 = Swarm(["a", "b", "c"], seed=0)
    _pin_wall(s2)
    _ask(s2, "a", b, want=KEY.budget_tokens_day, spent=KEY.budget_tokens_day // 2 + 1)
    s2.limits["c"]._last_local[b.id] = s2.limits["c"]._clock()
    _answer_wants(s2, "c", 40)
    assert rights(b, "c", {}, s2.limits["c"].own) >= mint(b, "c") // 4


def test_unknown_usage_is_charged_at_the_reservation_and_release_gives_it_back() -> None:
    s = Swarm(["a"], seed=2)
    _pin_wall(s)
    lim = s.limits["a"]
    b: Budget = budgets_of(KEY, WALL)[0]

    async def main() -> None:
        h = await lim.admit({"key": KEY}, _req("hello", 100))
        assert h is not None and lim.reserved[b.id] > 100
        worst = lim.reserved[b.id]
        h.settle(0, 0, False)
        assert lim.reserved[b.id] == 0 and lim.own[f"a|{b.id}|$"] == worst
        h2 = await lim.admit({"key": KEY}, _req("hello", 100))
        assert h2 is not None
        h2.release()
        assert lim.reserved[b.id] == 0 and lim.own[f"a|{b.id}|$"] == worst

    asyncio.run(main())


def test_rate_limits_refuse_with_retry_after() -> None:
    s = Swarm(["a"], seed=2)
    key = replace(KEY, budget_tokens_day=0, rpm=3)

    async def main() -> None:
        for _ in range(3):
            assert await s.limits["a"].admit({"key": key}, _req("hi")) is not None
        with pytest.raises(ApiError) as exc:
            await s.limits["a"].admit({"key": key}, _req("hi"))
        assert exc.value.status == 429 and exc.value.code == "rate_limit_exceeded"
        assert exc.value.retry_after is not None and exc.value.retry_after >= 1

    asyncio.run(main())


def test_a_key_without_limits_costs_nothing() -> None:
    s = Swarm(["a"])
    key = replace(KEY, budget_tokens_day=0)
    assert asyncio.run(s.limits["a"].admit({"key": key}, _req("hi"))) is None
    assert asyncio.run(s.limits["a"].admit({}, _req("hi"))) is None


def test_a_project_budget_binds_every_key_of_the_project() -> None:
    from swarmd.core.escrow import BUDGETS_TABLE, BudgetSpec

    s = Swarm(["a"], seed=4)
    _pin_wall(s)
    lim = s.limits["a"]
    spec = BudgetSpec("project", "demo", tokens_day=1000, warn=0.5, holders=("a",))
    budgets = {spec.key: Entry(spec.key, Stamp(1, 0, "a"), spec.value())}
    base = lim._snapshot

    def snap() -> Any:
        sn = base()
        return SimpleNamespace(tables={**sn.tables, BUDGETS_TABLE: budgets}, nodes=sn.nodes,
                               alive=sn.alive, coordinator=None)

    lim._snapshot = snap  # type: ignore[method-assign]
    k1 = replace(KEY, id="111111111111", budget_tokens_day=0, project="demo")
    k2 = replace(KEY, id="222222222222", budget_tokens_day=0, project="demo")
    warned: list[tuple[Budget, float]] = []
    lim.on_warn = lambda b, used: warned.append((b, used))

    async def main() -> int:
        spent = 0
        for i in range(40):
            key = k1 if i % 2 else k2
            try:
                h = await lim.admit({"key": key}, _req("hello", 20))
            except ApiError as err:
                assert err.code == "insufficient_quota" and "project demo" in err.message
                continue
            assert h is not None
            h.settle(10, 20, True)
            spent += 30
            lim.watch_budgets({k1.id: k1, k2.id: k2})
            lim.flush()
            lim.check_warnings()
        return spent

    spent = asyncio.run(main())
    # both keys drew from the one project budget, to within one reservation of it
    assert 1000 - 200 <= spent <= 1000
    assert len(warned) == 1 and warned[0][0].label == "project demo" and warned[0][1] >= 0.5


def test_budget_entries_are_checked() -> None:
    from swarmd.core.escrow import owner_of, parse_budget

    ok = {"tokens_day": 5, "usd_day": 1.5, "warn": 0.9, "holders": ["a"]}
    spec = parse_budget("user:ann", ok)
    assert spec is not None and spec.owner == owner_of("user", "ann") and len(spec.owner) == 12
    for key, bad in (("team:x", ok), ("user:", ok), ("user:a", {**ok, "tokens_day": -1}),
                     ("user:a", {**ok, "warn": 2}), ("user:a", {**ok, "tokens_day": 1.5}),
                     ("user:a", {**ok, "holders": "a"})):
        assert parse_budget(key, bad) is None, (key, bad)
