"""The coordinator's view for placement: the snapshot turned into pure inputs.

:func:`compute` reads every node's gossiped record (devices from ``caps``
and ``load``, stored models from ``models``, its managed engines' states from
``managed``) as untrusted input, the deployments' fit facts, and the current
placements, and calls :func:`swarmd.core.placement.place`.  It returns the
table entry each deployed (or no longer deployed) model should have at this
epoch; the deployer writes those that differ.
"""

from __future__ import annotations

from collections.abc import Mapping

from swarmd.core import placement as pl
from swarmd.core.deployments import DeploymentSpec, PlacementEntry
from swarmd.core.fit import Need, devices_of, facts_from_dict, need_bytes
from swarmd.core.snapshot import Snapshot
from swarmd.models.inventory import parse_inventory


def node_views(snap: Snapshot) -> list[pl.NodeView]:
    out = []
    for n in snap.nodes:
        rec = n.record
        holds: set[str] = set()
        for digest, names in parse_inventory(rec.get("models")).items():
            holds.add(digest)
            holds.update(names)
        managed = rec.get("managed")
        failed, running = set(), set()
        if isinstance(managed, Mapping):
            for model, st in managed.items():
                if isinstance(model, str) and isinstance(st, Mapping):
                    if st.get("state") == "failed":
                        failed.add(model)
                    elif st.get("state") == "ready":
                        running.add(model)
        info = n.info
        out.append(pl.NodeView(
            node_id=n.node_id, devices=tuple(devices_of(rec.get("caps"), rec.get("load"))),
            holds=frozenset(holds), alive=n.state == "alive", draining=bool(info.draining),
            started=float(info.started or 0.0), failed=frozenset(failed),
            running=frozenset(running)))
    return out


def needs_of(deployments: Mapping[str, DeploymentSpec]) -> dict[str, Need]:
    out = {}
    for model, d in deployments.items():
        facts = facts_from_dict(d.facts) if d.facts is not None else None
        if facts is not None:
            out[model] = need_bytes(facts, engine_kind=d.kind, ctx=d.ctx, slots=d.slots)
    return out


def compute(snap: Snapshot, deployments: Mapping[str, DeploymentSpec],
            current: Mapping[str, PlacementEntry], epoch: int) -> dict[str, PlacementEntry]:
    needs = needs_of(deployments)
    deps = [pl.Deployment(m, replicas=0 if d.everywhere else d.replicas, gpu=d.gpu, ctx=d.ctx,
                          slots=d.slots) for m, d in deployments.items() if m in needs]
    result = pl.place(deps, node_views(snap), {m: p.nodes for m, p in current.items()},
                      needs, epoch)
    out: dict[str, PlacementEntry] = {}
    for model in deployments:
        if model not in needs:
            out[model] = PlacementEntry(model, (), epoch, "the deployment has no fit facts "
                                                          "(made by an older swarmd?)")
            continue
        out[model] = PlacementEntry(model, tuple(result.assignments.get(model, ())), epoch,
                                    result.unplaced.get(model, ""))
    for model, p in current.items():
        if model not in deployments and p.nodes:
            out[model] = PlacementEntry(model, (), epoch)  # stopped: unload everywhere
    return out
