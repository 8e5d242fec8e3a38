"""``swarmctl models``: every model served in the swarm, and by which engines."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from swarmd.control.client import ControlClient
from swarmd.ctl import output

if TYPE_CHECKING:
    from swarmd.core.views import ModelsDoc

HELP = "list the models served in the swarm"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


_SHORT = {"chat": "chat", "completions": "compl", "embeddings": "embed"}


def model_rows(doc: ModelsDoc) -> list[list[str]]:
    rows = []
    for m in doc.get("models") or []:
        engines = m.get("engines") or []
        healthy = sum(1 for e in engines if e.get("healthy"))
        where = ", ".join(
            f"{e.get('kind')}@{e.get('node')}" + ("" if e.get("healthy") else " (down)")
            for e in engines
        )
        caps: list[str] = []
        for e in engines:
            for c in e.get("capabilities") or []:
                if c not in caps:
                    caps.append(c)
        rows.append([str(m.get("id", "?")), f"{healthy}/{len(engines)}",
                     ",".join(_SHORT.get(c, c) for c in caps) or "-",
                     str(m.get("queued", 0)), str(len(m.get("stored_on") or [])),
                     where or "-"])
    return rows


def run(client: ControlClient, args: argparse.Namespace) -> int:
    doc = client.models()
    if args.json:
        output.print_json(doc)
    elif not doc.get("models"):
        print("no models served in the swarm")
    else:
        output.print_table(None, ("MODEL", "HEALTHY", "CAN", "QUEUED", "STORED", "ENGINES"),
                           model_rows(doc))
    return 0
