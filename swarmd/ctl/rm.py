"""``swarmctl rm NAME``: remove a model from this node's store.

Blobs that another stored model shares are kept.  A model an engine is
using is refused (HTTP 409).  Removing on other nodes (``--node``,
``--everywhere``) needs the swarm-wide model inventory and is not in this
daemon yet.
"""

from __future__ import annotations

import argparse

from swarmd.control.client import ControlClient
from swarmd.ctl import output

HELP = "remove a model from this node's store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="model name, alias or sha256: digest")


def run(client: ControlClient, args: argparse.Namespace) -> int:
    doc = client.post("/v1/store/rm", {"name": args.name})
    if args.json:
        output.print_json(doc)
    else:
        r = doc.get("removed") or {}
        print(f"removed {r.get('name')} ({r.get('digest')}, {output.human_bytes(r.get('size'))})")
    return 0
