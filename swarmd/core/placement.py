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

The table (``placements``, one LWW entry per model, :func:`encode`):
``{"nodes": [...], "devices": [...], "epoch": n, "reason": str}``, or for an
``everywhere`` deployment ``{"every": true, "except": [...], "epoch": n}``
(every node that can run it except those; a list of 1,000 node ids would not
fit an entry).  :func:`decode_entry` reads one as untrusted input.  Every
entry carries the lease epoch of the coordinator that wrote it; a node acts
only on entries whose epoch is the highest it has seen (:func:`accept`), and
a coordinator rewrites every entry of an older epoch (:func:`changes`), so
after a coordinator change the newer epoch wins everywhere.
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
from swarmd.core.replica import TableSpec

__all__ = ["PLACEMENTS_TABLE", "Deployment", "NodeView", "Placement", "TableEntry", "accept",
           "changes", "current_from_table", "decode_entry", "encode", "encode_entry",
           "eligible", "place", "placements_spec"]

PLACEMENTS_TABLE = "placements"
#: Bounds on a decoded entry (untrusted input).
MAX_LIST = 4096
MAX_ID = 256
MAX_REASON = 1024


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


# ----------------------------------------------------------------------- the table


def accept(current_epoch: int, incoming_epoch: int) -> bool:
    """Whether a node acts on an entry of ``incoming_epoch`` having seen ``current_epoch``."""
    return incoming_epoch >= current_epoch


@dataclass(frozen=True)
class TableEntry:
    """One decoded ``placements`` entry."""

    epoch: int
    nodes: tuple[str, ...] = ()
    #: Parallel to ``nodes``, or () when not given.
    devices: tuple[str, ...] = ()
    #: Everywhere: every node that can run it except ``excluded``.
    every: bool = False
    excluded: tuple[str, ...] = ()
    reason: str = ""

    def runs_on(self, node_id: str, can_run: bool = True) -> bool:
        """Whether ``node_id`` should run the model (``can_run``: the node has a
        device the model's engine runs on, for an everywhere entry)."""
        if self.every:
            return can_run and node_id not in self.excluded
        return node_id in self.nodes

    def device_on(self, node_id: str) -> str | None:
        if node_id in self.nodes and len(self.devices) == len(self.nodes):
            return self.devices[self.nodes.index(node_id)]
        return None


def encode_entry(p: Placement, model: str) -> dict[str, Any]:
    v: dict[str, Any] = {"epoch": p.epoch}
    if model in p.excluded:
        v["every"] = True
        v["except"] = list(p.excluded[model])
    else:
        v["nodes"] = list(p.assignments.get(model, ()))
        if p.devices.get(model):
            v["devices"] = list(p.devices[model])
    if model in p.unplaced:
        v["reason"] = p.unplaced[model][:MAX_REASON]
    return v


def encode(p: Placement) -> dict[str, dict[str, Any]]:
    """The table entries (model -> value) of a placement."""
    models = sorted({*p.assignments, *p.unplaced, *p.excluded})
    return {m: encode_entry(p, m) for m in models}


def _ids(v: Any) -> tuple[str, ...] | None:
    if not isinstance(v, list) or len(v) > MAX_LIST:
        return None
    if not all(isinstance(s, str) and 0 < len(s) <= MAX_ID for s in v):
        return None
    return tuple(dict.fromkeys(v)) if len(set(v)) != len(v) else tuple(v)


def decode_entry(raw: Any) -> TableEntry | None:
    """A table value read as untrusted input; None if malformed."""
    if not isinstance(raw, Mapping):
        return None
    epoch = raw.get("epoch")
    if type(epoch) is not int or not 0 <= epoch < 1 << 63:
        return None
    reason = raw.get("reason", "")
    if not isinstance(reason, str):
        return None
    every = raw.get("every", False)
    if every is True:
        ex = _ids(raw.get("except", []))
        if ex is None:
            return None
        return TableEntry(epoch, every=True, excluded=ex, reason=reason[:MAX_REASON])
    if every is not False:
        return None
    nodes = _ids(raw.get("nodes"))
    devs = _ids(raw.get("devices", [])) if "devices" in raw else ()
    if nodes is None:
        return None
    if devs is None or len(devs) != len(nodes):
        devs = ()
    return TableEntry(epoch, nodes=nodes, devices=devs, reason=reason[:MAX_REASON])


def current_from_table(entries: Mapping[str, TableEntry], nodes: Iterable[NodeView],
                       deployments: Iterable[Deployment], needs: Mapping[str, Need]
                       ) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """``(current, current_devices)`` for :func:`place` from decoded entries;
    an everywhere entry resolves to the nodes that can run it, less its exceptions."""
    deps = {d.model: d for d in deployments}
    ns = sorted(nodes, key=lambda n: n.node_id)
    cur: dict[str, tuple[str, ...]] = {}
    cdev: dict[str, tuple[str, ...]] = {}
    for model, e in entries.items():
        if not e.every:
            cur[model] = e.nodes
            if e.devices:
                cdev[model] = e.devices
            continue
        dep, need = deps.get(model), needs.get(model)
        if dep is None or need is None:
            continue
        ex = set(e.excluded)
        cur[model] = tuple(n.node_id for n in ns
                           if n.node_id not in ex and eligible(n, need, dep.gpu))
    return cur, cdev


def _same(a: TableEntry, b: TableEntry) -> bool:
    return (a.nodes, a.devices, a.every, set(a.excluded), bool(a.reason)) == \
        (b.nodes, b.devices, b.every, set(b.excluded), bool(b.reason))


def changes(table: Mapping[str, TableEntry], p: Placement) -> dict[str, dict[str, Any] | None]:
    """The writes that bring the table to ``p``: entries that differ or carry
    an older epoch, and None (a tombstone) for models no longer placed.
    Entries of a *newer* epoch are left alone (a newer coordinator wrote
    them).  A reason's text alone changing is not a write (free memory in it
    moves with load; the table would churn)."""
    out: dict[str, dict[str, Any] | None] = {}
    new = encode(p)
    for model, value in new.items():
        old = table.get(model)
        if old is not None and old.epoch > p.epoch:
            continue
        mine = decode_entry(value)
        if old is None or old.epoch < p.epoch or mine is None or not _same(old, mine):
            out[model] = value
    for model, old in table.items():
        if model not in new and old.epoch <= p.epoch:
            out[model] = None
    return dict(sorted(out.items()))


def placements_spec() -> TableSpec:
    """The placements table: LWW per model, entries checked on arrival.
    32 KiB values: an entry lists at most ~550 node ids, far more than any
    fixed replica count (everywhere entries list only their exceptions)."""
    return TableSpec(PLACEMENTS_TABLE, kind="lww", max_entries=10_000, max_value_bytes=32_768,
                     validate=lambda k, v: decode_entry(v) is not None)
