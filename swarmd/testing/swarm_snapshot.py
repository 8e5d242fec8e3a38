"""Snapshots of a made-up swarm for API tests (no trio side needed).

Records are built as a node builds its own (:func:`swarmd.core.record.self_record`)
and read back as any peer's would be (:attr:`NodeInfo.info`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from swarmd.core.record import self_record
from swarmd.core.snapshot import NodeInfo, Snapshot

SELF_ID = "12D3KooWSelf"


def node(node_id: str, engines: Sequence[Mapping[str, Any]], *, is_self: bool = False,
         state: str = "alive", draining: bool = False) -> NodeInfo:
    record = {**self_record(name=node_id[-6:], addrs=(), started=1.0, api="127.0.0.1:0",
                            caps={}),
              "engines": list(engines), "draining": draining}
    return NodeInfo(node_id=node_id, name=node_id[-6:], state=state, addrs=(), incarnation=1,
                    state_since=1.0, record=record, record_version=1, is_self=is_self)


def snapshot(local: Sequence[Mapping[str, Any]] = (), others: Sequence[NodeInfo] = (),
             *, self_id: str = SELF_ID, seq: int = 1, draining: bool = False) -> Snapshot:
    me = node(self_id, local, is_self=True, draining=draining)
    return Snapshot(node_id=self_id, name="self", addrs=(), coordinator=None,
                    nodes=(me, *others), joined=True, seq=seq)
