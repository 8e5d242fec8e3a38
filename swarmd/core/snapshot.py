"""An immutable picture of the swarm (pure data, the bottom layer).

The node machine (:meth:`swarmd.core.node.NodeMachine.snapshot`) builds one
whenever something changes (and at least once a second, for load) and the
trio shell swaps it into a :class:`SnapshotBox`.  The asyncio thread (control API, OpenAI API,
router) reads the box without locks or thread crossings: replacing one Python
reference is atomic, and a snapshot is never mutated after publication.
What ``swarmctl`` sees of it is built by :mod:`swarmd.core.views`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from swarmd.core.record import NodeRecord, parse_record


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

    @cached_property
    def info(self) -> NodeRecord:
        """The record parsed as untrusted input (once per published snapshot)."""
        return parse_record(self.record)


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
    #: Replicated tables (:mod:`swarmd.core.replica`): name -> key -> Entry,
    #: tombstones included; read-only mappings shared between snapshots until
    #: the table changes.
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def alive(self) -> list[NodeInfo]:
        return [n for n in self.nodes if n.state == "alive"]


class SnapshotBox:
    """Holds the latest snapshot; ``get`` is safe from any thread."""

    def __init__(self, initial: Snapshot) -> None:
        self._snap = initial

    def get(self) -> Snapshot:
        return self._snap

    def put(self, snap: Snapshot) -> None:
        self._snap = snap
