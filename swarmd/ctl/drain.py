"""``swarmctl drain on|off``: stop (or resume) routing new requests to this node."""

from __future__ import annotations

import argparse

from swarmd.control.client import ControlClient
from swarmd.ctl import output

HELP = "drain this node (on: no new routed requests; off: accept again)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("state", choices=("on", "off"), help="on or off")


def run(client: ControlClient, args: argparse.Namespace) -> int:
    doc = client.drain(args.state == "on")
    if args.json:
        output.print_json(doc)
    else:
        print("draining: no new requests are routed here" if args.state == "on"
              else "not draining: accepting routed requests")
    return 0
