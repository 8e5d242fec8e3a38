"""``swarmctl nodes``: the swarm's members as a table (or ``{"nodes": [...]}``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from swarmd.control.client import ControlClient
from swarmd.ctl import output

if TYPE_CHECKING:
    from swarmd.core.views import NodeDoc

HELP = "list the swarm's nodes"
COLUMNS = ("", "NAME", "ID", "STATE", "CPU", "RAM", "GPUS", "LOAD", "ENG/MODELS", "AGE")


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def node_rows(nodes: Sequence[NodeDoc]) -> list[list[str]]:
    """One table row per node; the first column marks the coordinator (*) and this node (>)."""
    rows = []
    for n in nodes:
        caps = n.get("capabilities") or {}
        mark = ("*" if n.get("is_coordinator") else "") + (">" if n.get("is_self") else "")
        state = str(n.get("state", "?")) + (" (draining)" if n.get("draining") else "")
        rows.append(
            [
                mark,
                str(n.get("name", "?")),
                output.short_id(str(n.get("node_id", ""))),
                state,
                output.cpu_text(caps),
                output.human_bytes((caps.get("memory") or {}).get("total")),
                output.gpu_text(caps),
                output.load_text(n.get("load") or {}),
                output.engines_text(list(n.get("engines") or [])),
                output.human_age(n.get("state_age_s")),
            ]
        )
    return rows


def print_nodes(nodes: Sequence[NodeDoc], title: str | None = None) -> None:
    output.print_table(title, COLUMNS, node_rows(nodes))


def run(client: ControlClient, args: argparse.Namespace) -> int:
    doc = client.nodes()
    if args.json:
        output.print_json(doc)
    else:
        print_nodes(list(doc.get("nodes") or []))
    return 0
