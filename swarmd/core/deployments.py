"""Desired state, swarm-wide: deployments and their placements (pure rules).

Two replicated tables (:mod:`swarmd.core.replica`):

* ``deployments`` -- what the swarm should run, keyed by model name, written
  by ``swarmctl run`` / ``swarmctl stop`` on any node (last writer wins by
  hybrid logical clock; a stop is a tombstone).  Value: source to fetch the
  files from, ``replicas`` (0 with ``everywhere``), ``gpu``, ``ctx``,
  ``slots``, engine ``kind`` and ``chat_format``; ``keep_alive`` (seconds,
  only on a deployment made on demand by a request) lets the node serving
  it remove it after that long idle.
* ``placements`` -- which nodes run each deployment, keyed by model name,
  written only by the coordinator (the lease holder) with its lease
  ``epoch``.  The table ranks entries by ``(epoch, stamp)``: a placement from
  a coordinator with an older epoch loses whatever its clock says, so nodes
  act only on the highest epoch they have seen, and a deposed coordinator's
  late writes are refused by the merge itself.  Value: ``{"nodes": [node
  id, ...], "epoch": n, "reason": str}`` (the one entry format; the
  coordinator computes it with :func:`swarmd.core.placement.place` through
  :mod:`swarmd.engines.placing` and writes what :func:`needs_write` says).
  Each node picks the device on itself when it launches
  (:mod:`swarmd.engines.launching`).

Both values are read as untrusted input (:func:`parse_deployment`,
:func:`parse_placement`); a malformed one is dropped on arrival.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from swarmd.core.replica import Entry, TableSpec

__all__ = ["DEPLOY_TABLE", "PLACE_TABLE", "DeploymentSpec", "PlacementEntry",
           "deployments_spec", "needs_write", "parse_deployment", "parse_placement",
           "placements_spec"]

T = TypeVar("T")

DEPLOY_TABLE = "deployments"
PLACE_TABLE = "placements"
MAX_STR = 512
MAX_NODES = 1024


@dataclass(frozen=True)
class DeploymentSpec:
    model: str
    source: str
    replicas: int  # 0 with everywhere
    everywhere: bool
    gpu: bool | None  # True: GPU only; False: CPU only; None: either
    ctx: int
    slots: int
    kind: str = "llamacpp"
    chat_format: str = ""
    created: float = 0.0
    #: The model's shape for the fit formula (swarmd.core.fit.facts_to_dict),
    #: measured by the node that pulled it first; read with facts_from_dict.
    facts: Mapping[str, Any] | None = None
    #: Seconds idle after which the node running it removes it; 0: it stays
    #: (``swarmctl run``).  Set on deployments made on demand by a request.
    keep_alive: float = 0.0

    def value(self) -> dict[str, Any]:
        v: dict[str, Any] = {"source": self.source, "replicas": self.replicas,
                             "everywhere": self.everywhere, "ctx": self.ctx,
                             "slots": self.slots, "kind": self.kind, "created": self.created}
        if self.gpu is not None:
            v["gpu"] = self.gpu
        if self.chat_format:
            v["chat_format"] = self.chat_format
        if self.facts is not None:
            v["facts"] = dict(self.facts)
        if self.keep_alive:
            v["keep_alive"] = self.keep_alive
        return v


def _int(v: Any, lo: int, hi: int) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi else None


def parse_deployment(model: str, v: Mapping[str, Any]) -> DeploymentSpec | None:
    if not 0 < len(model) <= MAX_STR:
        return None
    source, kind, cf = v.get("source"), v.get("kind", "llamacpp"), v.get("chat_format", "")
    replicas = _int(v.get("replicas"), 0, 1024)
    ctx, slots = _int(v.get("ctx"), 16, 1 << 22), _int(v.get("slots"), 1, 256)
    everywhere, gpu, created = v.get("everywhere", False), v.get("gpu"), v.get("created", 0.0)
    if (not isinstance(source, str) or len(source) > MAX_STR or not isinstance(kind, str)
            or not 0 < len(kind) <= 64 or not isinstance(cf, str) or len(cf) > 64
            or replicas is None or ctx is None or slots is None
            or not isinstance(everywhere, bool) or gpu not in (None, True, False)
            or isinstance(created, bool) or not isinstance(created, int | float)):
        return None
    if not everywhere and replicas < 1:
        return None
    facts, keep = v.get("facts"), v.get("keep_alive", 0.0)
    if facts is not None and not isinstance(facts, Mapping):
        return None
    if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0 <= keep <= 1e8:
        return None
    return DeploymentSpec(model, source, replicas, everywhere, gpu, ctx, slots, kind, cf,
                          float(created), facts, float(keep))


@dataclass(frozen=True)
class PlacementEntry:
    model: str
    nodes: tuple[str, ...]
    epoch: int
    reason: str = ""  # why fewer nodes than asked (fits nowhere, ...)

    def value(self) -> dict[str, Any]:
        v: dict[str, Any] = {"nodes": list(self.nodes), "epoch": self.epoch}
        if self.reason:
            v["reason"] = self.reason[:MAX_STR]
        return v


def needs_write(old: PlacementEntry | None, new: PlacementEntry) -> bool:
    """Whether a coordinator at ``new.epoch`` writes ``new`` over ``old``: an
    entry it has not, one whose nodes differ, one that gained or lost its
    reason, and any entry of an older epoch (so a deposed coordinator cannot
    go on changing it: the table ranks by epoch first).  Never over a newer
    epoch's entry (that write would lose anyway).  A reason whose text alone
    changed is not a write: free memory in it moves with load, and the table
    would churn every round while a model fits nowhere."""
    if old is None:
        return True
    if old.epoch != new.epoch:
        return old.epoch < new.epoch
    return old.nodes != new.nodes or bool(old.reason) != bool(new.reason)


def parse_placement(model: str, v: Mapping[str, Any]) -> PlacementEntry | None:
    nodes, epoch, reason = v.get("nodes"), _int(v.get("epoch"), 0, 1 << 62), v.get("reason", "")
    if (epoch is None or not isinstance(nodes, list) or len(nodes) > MAX_NODES
            or not all(isinstance(n, str) and 0 < len(n) <= 256 for n in nodes)
            or not isinstance(reason, str) or len(reason) > MAX_STR):
        return None
    return PlacementEntry(model, tuple(nodes), epoch, reason)


def deployments_spec() -> TableSpec:
    return TableSpec(DEPLOY_TABLE, max_entries=10_000,
                     validate=lambda k, v: parse_deployment(k, v) is not None)


def _rank(e: Entry) -> tuple[int, Any]:
    epoch = e.value.get("epoch", 0) if isinstance(e.value, Mapping) else -1
    return (epoch if isinstance(epoch, int) else -1, e.stamp)


def placements_spec() -> TableSpec:
    return TableSpec(PLACE_TABLE, max_entries=10_000, rank=_rank, max_value_bytes=32_768,
                     validate=lambda k, v: parse_placement(k, v) is not None)


def _parsed(table: Mapping[str, Entry], parse: Callable[[str, Mapping[str, Any]], T | None]
            ) -> dict[str, T]:
    out: dict[str, T] = {}
    for k, e in table.items():
        v = parse(k, e.value) if e.value is not None else None
        if v is not None:
            out[k] = v
    return out


def live_deployments(table: Mapping[str, Entry]) -> dict[str, DeploymentSpec]:
    return _parsed(table, parse_deployment)


def placements_of(table: Mapping[str, Entry]) -> dict[str, PlacementEntry]:
    return _parsed(table, parse_placement)
