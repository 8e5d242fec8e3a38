"""``swarmctl budgets set|list|rm``: a user's or a project's limits, swarm-wide.

``set --user U | --project P [--tokens-day N] [--usd-day X] [--usd-month X]
[--warn 0.8]``: every key booked to that user or project draws from it (on
top of the key's own budget), enforced by escrow like a key's (see README,
"Keys, budgets and usage").  ``--warn``: the fraction used past which a
warning is logged, exported and POSTed to ``[limits] webhook``.
"""

from __future__ import annotations

import argparse
import urllib.parse

from swarmd.control.client import ControlClient
from swarmd.ctl import output

HELP = "set, list or remove a user's or project's budget"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="<action>", required=True)
    s = sub.add_parser("set", help="set a user's or project's limits")
    who = s.add_mutually_exclusive_group(required=True)
    who.add_argument("--user")
    who.add_argument("--project")
    s.add_argument("--tokens-day", type=int, default=0)
    s.add_argument("--usd-day", type=float, default=0.0)
    s.add_argument("--usd-month", type=float, default=0.0)
    s.add_argument("--warn", type=float, default=0.8, help="warn past this fraction (0: never)")
    lst = sub.add_parser("list", help="every user and project budget")
    r = sub.add_parser("rm", help="remove a budget")
    rw = r.add_mutually_exclusive_group(required=True)
    rw.add_argument("--user")
    rw.add_argument("--project")
    for sp in (s, lst, r):
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON")


def run(client: ControlClient, args: argparse.Namespace) -> int:
    if args.action == "set":
        scope, name = ("user", args.user) if args.user else ("project", args.project)
        doc = client.post("/v1/budgets", {"scope": scope, "name": name,
                                          "tokens_day": args.tokens_day,
                                          "usd_day": args.usd_day,
                                          "usd_month": args.usd_month, "warn": args.warn})
        if args.json:
            output.print_json(doc)
        else:
            print(f"budget of {scope} {name} set")
        return 0
    if args.action == "rm":
        scope, name = ("user", args.user) if args.user else ("project", args.project)
        doc = client.request("DELETE", f"/v1/budgets/{scope}/{urllib.parse.quote(name, safe='')}")
        if args.json:
            output.print_json(doc)
        else:
            print(f"budget of {scope} {name} removed")
        return 0
    rows = client.get("/v1/budgets").get("budgets", [])
    if args.json:
        output.print_json(rows)
        return 0
    output.print_table("budgets", ["scope", "name", "tokens/day", "USD/day", "USD/month", "warn"],
                       [[str(r["scope"]), str(r["name"]), str(r.get("tokens_day") or "-"),
                         str(r.get("usd_day") or "-"), str(r.get("usd_month") or "-"),
                         f"{r.get('warn', 0):.0%}"] for r in rows])
    return 0
