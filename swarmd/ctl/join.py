"""``swarmctl join``: print the command line that joins another machine to this swarm."""

from __future__ import annotations

import argparse

from swarmd.control.client import ControlClient
from swarmd.ctl import output

HELP = "print the 'swarmd --join ...' line for a new machine (it holds the swarm secret)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(client: ControlClient, args: argparse.Namespace) -> int:
    doc = client.join()
    if args.json:
        output.print_json(doc)
    else:
        print(doc.get("join", ""))
    return 0
