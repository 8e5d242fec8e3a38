"""``swarmctl leave``: this node leaves the swarm gracefully, then swarmd exits."""

from __future__ import annotations

import argparse

from swarmd.control.client import ControlClient
from swarmd.ctl import output

HELP = "leave the swarm gracefully and stop swarmd"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(client: ControlClient, args: argparse.Namespace) -> int:
    doc = client.leave()
    if args.json:
        output.print_json(doc)
    else:
        print("leaving the swarm; swarmd will exit")
    return 0
