"""The sans-IO router: load sharing, P2C under stale load, affinity, filters, retries."""

from __future__ import annotations

import heapq
import random
from collections import Counter, deque
from collections.abc import Callable

from swarmd.core.routing import (
    Candidate,
    EngineLoad,
    RequestFeatures,
    Router,
    RouterConfig,
    Target,
    affinity_key,
)

F = RequestFeatures("m")


def cands(n: int, **kw: object) -> list[Candidate]:
    return [Candidate(Target(f"n{i}", f"e{i}"), **kw) for i in range(n)]  # type: ignore[arg-type]


class Sim:
    """Engines with one slot each and a FIFO queue, on a virtual clock."""

    def __init__(self, service: list[float]) -> None:
        self.service = service
        self.busy_until = [0.0] * len(service)
        self.queue: list[deque[float]] = [deque() for _ in service]
        self.served = Counter[int]()

    def submit(self, i: int, now: float) -> float:
        """Completion time of a request sent to engine i at ``now`` (FIFO, 1 slot)."""
        start = max(now, self.busy_until[i])
        self.busy_until[i] = start + self.service[i]
        self.served[i] += 1
        return self.busy_until[i]


def run_sim(service: list[float], rate: float, n: int, pick: Callable[[float], int],
            done: Callable[[int, float, float], None], seed: int = 1) -> tuple[Sim, float]:
    """Poisson arrivals at ``rate``; returns the sim and the mean latency."""
    rng = random.Random(seed)
    sim = Sim(service)
    events: list[tuple[float, int, int, float]] = []  # (finish, seq, engine, started)
    now, total = 0.0, 0.0
    for k in range(n):
        now += rng.expovariate(rate)
        while events and events[0][0] <= now:
            fin, _, i, st = heapq.heappop(events)
            done(i, st, fin)
        i = pick(now)
        fin = sim.submit(i, now)
        total += fin - now
        heapq.heappush(events, (fin, k, i, now))
    return sim, total / n


def test_faster_engines_get_proportionally_more() -> None:
    service = [0.05, 0.1, 0.2]  # rates 20, 10, 5 per second: shares 4/7, 2/7, 1/7
    cs = cands(3)
    router = Router(RouterConfig(), random.Random(7))

    def pick(now: float) -> int:
        t = router.choose(F, cs, now).targets[0]
        router.start(t, now)
        return int(t.engine_id[1:])

    def done(i: int, started: float, fin: float) -> None:
        router.finish(cs[i].target)
        router.observe(cs[i].target, fin - started, True, fin)

    sim, _ = run_sim(service, rate=0.7 * 35, n=4000, pick=pick, done=done)
    share = [sim.served[i] / 4000 for i in range(3)]
    assert share[0] > share[1] > share[2]
    # Proportional to speed within a tolerance (ideal 0.571, 0.286, 0.143).
    assert abs(share[0] - 4 / 7) < 0.1, share
    assert abs(share[1] - 2 / 7) < 0.08, share
    assert abs(share[2] - 1 / 7) < 0.08, share


def test_p2c_beats_random_under_stale_load() -> None:
    """Ten routers (nodes) share 8 engines; gossiped load is refreshed every
    second (one service time: LLM requests take seconds, load gossips every
    ~2 s).  Each router knows only its own in-flight requests fresh.  (When
    gossip is 10x staler than a service time, P2C on it falls below random:
    Mitzenmacher, "How useful is old information?", 2000.)"""
    service = [1.0] * 8
    nodes = 10
    # Engines here queue internally (no swarmd queue): allow 8 per slot.
    routers = [Router(RouterConfig(max_queue_per_slot=8.0), random.Random(i))
               for i in range(nodes)]
    gossip = [0] * 8  # outstanding per engine at the last refresh
    last_refresh = [0.0]
    outstanding = [0] * 8
    owners: list[deque[int]] = [deque() for _ in range(8)]
    rr = [0]

    def view() -> list[Candidate]:
        return [Candidate(Target(f"n{i}", "e"), load=EngineLoad(running=gossip[i], capacity=1))
                for i in range(8)]

    def pick(now: float) -> int:
        if now - last_refresh[0] >= 1.0:
            gossip[:] = outstanding
            last_refresh[0] = now
        k = rr[0] % nodes
        rr[0] += 1
        t = routers[k].choose(F, view(), now).targets[0]
        routers[k].start(t, now)
        i = int(t.node_id[1:])
        outstanding[i] += 1
        owners[i].append(k)  # FIFO engines finish in arrival order
        return i

    def done(i: int, started: float, fin: float) -> None:
        outstanding[i] -= 1
        t = Target(f"n{i}", "e")
        r = routers[owners[i].popleft()]
        r.finish(t)
        r.observe(t, fin - started, True, fin)

    _, p2c = run_sim(service, rate=0.85 * 8, n=3000, pick=pick, done=done)
    rng = random.Random(3)
    _, rnd = run_sim(service, rate=0.85 * 8, n=3000, pick=lambda now: rng.randrange(8),
                     done=lambda i, s, f: None)
    assert p2c < rnd * 0.7, (p2c, rnd)


def test_p2c_spreads_fresh_routers_over_equal_stale_view() -> None:
    """Many routers with the same stale view: best-score would all pick one
    target (herding); P2C spreads them."""
    view = cands(8, load=EngineLoad(running=0, capacity=1))
    view[3] = Candidate(Target("n3", "e3"), load=EngineLoad(running=0, capacity=1, kv_cache=0.0))
    firsts = Counter(
        Router(RouterConfig(), random.Random(s)).choose(F, view, 0.0).targets[0] for s in range(200)
    )
    assert len(firsts) >= 6  # P2C spreads fresh routers over most targets
    assert max(firsts.values()) < 200 * 0.3


def test_affinity_sticks_until_loaded_then_spills() -> None:
    cs = cands(5, load=EngineLoad(capacity=2))
    router = Router(RouterConfig(spill_load=0.8), random.Random(1))
    body = {"model": "m", "messages": [{"role": "system", "content": "You are terse."},
                                       {"role": "user", "content": "hello"}]}
    key = affinity_key("/v1/chat/completions", body)
    assert key is not None
    feat = RequestFeatures("m", key)
    first = router.choose(feat, cs, 0.0)
    assert first.via_affinity
    home = first.targets[0]
    # A repeated prefix goes to the same engine while it is not loaded.
    for _ in range(20):
        d = router.choose(feat, cs, 0.0)
        assert d.targets[0] == home
    # Load it to 1 of 2 slots (0.5 <= 0.8): still home.
    router.start(home, 0.0)
    assert router.choose(feat, cs, 0.0).targets[0] == home
    # 2 of 2 (1.0 > 0.8): spills to the next HRW target, stably.
    router.start(home, 0.0)
    spilled = {router.choose(feat, cs, 0.0).targets[0] for _ in range(10)}
    assert home not in spilled and len(spilled) == 1
    # Load finished: back home.
    router.finish(home)
    router.finish(home)
    assert router.choose(feat, cs, 0.0).targets[0] == home
    # A different conversation hashes elsewhere for at least some prefixes.
    homes = set()
    for k in range(20):
        b = {"model": "m", "messages": [{"role": "user", "content": f"q{k}"}]}
        f = RequestFeatures("m", affinity_key("/v1/chat/completions", b))
        homes.add(router.choose(f, cs, 0.0).targets[0])
    assert len(homes) >= 3


def test_affinity_key_uses_leading_messages_then_user() -> None:
    base = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"}]
    a = affinity_key("/v1/chat/completions", {"messages": base})
    b = affinity_key("/v1/chat/completions",
                     {"messages": [*base, {"role": "assistant", "content": "x"},
                                   {"role": "user", "content": "u2"}]})
    assert a == b  # later turns of the same conversation
    c = affinity_key("/v1/chat/completions", {"messages": [base[0], {"role": "user", "content": "o"}]})
    assert c != a
    assert affinity_key("/v1/completions", {"prompt": "abc"}) == affinity_key(
        "/v1/completions", {"prompt": ["abc", "zzz"]})
    assert affinity_key("/v1/embeddings", {"input": "x", "user": "u"}) is None
    assert affinity_key("/v1/chat/completions", {"messages": [], "user": "bob"}) is not None
    assert affinity_key("/v1/chat/completions", {"messages": "junk"}) is None


def test_draining_and_unhealthy_excluded() -> None:
    cs = cands(4)
    cs[0] = Candidate(cs[0].target, draining=True)
    cs[1] = Candidate(cs[1].target, healthy=False)
    router = Router(rng=random.Random(0))
    for _ in range(50):
        d = router.choose(F, cs, 0.0)
        assert set(d.targets) == {cs[2].target, cs[3].target}
    only_bad = [cs[0], cs[1]]
    d = router.choose(F, only_bad, 0.0)
    assert d.status == "unavailable" and d.targets == () and d.retry_after > 0
    assert router.choose(F, [], 0.0).status == "no_candidates"


def test_saturated_by_gossip_or_refusal() -> None:
    cs = [Candidate(Target("a", "e"), load=EngineLoad(running=4, waiting=32, capacity=4)),
          Candidate(Target("b", "e"), load=EngineLoad(running=1, capacity=4))]
    router = Router(RouterConfig(max_queue_per_slot=8.0), random.Random(0))
    assert router.choose(F, cs, 0.0).targets == (cs[1].target,)
    router.refuse(cs[1].target, until=2.5)
    d = router.choose(F, cs, 1.0)
    assert d.status == "saturated" and abs(d.retry_after - 1.5) < 1e-9
    assert router.choose(F, cs, 3.0).targets == (cs[1].target,)


def test_retry_list_excludes_failed_target_and_circuit_opens() -> None:
    cs = cands(3)
    router = Router(RouterConfig(failure_threshold=2, cooldown_min=1.0), random.Random(5))
    d = router.choose(F, cs, 0.0)
    assert len(d.targets) == 3 and len(set(d.targets)) == 3
    bad = d.targets[0]
    # The API retries down the list: the failed target is never repeated.
    assert bad not in d.targets[1:]
    router.observe(bad, 0.01, False, 0.0)
    router.observe(bad, 0.01, False, 0.0)
    for _ in range(20):
        d2 = router.choose(F, cs, 0.5)
        assert d2.targets[-1] == bad and bad not in d2.targets[:-1]
    # After the cooldown it is back in the normal rotation.
    assert any(router.choose(F, cs, 2.0).targets[0] == bad for _ in range(50))
    router.observe(bad, 0.01, True, 2.0)
    assert router.latency(bad) == 0.01


def test_local_bonus_and_deterministic() -> None:
    cs = [Candidate(Target("me", "e"), is_local=True), Candidate(Target("far", "e"))]
    r1, r2 = Router(rng=random.Random(9)), Router(rng=random.Random(9))
    seq1 = [r1.choose(F, cs, 0.0).targets for _ in range(20)]
    seq2 = [r2.choose(F, cs, 0.0).targets for _ in range(20)]
    assert seq1 == seq2
    assert all(t[0].node_id == "me" for t in seq1)  # equal latency: local wins


def test_gossip_load_parse_is_tolerant() -> None:
    assert EngineLoad.from_record({"running": "x", "waiting": -1, "kv_cache": 3,
                                   "capacity": 0}) == EngineLoad()
    assert EngineLoad.from_record(None) == EngineLoad()
    assert EngineLoad.from_record({"running": 2, "kv_cache": 0.5, "capacity": 8}) == EngineLoad(
        running=2, kv_cache=0.5, capacity=8)


def test_affinity_homes_are_shared_in_proportion_to_capacity() -> None:
    caps = [8, 4, 4, 2]
    cs = [Candidate(Target(f"n{i}", f"e{i}"), load=EngineLoad(capacity=c))
          for i, c in enumerate(caps)]
    router = Router(RouterConfig(), random.Random(3))
    homes: Counter[str] = Counter()
    n = 4000
    for k in range(n):
        b = {"model": "m", "messages": [{"role": "user", "content": f"conversation {k}"}]}
        d = router.choose(RequestFeatures("m", affinity_key("/v1/chat/completions", b)), cs, 0.0)
        assert d.via_affinity
        homes[d.targets[0].engine_id] += 1
    for i, c in enumerate(caps):
        assert abs(homes[f"e{i}"] / n - c / sum(caps)) < 0.03, homes
