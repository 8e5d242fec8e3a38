"""An immutable picture of the swarm, published by the trio side.

The trio thread owns membership and the lease; whenever something changes (and
at least once a second, for load) it builds a new :class:`Snapshot` and swaps
it into a :class:`SnapshotBox`.  The asyncio thread (control API, OpenAI API,
router) reads the box without locks or thread crossings: replacing one Python
reference is atomic, and a snapshot is never mutated after publication.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    name: str
    state: str  # alive | suspect | dead | left
    addrs: tuple[str, ...]
    incarnation: int
    state_since: float  # seconds ago when published (monotonic based)
    record: Mapping[str, Any]
    record_version: int
    is_self: bool


@dataclass(frozen=True)
class Snapshot:
    node_id: str
    name: str
    addrs: tuple[str, ...]
    coordinator: tuple[str, int] | None  # (node_id, epoch)
    nodes: tuple[NodeInfo, ...]
    joined: bool  # at least one other member seen, or running alone on purpose
    stats: Mapping[str, int] = field(default_factory=dict)
    seq: int = 0
    #: Lifeguard local health (memberlist's health score): 0 is healthy; each
    #: point stretches this node's probe interval by one more interval
    #: because its own probes and nacks came back late.
    health_score: int = 0

    def alive(self) -> list[NodeInfo]:
        return [n for n in self.nodes if n.state == "alive"]

    def status_doc(self) -> dict[str, Any]:
        """The ``swarmctl status --json`` document (a contract: see README)."""
        coord = (
            {"node_id": self.coordinator[0], "epoch": self.coordinator[1]}
            if self.coordinator
            else None
        )
        return {
            "node_id": self.node_id,
            "name": self.name,
            "addrs": list(self.addrs),
            "coordinator": coord,
            "health_score": self.health_score,
            "nodes": [
                {
                    "node_id": n.node_id,
                    "name": n.name,
                    "state": n.state,
                    "addrs": list(n.addrs),
                    "capabilities": dict(n.record.get("caps") or {}),
                    "load": dict(n.record.get("load") or {}),
                    "engines": list(n.record.get("engines") or []),
                    "api": n.record.get("api"),
                    "draining": bool(n.record.get("draining", False)),
                    "incarnation": n.incarnation,
                    "state_age_s": round(n.state_since, 3),
                    "is_self": n.is_self,
                    "is_coordinator": bool(self.coordinator and self.coordinator[0] == n.node_id),
                }
                for n in self.nodes
            ],
            "stats": dict(self.stats),
        }


class SnapshotBox:
    """Holds the latest snapshot; ``get`` is safe from any thread."""

    def __init__(self, initial: Snapshot) -> None:
        self._snap = initial

    def get(self) -> Snapshot:
        return self._snap

    def put(self, snap: Snapshot) -> None:
        self._snap = snap
