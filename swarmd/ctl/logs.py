"""``swarmctl logs ENGINE_ID [--follow]``: a managed engine's log (on this node)."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse

from swarmd.control.client import ControlClient

HELP = "print a managed engine's log (this node's engines; see swarmctl ps)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engine_id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")


def run(client: ControlClient, args: argparse.Namespace) -> int:
    url = f"/v1/engines/{urllib.parse.quote(args.engine_id, safe='')}/logs?offset="
    offset = 0
    while True:
        doc = client.get(url + str(offset))
        text = str(doc.get("text", ""))
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
        offset = int(doc.get("offset", offset))
        if not args.follow:
            if offset >= int(doc.get("size", 0)):
                return 0
            continue
        if not text:
            time.sleep(0.5)
