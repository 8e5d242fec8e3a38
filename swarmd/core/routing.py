"""Which engine serves a request: the sans-IO router.

Theory of operation
-------------------
The API handler asks :meth:`Router.choose` for an ordered list of targets
(first choice, then fallbacks for retries) among the *candidates*: every
engine in the swarm that serves the requested model, with what gossip says
about it (health, draining, load ``{running, waiting, kv_cache, capacity}``).
Gossiped load is seconds old, so it is blended with what this node knows
fresh: its own in-flight requests per target (:meth:`Router.start` /
:meth:`Router.finish`) and a latency EWMA per target (:meth:`Router.observe`).

Filters.  Unhealthy or draining candidates are dropped.  A candidate is
*saturated* when its engine recently refused a request (:meth:`Router.refuse`,
e.g. a 429 with Retry-After) or when its capacity is known and its outstanding
requests reach ``capacity * (1 + max_queue_per_slot)`` (by default: its
capacity); saturated candidates are dropped too, and when all are, the API
queues the request (:mod:`swarmd.api.waitqueue`).  A candidate whose last ``failure_threshold`` requests failed
has an open circuit (for a cooldown doubling from ``cooldown_min`` to
``cooldown_max``); it is not dropped but moved to the end of the list, so a
swarm whose every engine hiccupped still gets tried.

Score (lower is better; a guess at this request's completion time)::

    outstanding = max(our in-flight, gossiped running + waiting)
    score = latency * (1 + outstanding / slots) * (1 + kv_weight * kv_cache)
            * (local_bonus if the engine is on this node)

``latency`` is the target's EWMA of observed request durations in seconds
(the API reports the time from sending a request to its last byte; one number
per request, so a long generation counts as slow -- it evens out over many
requests).  A target never observed gets the mean of the known ones (or
``default_latency``), so new engines are tried.  ``slots`` is the capacity
when known, else 1.

Pick.  Power of two choices: two distinct eligible candidates drawn at
random, the lower score wins.  Unlike "best score", this does not send every
node's traffic to the one target that *looked* idle in the last gossip round
(herding on stale load), and it still avoids the worst targets.

Prefix affinity.  When the request has an affinity key (:func:`affinity_key`:
a hash of the model and the leading messages -- system prompt and first user
message -- or the prompt's start, or the ``user`` field), candidates are
ranked by rendezvous hashing (HRW) on that key, weighted by capacity (slots,
1 when unknown) so that an engine with twice the slots is home to twice the
conversations and spills no more often than a small one; the first of the top
``affinity_candidates`` whose load ``outstanding / slots`` is at most
``spill_load`` is chosen: repeated prefixes land on the engine whose KV cache
already holds them, and spill to the next HRW target (then to P2C) once it is
busy.  HRW keeps the mapping stable when engines come and go.

Everything is deterministic given the injected :class:`random.Random` and the
``now`` passed in; nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Candidate",
    "Decision",
    "EngineLoad",
    "RequestFeatures",
    "Router",
    "RouterConfig",
    "Target",
    "affinity_key",
]


@dataclass(frozen=True, order=True)
class Target:
    """One engine on one node."""

    node_id: str
    engine_id: str

    @property
    def key(self) -> str:
        return f"{self.node_id}/{self.engine_id}"


def _opt_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _opt_frac(v: Any) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0:
        return float(v)
    return None


@dataclass(frozen=True)
class EngineLoad:
    """An engine's load (protocol/records.md ``engines[].load``); None = unknown.

    One type end to end: an engine plugin returns it from ``Engine.load``,
    the engine manager gossips it (:meth:`as_record`), and routing reads it
    back from other nodes' records (:meth:`from_record`).
    """

    running: int | None = None
    waiting: int | None = None
    kv_cache: float | None = None
    capacity: int | None = None

    @classmethod
    def from_record(cls, raw: Any) -> EngineLoad:
        """Tolerant parse of a gossiped load dict: bad values become unknown."""
        if not isinstance(raw, Mapping):
            return cls()
        cap = _opt_int(raw.get("capacity"))
        return cls(
            running=_opt_int(raw.get("running")),
            waiting=_opt_int(raw.get("waiting")),
            kv_cache=_opt_frac(raw.get("kv_cache")),
            capacity=cap if cap else None,
        )

    def as_record(self) -> dict[str, Any]:
        return {"running": self.running, "waiting": self.waiting,
                "kv_cache": self.kv_cache, "capacity": self.capacity}


@dataclass(frozen=True)
class Candidate:
    target: Target
    kind: str = ""
    is_local: bool = False
    healthy: bool = True
    draining: bool = False
    load: EngineLoad = field(default_factory=EngineLoad)


@dataclass(frozen=True)
class RequestFeatures:
    model: str
    affinity: bytes | None = None


@dataclass(frozen=True)
class RouterConfig:
    #: Load (outstanding / slots) above which affinity spills (config routing.spill_load).
    spill_load: float = 0.8
    #: How many HRW-ranked targets affinity tries before falling back to P2C.
    affinity_candidates: int = 2
    #: Score multiplier for engines on this node (no forwarding hop).
    local_bonus: float = 0.9
    #: Weight of the KV-cache fill (0..1) in the score.
    kv_weight: float = 0.5
    #: EWMA weight of a new latency observation.
    ewma_alpha: float = 0.3
    #: Latency (s) assumed when nothing at all has been observed.
    default_latency: float = 1.0
    #: Full when outstanding >= capacity * (1 + this) (capacity known only).
    #: 0: an engine at capacity takes no more; the request waits in the
    #: receiving node's queue for the first slot that frees anywhere (the
    #: engine's own queue would pin it to that engine, and llama-cpp-python
    #: interrupts a running stream for a second request).
    max_queue_per_slot: float = 0.0
    #: Consecutive failures that open a target's circuit.
    failure_threshold: int = 3
    #: Circuit cooldown (s): min, doubling per further failure, up to max.
    cooldown_min: float = 1.0
    cooldown_max: float = 30.0
    #: Retry-After (s) suggested when every candidate is saturated / unavailable.
    saturated_retry_after: float = 1.0
    unavailable_retry_after: float = 5.0
    #: Targets not used for this long (s) are forgotten.
    forget_after: float = 600.0


DecisionStatus = Literal["ok", "no_candidates", "unavailable", "saturated"]


@dataclass(frozen=True)
class Decision:
    """The router's answer: targets in order of preference, or why there are none."""

    targets: tuple[Target, ...]
    status: DecisionStatus
    retry_after: float = 0.0
    via_affinity: bool = False
    #: Usable candidates left out because they are full (they may free up).
    full: int = 0


@dataclass
class _Stats:
    inflight: int = 0
    latency: float | None = None
    failures: int = 0
    open_until: float = -math.inf
    refused_until: float = -math.inf
    last_used: float = 0.0


def _hrw(key: bytes, target: Target, weight: float = 1.0) -> float:
    """Weighted rendezvous score (higher wins): ``-weight / ln(u)``, ``u`` in (0, 1)
    from a hash of key and target, so each target wins a share of keys
    proportional to its weight (Schindelhauer & Schomaker's weighted HRW)."""
    h = hashlib.blake2b(key + b"\x00" + target.key.encode(), digest_size=8)
    u = (int.from_bytes(h.digest(), "big") + 0.5) / 2.0**64
    return -weight / math.log(u)


class Router:
    """Routing state of one node: fresh in-flight counts and latency per target."""

    def __init__(self, config: RouterConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = config or RouterConfig()
        self.rng = rng or random.Random(0)
        self._stats: dict[Target, _Stats] = {}

    # -- bookkeeping -----------------------------------------------------------

    def _st(self, target: Target) -> _Stats:
        st = self._stats.get(target)
        if st is None:
            st = self._stats[target] = _Stats()
        return st

    def start(self, target: Target, now: float) -> None:
        """A request was sent to ``target``."""
        st = self._st(target)
        st.inflight += 1
        st.last_used = now

    def finish(self, target: Target) -> None:
        """A request to ``target`` ended (whatever the outcome)."""
        st = self._stats.get(target)
        if st is not None and st.inflight > 0:
            st.inflight -= 1

    def inflight(self, target: Target) -> int:
        st = self._stats.get(target)
        return st.inflight if st else 0

    def latency(self, target: Target) -> float | None:
        st = self._stats.get(target)
        return st.latency if st else None

    def observe(self, target: Target, latency: float, ok: bool, now: float) -> None:
        """Outcome of one request: its duration in seconds and whether it succeeded."""
        cfg = self.config
        st = self._st(target)
        st.last_used = now
        if ok:
            st.failures = 0
            st.open_until = -math.inf
            lat = max(0.0, latency)
            st.latency = lat if st.latency is None else (
                cfg.ewma_alpha * lat + (1 - cfg.ewma_alpha) * st.latency
            )
            return
        st.failures += 1
        if st.failures >= cfg.failure_threshold:
            n = st.failures - cfg.failure_threshold
            st.open_until = now + min(cfg.cooldown_max, cfg.cooldown_min * (2.0 ** min(n, 30)))

    def refuse(self, target: Target, until: float) -> None:
        """The engine said it is full (429 / queue full) until ``until``."""
        st = self._st(target)
        st.refused_until = max(st.refused_until, until)

    def forget(self, now: float) -> None:
        """Drop state of targets unused for ``forget_after`` seconds and idle."""
        cutoff = now - self.config.forget_after
        for t in [t for t, s in self._stats.items() if s.inflight == 0 and s.last_used < cutoff]:
            del self._stats[t]

    # -- scoring -----------------------------------------------------------------

    def outstanding(self, c: Candidate) -> int:
        gossip = (c.load.running or 0) + (c.load.waiting or 0)
        return max(self.inflight(c.target), gossip)

    def load_of(self, c: Candidate) -> float:
        return self.outstanding(c) / (c.load.capacity or 1)

    def _prior(self, candidates: Iterable[Candidate]) -> float:
        known = [s for c in candidates if (s := self.latency(c.target)) is not None]
        return sum(known) / len(known) if known else self.config.default_latency

    def score(self, c: Candidate, prior: float) -> float:
        cfg = self.config
        lat = self.latency(c.target)
        s = (lat if lat is not None else prior) * (1.0 + self.load_of(c))
        s *= 1.0 + cfg.kv_weight * (c.load.kv_cache or 0.0)
        if c.is_local:
            s *= cfg.local_bonus
        return s

    def _saturated(self, c: Candidate, now: float) -> bool:
        st = self._stats.get(c.target)
        if st is not None and st.refused_until > now:
            return True
        cap = c.load.capacity
        if not cap:
            return False
        return self.outstanding(c) >= cap * (1.0 + self.config.max_queue_per_slot)

    # -- the decision ------------------------------------------------------------------

    def choose(
        self, features: RequestFeatures, candidates: Sequence[Candidate], now: float
    ) -> Decision:
        """Targets for one request, best first; retries walk down the list."""
        cfg = self.config
        if len(self._stats) > 4096:
            self.forget(now)
        if not candidates:
            return Decision((), "no_candidates")
        usable = [c for c in candidates if c.healthy and not c.draining]
        if not usable:
            return Decision((), "unavailable", cfg.unavailable_retry_after)
        open_, closed, saturated = [], [], []
        for c in usable:
            if self._saturated(c, now):
                saturated.append(c)
            elif self._stats.get(c.target, _Stats()).open_until > now:
                open_.append(c)
            else:
                closed.append(c)
        if not closed and not open_:
            waits = [
                s.refused_until - now
                for c in saturated
                if (s := self._stats.get(c.target)) is not None and s.refused_until > now
            ]
            ra = min(waits) if waits else cfg.saturated_retry_after
            return Decision((), "saturated", max(ra, 0.001))
        prior = self._prior(usable)
        scores = {c.target: self.score(c, prior) for c in closed}
        first: Candidate | None = None
        via_affinity = False
        if features.affinity is not None and closed:
            key = features.model.encode() + b"\x00" + features.affinity
            ranked = sorted(closed, key=lambda c: _hrw(key, c.target, c.load.capacity or 1),
                            reverse=True)
            for c in ranked[: max(1, cfg.affinity_candidates)]:
                if self.load_of(c) <= cfg.spill_load:
                    first, via_affinity = c, True
                    break
        if first is None and closed:
            if len(closed) == 1:
                first = closed[0]
            else:
                a, b = self.rng.sample(closed, 2)
                first = a if scores[a.target] <= scores[b.target] else b
        rest = sorted(
            (c for c in closed if c is not first), key=lambda c: (scores[c.target], c.target)
        )
        tail = sorted(open_, key=lambda c: (self._st(c.target).open_until, c.target))
        ordered = ([first] if first is not None else []) + rest + tail
        return Decision(tuple(c.target for c in ordered), "ok", 0.0, via_affinity,
                        full=len(saturated))


# -- request features ------------------------------------------------------------------

#: Characters of a completion prompt hashed for affinity.
PROMPT_PREFIX_CHARS = 2048


def _canon(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


def affinity_key(route: str, body: Mapping[str, Any], n_messages: int = 2) -> bytes | None:
    """A stable key for prefix affinity, or None when the request has no prefix.

    Chat: the first ``n_messages`` messages (typically the system prompt and
    the first user message -- constant over a conversation's turns).
    Completions: the first PROMPT_PREFIX_CHARS of the prompt (the first one
    if a list).  Otherwise the ``user`` field when given.  Embeddings never
    use affinity (no KV cache to reuse).
    """
    if route.endswith("/embeddings"):
        return None
    part: Any = None
    if route.endswith("/chat/completions"):
        msgs = body.get("messages")
        if isinstance(msgs, list) and msgs and n_messages > 0:
            part = ["m", msgs[:n_messages]]
    elif route.endswith("/completions"):
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt:
            prompt = prompt[0] if not isinstance(prompt[0], int) else prompt[:512]
        if isinstance(prompt, str) and prompt:
            part = ["p", prompt[:PROMPT_PREFIX_CHARS]]
        elif isinstance(prompt, list) and prompt:
            part = ["t", prompt]
    if part is None:
        user = body.get("user")
        if isinstance(user, str) and user:
            part = ["u", user]
    if part is None:
        return None
    return hashlib.sha256(_canon(part)).digest()[:16]
