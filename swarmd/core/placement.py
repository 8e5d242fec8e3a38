"""Placement: which nodes run which deployed models, as a pure function of the swarm.

Theory of operation
-------------------
The coordinator (the lease holder) calls :func:`place` with the deployments
(:class:`Deployment`: model, replicas or everywhere, GPU or not, context,
slots), its view of the nodes (:class:`NodeView`: devices from
:func:`swarmd.core.fit.devices_of`, the models each holds complete, alive,
draining), the current assignments (the replicated table) and each model's
:class:`~swarmd.core.fit.Need`.  Rules, in order (protocol/placement.md):

1. **Keep.**  A current assignment stays where it is while its node is
   alive, not draining, has not reported the engine failed, its device
   still suits the deployment (engine kind, ``gpu``), and the model
   still fits the device *by capacity*: the sum of the reserves (need +
   margin) committed to the device is at most its total memory.  Live load
   is not consulted for an assignment that exists, so no load change --
   memory included -- ever moves a replica (no flapping, no hysteresis
   band to tune).  Models are kept in name order; a deployment whose
   replica count went down keeps its oldest replicas.
2. **Place** what is missing, biggest need first (first-fit decreasing),
   fixed-replica deployments before ``everywhere`` ones.  A new replica goes
   to a device whose *budget* holds its reserve, where the budget is
   ``min(total - every reserve committed there, free - reserves of engines
   not up yet)``: the live free memory already counts engines that run
   (:attr:`NodeView.running`), not those placed this round or still
   fetching and loading.  Among the devices it fits, in order: GPU before
   RAM (unless ``gpu`` says which), a node that already holds the files,
   then **best fit** (the least budget left), then the older node
   (``started``), then node id.  Replicas of a model go to distinct nodes.
3. **Say why** a model is short of replicas: its need, broken down, and the
   largest free memory (GPU and RAM) of the nodes that could have taken it.

Best fit rather than worst fit: with mixed devices (8/24/80 GiB GPUs)
spreading small models over the largest free devices leaves no device able
to take a large model later; best fit keeps big devices whole, as
bin-packing does, and replicas are spread over machines by the
distinct-node rule anyway.  ``policy="worst"`` is there for swarms that
prefer headroom everywhere.

Everything is sorted by explicit keys (model name, node id, device id), so
the same input gives the same output on any coordinator.

The result goes into the ``placements`` table in the one entry format of
:mod:`swarmd.core.deployments` (``{"nodes": [...], "epoch": n, "reason":
str}``, ranked by epoch; :func:`~swarmd.core.deployments.needs_write` says
which entries a coordinator rewrites), built by
:func:`swarmd.engines.placing.compute`.  :attr:`Placement.devices` and
:attr:`Placement.excluded` are not stored there: each node picks the device
on itself when it launches (:mod:`swarmd.engines.launching`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from swarmd.core.fit import (
    CPU,
    GPU_KINDS,
    Device,
    Need,
    Policy,
    allowed,
    nothing_fits,
)

__all__ = ["Deployment", "NodeView", "Placement", "eligible", "place"]


@dataclass(frozen=True)
class Deployment:
    model: str
    #: Replicas on distinct nodes; 0: every node it fits.
    replicas: int = 1
    #: True: GPU only; False: RAM only; None: GPU if one fits, else RAM.
    gpu: bool | None = None
    ctx: int = 0
    slots: int = 1

    @property
    def everywhere(self) -> bool:
        return self.replicas <= 0


@dataclass(frozen=True)
class NodeView:
    node_id: str
    devices: tuple[Device, ...]
    #: Models (names, aliases or digests) stored complete on the node.
    holds: frozenset[str] = frozenset()
    alive: bool = True
    draining: bool = False
    #: Start time (seconds): the older node wins a tie.
    started: float = 0.0
    #: Models whose engine on this node gave up (failed): not kept, not placed here.
    failed: frozenset[str] = frozenset()
    #: Models whose engine on this node is up, so that its memory is already out
    #: of the devices' free readings.  A kept assignment not listed (still
    #: fetching or loading) is subtracted from free memory too.
    running: frozenset[str] = frozenset()

    @property
    def usable(self) -> bool:
        return self.alive and not self.draining


@dataclass(frozen=True)
class Placement:
    #: Model -> node ids, kept replicas first.
    assignments: dict[str, tuple[str, ...]]
    #: Model -> why it has fewer replicas than asked (or none).
    unplaced: dict[str, str]
    epoch: int
    #: Model -> device id on each node, parallel to ``assignments``.
    devices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Everywhere deployments -> the nodes that could run it but do not.
    excluded: dict[str, tuple[str, ...]] = field(default_factory=dict)


def eligible(node: NodeView, need: Need, gpu: bool | None) -> bool:
    """Whether ``node`` could run the model at all (a device its engine runs on)."""
    return node.usable and any(allowed(need, d, gpu) for d in node.devices)


def gpu_ok(gpu: bool | None, kind: str) -> bool:
    return gpu is None or (kind != CPU) == gpu


class _Ask:
    """One deployment's need, precomputed per device kind."""

    __slots__ = ("dep", "need", "res", "kinds", "tiers", "tier_of")

    def __init__(self, dep: Deployment, need: Need) -> None:
        self.dep, self.need = dep, need
        self.kinds = frozenset(k for k in need.kinds if gpu_ok(dep.gpu, k))
        self.res = {k: need.reserve(k) for k in self.kinds}
        gpus = tuple(k for k in GPU_KINDS if k in self.kinds)
        cpu = (CPU,) if CPU in self.kinds else ()
        self.tiers = [t for t in (gpus, cpu) if t]
        self.tier_of = {k: i for i, t in enumerate(self.tiers) for k in t}


class _Dev:
    __slots__ = ("node", "dev", "kind", "total", "free", "cap_used", "new_used", "budget",
                 "key", "idx")

    def __init__(self, node: NodeView, dev: Device, idx: int) -> None:
        self.node, self.dev, self.kind, self.idx = node, dev, dev.kind, idx
        self.total, self.free = dev.total_bytes, dev.free_bytes
        self.cap_used = self.new_used = 0
        self.budget = min(self.total, self.free)
        self.key: tuple[Any, ...] = ()


class _State:
    """Per-device budgets, and per kind the devices sorted by budget."""

    def __init__(self, nodes: Sequence[NodeView], policy: Policy) -> None:
        self.best = policy == "best"
        self.devs: list[_Dev] = []
        self.by_node: dict[str, list[_Dev]] = {}
        for n in nodes:
            lst = self.by_node.setdefault(n.node_id, [])
            for d in n.devices:
                lst.append(_Dev(n, d, len(self.devs)))
                self.devs.append(lst[-1])
        self.lists: dict[str, list[tuple[Any, ...]]] = {}

    def _key(self, d: _Dev) -> tuple[Any, ...]:
        return (d.budget if self.best else -d.budget, d.node.started, d.node.node_id, d.dev.id,
                d.idx)

    def index(self) -> None:
        for d in self.devs:
            d.key = self._key(d)
            self.lists.setdefault(d.kind, []).append(d.key)
        for lst in self.lists.values():
            lst.sort()

    def commit(self, d: _Dev, amount: int, pending: bool) -> None:
        d.cap_used += amount
        if pending:
            d.new_used += amount
        d.budget = min(d.total - d.cap_used, d.free - d.new_used)
        if d.key:
            lst = self.lists[d.kind]
            del lst[bisect.bisect_left(lst, d.key)]
            d.key = self._key(d)
            bisect.insort(lst, d.key)

    def rank(self, d: _Dev, left: int) -> tuple[Any, ...]:
        return (left if self.best else -left, d.node.started, d.node.node_id, d.dev.id)

    def first_in(self, kind: str, need: int, skip: set[str]) -> _Dev | None:
        """The first device of ``kind`` (in policy order) with ``need`` budget."""
        lst = self.lists.get(kind, [])
        if self.best:
            for key in lst[bisect.bisect_left(lst, (need,)):]:
                if key[2] not in skip:
                    return self.devs[key[4]]
            return None
        for key in lst:
            if -key[0] < need:
                return None
            if key[2] not in skip:
                return self.devs[key[4]]
        return None

    def largest(self, kind: str, skip: set[str]) -> _Dev | None:
        lst = self.lists.get(kind, [])
        for key in (reversed(lst) if self.best else lst):
            if key[2] not in skip:
                return self.devs[key[4]]
        return None

    def on_node(self, ask: _Ask, node_id: str, tier: tuple[str, ...],
                best: tuple[tuple[Any, ...], _Dev] | None) -> tuple[tuple[Any, ...], _Dev] | None:
        """``best`` or a better device of ``node_id`` in ``tier`` the ask fits."""
        for d in self.by_node.get(node_id, ()):
            if d.kind in tier:
                r = ask.res[d.kind]
                if d.budget >= r:
                    k = self.rank(d, d.budget - r)
                    if best is None or k < best[0]:
                        best = (k, d)
        return best


def _pick(state: _State, ask: _Ask, skip: set[str], holders: Sequence[str]) -> _Dev | None:
    """Where the next replica goes (rule 2's order), or None."""
    for tier in ask.tiers:
        best: tuple[tuple[Any, ...], _Dev] | None = None
        for node_id in holders:
            if node_id not in skip:
                best = state.on_node(ask, node_id, tier, best)
        if best is None:
            for kind in tier:
                c = state.first_in(kind, ask.res[kind], skip)
                if c is not None:
                    k = state.rank(c, c.budget - ask.res[kind])
                    if best is None or k < best[0]:
                        best = (k, c)
        if best is not None:
            return best[1]
    return None


def _pick_on(state: _State, ask: _Ask, node_id: str) -> _Dev | None:
    """The device of one node a new replica fits best (tier, then fit), or None."""
    best: tuple[tuple[int, int, str], _Dev] | None = None
    for d in state.by_node.get(node_id, ()):
        t = ask.tier_of.get(d.kind)
        if t is None or d.budget < ask.res[d.kind]:
            continue
        left = d.budget - ask.res[d.kind]
        k = (t, left if state.best else -left, d.dev.id)
        if best is None or k < best[0]:
            best = (k, d)
    return None if best is None else best[1]


def _keep(state: _State, node: NodeView, ask: _Ask, prefer: str | None) -> _Dev | None:
    """The device a kept replica stays on (capacity only), or None."""
    devs = [d for d in state.by_node.get(node.node_id, ()) if d.kind in ask.kinds]
    devs.sort(key=lambda d: (d.dev.id != prefer, not d.dev.gpu,
                             d.total - d.cap_used - ask.res[d.kind], d.dev.id))
    for d in devs:
        if d.cap_used + ask.res[d.kind] <= d.total:
            return d
    return None


def _why(state: _State, ask: _Ask, skip: set[str], placed: int, target: int,
         n_eligible: int) -> str:
    dep, rows = ask.dep, []
    for kind in sorted(ask.kinds):
        d = state.largest(kind, skip)
        if d is not None:
            rows.append((d.node.node_id, d.dev, max(0, d.budget)))
    if not dep.everywhere and placed and n_eligible <= placed:
        text = f"only {n_eligible} nodes can run it (each replica on its own node)"
    else:
        text = nothing_fits(ask.need, rows, dep.gpu)
    if dep.everywhere:
        return f"runs on {placed} of {target} nodes that could run it: {text}"
    return f"placed {placed} of {target} replicas: {text}" if placed else text


def place(deployments: Iterable[Deployment], nodes: Iterable[NodeView],
          current: Mapping[str, Sequence[str]], needs: Mapping[str, Need], epoch: int, *,
          current_devices: Mapping[str, Sequence[str]] | None = None,
          policy: Policy = "best") -> Placement:
    """The placement for ``epoch`` (see the module docstring for the rules)."""
    deps = {d.model: d for d in deployments}
    view: dict[str, NodeView] = {}
    for n in sorted(nodes, key=lambda n: n.node_id):
        view.setdefault(n.node_id, n)
    usable = [n for n in view.values() if n.usable]
    state = _State(usable, policy)
    holders: dict[str, list[str]] = {}
    failed: dict[str, set[str]] = {}
    node_kinds: dict[frozenset[str], list[str]] = {}
    for n in usable:
        for m in sorted(n.holds):
            holders.setdefault(m, []).append(n.node_id)
        for m in n.failed:
            failed.setdefault(m, set()).add(n.node_id)
        node_kinds.setdefault(frozenset(d.kind for d in n.devices), []).append(n.node_id)
    elig_cache: dict[frozenset[str], list[str]] = {}

    def eligible_ids(ask: _Ask) -> list[str]:
        if ask.kinds not in elig_cache:
            ids = [i for ks, lst in node_kinds.items() if ks & ask.kinds for i in lst]
            elig_cache[ask.kinds] = sorted(ids)
        return elig_cache[ask.kinds]

    out: dict[str, list[_Dev]] = {}
    asks: dict[str, _Ask] = {}
    unplaced: dict[str, str] = {}
    kept_unknown: dict[str, tuple[str, ...]] = {}
    targets: dict[str, int] = {}
    cdevs = current_devices or {}
    # 1. Keep.
    for model in sorted(deps):
        dep, need = deps[model], needs.get(model)
        cur = list(dict.fromkeys(current.get(model, ())))
        if need is None:
            keep = tuple(n for n in cur if n in view and view[n].usable)
            if keep:
                kept_unknown[model] = keep
            unplaced[model] = (f"size of {model} unknown (no manifest): "
                               + ("kept where it runs, not placed anew" if keep else "not placed"))
            continue
        ask = asks[model] = _Ask(dep, need)
        bad = failed.get(model, set())
        targets[model] = dep.replicas if not dep.everywhere else \
            sum(1 for i in eligible_ids(ask) if i not in bad)
        cd = list(cdevs.get(model, ()))
        prefer = dict(zip(cur, cd, strict=False)) if len(cd) == len(cur) else {}
        kept: list[_Dev] = []
        for node_id in cur:
            if len(kept) >= targets[model]:
                break
            node = view.get(node_id)
            if node is None or not node.usable or node_id in bad:
                continue
            d = _keep(state, node, ask, prefer.get(node_id))
            if d is not None:
                state.commit(d, ask.res[d.kind], pending=model not in node.running)
                kept.append(d)
        out[model] = kept
    # 2. Place.
    state.index()
    order = sorted(out, key=lambda m: (deps[m].everywhere, -max(asks[m].res.values(), default=0),
                                       m))
    excluded: dict[str, tuple[str, ...]] = {}
    for model in order:
        ask, placed = asks[model], out[model]
        skip = {d.node.node_id for d in placed} | failed.get(model, set())
        if ask.dep.everywhere:
            missed = []
            for node_id in eligible_ids(ask):
                if node_id in skip:
                    continue
                d = _pick_on(state, ask, node_id)
                if d is None:
                    missed.append(node_id)
                    continue
                state.commit(d, ask.res[d.kind], pending=True)
                placed.append(d)
            excluded[model] = tuple(missed)
        else:
            hs = holders.get(model, [])
            while len(placed) < targets[model]:
                d = _pick(state, ask, skip, hs)
                if d is None:
                    break
                state.commit(d, ask.res[d.kind], pending=True)
                placed.append(d)
                skip.add(d.node.node_id)
        if len(placed) < targets[model] or not targets[model]:
            bad = failed.get(model, set())
            n_elig = sum(1 for i in eligible_ids(ask) if i not in bad)
            unplaced[model] = _why(state, ask, skip, len(placed), targets[model], n_elig)
    assignments = {m: tuple(d.node.node_id for d in ds) for m, ds in out.items() if ds}
    devices = {m: tuple(d.dev.id for d in ds) for m, ds in sorted(out.items()) if ds}
    assignments.update(kept_unknown)
    return Placement(assignments=dict(sorted(assignments.items())),
                     unplaced=dict(sorted(unplaced.items())), epoch=epoch, devices=devices,
                     excluded=dict(sorted(excluded.items())))
