"""``swarmctl models``: every model served in the swarm, and by which engines."""

from __future__ import annotations

import argparse
from typing import Any

from swarmd.control.client import ControlClient
from swarmd.ctl import output

HELP = "list the models served in the swarm"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def model_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for m in doc.get("models") or []:
        engines = m.get("engines") or []
        healthy = sum(1 for e in engines if e.get("healthy"))
        where = ", ".join(
            f"{e.get('kind')}@{e.get('node')}" + ("" if e.get("healthy") else " (down)")
            for e in engines
        )
        rows.append([str(m.get("id", "?")), f"{healthy}/{len(engines)}", where or "-"])
    return rows


def run(client: ControlClient, args: argparse.Namespace) -> int:
    doc = client.models()
    if args.json:
        output.print_json(doc)
    elif not doc.get("models"):
        print("no models served in the swarm")
    else:
        output.print_table(None, ("MODEL", "HEALTHY", "ENGINES"), model_rows(doc))
    return 0
