"""``swarmctl engines [list]`` and ``swarmctl engines test ENGINE_ID [--chat]``.

``list``: this node's engines (configured and detected) with health and
models.  ``test``: checks one engine now -- reachable, key accepted, models
listed, and with ``--chat`` one 1-token completion -- and exits 1 when it
fails, saying what failed (for cloud upstreams: a refused key shows as
HTTP 401/403).  Spend through an upstream is booked like any model's, at
its ``[[prices]]``.
"""

from __future__ import annotations

import argparse

from swarmd.control.client import ControlClient
from swarmd.ctl import output

HELP = "list this node's engines, or test one (reachability and key)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="<action>")
    lst = sub.add_parser("list", help="this node's engines")
    t = sub.add_parser("test", help="check one engine's reachability and key now")
    t.add_argument("engine_id")
    t.add_argument("--chat", action="store_true", help="also run a 1-token chat completion")
    for sp in (lst, t):
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON")


def run(client: ControlClient, args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "test":
        url = f"/v1/engines/{args.engine_id}/test" + ("?chat=1" if args.chat else "")
        doc = client.post(url)
        if args.json:
            output.print_json(doc)
        elif doc.get("ok"):
            extra = f", chat {doc['chat_ms']} ms" if "chat_ms" in doc else ""
            print(f"{doc['engine_id']} ({doc['kind']}, {doc['url']}): ok -- "
                  f"{doc.get('model_count', 0)} models, health {doc.get('health_ms')} ms{extra}")
        else:
            print(f"{doc['engine_id']} ({doc['kind']}, {doc['url']}): FAILED -- "
                  f"{doc.get('error')}")
        return 0 if doc.get("ok") else 1
    engines = client.get("/v1/engines").get("engines", [])
    if args.json:
        output.print_json(engines)
        return 0
    rows = [[str(e.get("id")), str(e.get("kind")), str(e.get("url")),
             "yes" if e.get("healthy") else "no", ",".join(e.get("models") or [])[:60],
             str(e.get("error") or "")] for e in engines]
    output.print_table("engines", ["id", "kind", "url", "healthy", "models", "error"], rows)
    return 0
