"""``swarmctl ps [--json]``: one row per engine the swarm runs for its deployments.

``--json`` is a list of objects with ``model``, ``node_id``, ``engine_id``,
``state`` (pulling, loading, ready, failed), ``memory_bytes``, ``slots`` and
``reason`` when failed.
"""

from __future__ import annotations

import argparse

from swarmd.control.client import ControlClient
from swarmd.ctl import output

HELP = "list the engines the swarm runs for its deployments"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(client: ControlClient, args: argparse.Namespace) -> int:
    rows = client.get("/v1/ps").get("engines", [])
    if args.json:
        output.print_json(rows)
        return 0
    output.print_table("engines", ["model", "node", "engine", "state", "memory", "slots",
                                   "reason"],
                       [[str(r.get("model")), str(r.get("node")), str(r.get("engine_id")),
                         str(r.get("state")), output.human_bytes(r.get("memory_bytes")),
                         str(r.get("slots") or ""), str(r.get("reason") or "")] for r in rows])
    return 0
