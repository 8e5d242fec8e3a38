"""``swarmctl status``: this node, the coordinator and every member."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from swarmd.control.client import ControlClient
from swarmd.ctl import output
from swarmd.ctl.nodes import print_nodes

if TYPE_CHECKING:
    from swarmd.core.views import StatusDoc

HELP = "show this node, the coordinator and the swarm's nodes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def header(doc: StatusDoc) -> str:
    nodes = list(doc.get("nodes") or [])
    names = {n.get("node_id"): n.get("name") for n in nodes}
    me = f"{doc.get('name', '?')} ({output.short_id(str(doc.get('node_id', '')))})"
    coord = doc.get("coordinator")
    if isinstance(coord, dict) and coord.get("node_id"):
        cid = str(coord["node_id"])
        ctext = f"{names.get(cid) or output.short_id(cid)} epoch {coord.get('epoch')}"
    else:
        ctext = "none"
    alive = sum(1 for n in nodes if n.get("state") == "alive")
    out = f"this node: {me}   coordinator: {ctext}   nodes: {alive} alive / {len(nodes)} known"
    health = doc.get("health_score")
    if isinstance(health, int) and health > 0:
        out += f"   local health: {health} (probing slowed {health + 1}x)"
    fp = doc.get("api_tls_fingerprint")
    if fp:
        out += f"\nAPI TLS certificate: {fp}"
    return out


def run(client: ControlClient, args: argparse.Namespace) -> int:
    doc = client.status()
    if args.json:
        output.print_json(doc)
        return 0
    print(header(doc))
    print_nodes(list(doc.get("nodes") or []))
    return 0
