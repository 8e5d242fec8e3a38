"""``swarmctl keys create|list|revoke|rotate``: the swarm's API keys.

A key is printed once, when it is made (``create``, ``rotate``); the swarm
keeps only its hash.  Keys are replicated to every node, so a key made here
works on every node within seconds, and a revoked one stops working on
every node as fast (protocol/tables.md, swarmd/core/keys.py).

``create --json`` prints one object with ``id`` and ``key`` (plus the key's
settings); ``list --json`` a list of key objects (never the key or its hash).
"""

from __future__ import annotations

import argparse
import time

from swarmd.control.client import ControlClient
from swarmd.ctl import output
from swarmd.usage.report import parse_duration

HELP = "create, list, revoke or rotate API keys"


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="<action>", required=True)
    c = sub.add_parser("create", help="make a key (printed once)")
    c.add_argument("--name", required=True, help="what the key is for")
    c.add_argument("--user", default="", help="user the key's usage is booked to")
    c.add_argument("--project", default="", help="project the key's usage is booked to")
    c.add_argument("--models", type=_csv, default=[],
                   help="comma-separated model globs the key may use (default: all)")
    c.add_argument("--scopes", type=_csv, default=["inference"],
                   help="comma-separated: inference, read, admin (default: inference)")
    c.add_argument("--rpm", type=int, default=0, help="requests per minute, swarm-wide")
    c.add_argument("--tpm", type=int, default=0, help="tokens per minute, swarm-wide")
    c.add_argument("--budget-tokens-day", type=int, default=0, help="tokens per UTC day")
    c.add_argument("--budget-usd-day", type=float, default=0.0, help="USD per UTC day")
    c.add_argument("--budget-usd-month", type=float, default=0.0, help="USD per UTC month")
    c.add_argument("--expires", type=_duration, default=0.0,
                   help="lifetime, e.g. 30d, 12h (default: never)")
    lst = sub.add_parser("list", help="the swarm's keys")
    r = sub.add_parser("revoke", help="revoke a key everywhere (final)")
    r.add_argument("id")
    o = sub.add_parser("rotate", help="a new key with the same settings; the old one revoked")
    o.add_argument("id")
    for sp in (c, lst, r, o):  # --json after the action too
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON")


def run(client: ControlClient, args: argparse.Namespace) -> int:
    if args.action == "create":
        spec = {"name": args.name, "user": args.user, "project": args.project,
                "models": args.models, "scopes": args.scopes, "rpm": args.rpm, "tpm": args.tpm,
                "budget_tokens_day": args.budget_tokens_day,
                "budget_usd_day": args.budget_usd_day,
                "budget_usd_month": args.budget_usd_month}
        if args.expires:
            spec["expires_in"] = args.expires
        doc = client.post("/v1/keys", spec)
        return _made(doc, args.json)
    if args.action == "rotate":
        return _made(client.post(f"/v1/keys/{args.id}/rotate"), args.json)
    if args.action == "revoke":
        doc = client.request("DELETE", f"/v1/keys/{args.id}")
        if args.json:
            output.print_json(doc)
        else:
            print(f"revoked {args.id}")
        return 0
    keys = client.get("/v1/keys").get("keys", [])
    if args.json:
        output.print_json(keys)
        return 0
    rows = []
    for k in keys:
        exp = k.get("expires")
        rows.append([str(k.get("id")), str(k.get("name")), ",".join(k.get("scopes") or []),
                     ",".join(k.get("models") or []) or "*", str(k.get("user") or ""),
                     str(k.get("project") or ""),
                     "expired" if k.get("expired") else
                     (time.strftime("%Y-%m-%d %H:%M", time.gmtime(exp)) if exp else "never")])
    output.print_table("keys", ["id", "name", "scopes", "models", "user", "project", "expires"],
                       rows)
    return 0


def _made(doc: dict[str, object], as_json: bool) -> int:
    if as_json:
        output.print_json(doc)
        return 0
    print(f"key {doc.get('id')} ({doc.get('name')}): {doc.get('key')}")
    print("This is the only time the key is shown; store it now.")
    return 0
