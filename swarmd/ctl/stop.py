"""``swarmctl stop MODEL``: remove a deployment; its engines unload on every node."""

from __future__ import annotations

import argparse
import urllib.parse

from swarmd.control.client import ControlClient
from swarmd.ctl import output

HELP = "stop a deployed model everywhere"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model")


def run(client: ControlClient, args: argparse.Namespace) -> int:
    doc = client.request("DELETE", "/v1/deployments/" + urllib.parse.quote(args.model, safe=""))
    if args.json:
        output.print_json(doc)
    else:
        print(f"stopped {args.model}: its engines unload on every node")
    return 0
