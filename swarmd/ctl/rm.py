"""``swarmctl rm NAME [--node ID | --everywhere]``: remove a model from a store.

Without options, from this node's store.  ``--node`` names another member
(node id, id suffix or name) whose store the daemon asks over the data
plane; ``--everywhere`` removes it from every node holding it.  Blobs that
another stored model shares are kept.  A model an engine is using is
refused (HTTP 409), per node.
"""

from __future__ import annotations

import argparse
from typing import Any

from swarmd.control.client import ControlClient
from swarmd.ctl import output

HELP = "remove a model from this node's store (or another node's, or everywhere)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="model name, alias or sha256: digest")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--node", help="remove it from this member's store (id, id suffix or name)")
    g.add_argument("--everywhere", action="store_true", help="remove it from every node")


def run(client: ControlClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.node:
        body["node"] = args.node
    if args.everywhere:
        body["everywhere"] = True
    doc = client.post("/v1/store/rm", body)
    if args.json:
        output.print_json(doc)
        return 0
    if "results" not in doc:
        r = doc.get("removed") or {}
        print(f"removed {r.get('name')} ({r.get('digest')}, {output.human_bytes(r.get('size'))})")
        return 0
    for res in doc["results"]:
        r = res.get("removed") or {}
        print(f"{res['name']}: removed {r.get('name')} ({output.human_bytes(r.get('size'))})")
    return 0
