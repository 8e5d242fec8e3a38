"""``swarmctl usage [--by key|user|project|model|node] [--since 7d] [--json|--csv]``.

Asks ``GET /v1/usage`` (see :mod:`swarmd.usage.report` for the document) and
prints the rows: ``--json`` the list of rows as the daemon sent them, ``--csv``
a header and one line per row, otherwise a table with a total.  When the
daemon says its answer is partial the note goes to stderr, so stdout stays
machine-readable.
"""

from __future__ import annotations

import argparse
import sys

from swarmd.control.client import EXIT_DAEMON_ERROR, ControlClient
from swarmd.ctl import output
from swarmd.usage import report

HELP = "tokens and cost per key, user, project, model or node"


def _duration(text: str) -> float:
    try:
        return report.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--by", choices=report.BY, default="model",
                   help="group by this field (default: model)")
    p.add_argument("--since", type=_duration, default=7 * 86400.0, metavar="DURATION",
                   help="how far back: 90s, 30m, 12h, 7d, 2w (default: 7d)")
    p.add_argument("--csv", action="store_true", help="print CSV with a header row")


def run(client: ControlClient, args: argparse.Namespace) -> int:
    if args.json and args.csv:
        print("swarmctl: give --json or --csv, not both", file=sys.stderr)
        return 2
    try:
        doc = report.check_doc(client.get(report.usage_url(args.by, args.since)))
    except ValueError as exc:
        print(f"swarmctl: {exc}", file=sys.stderr)
        return EXIT_DAEMON_ERROR
    rows = doc["rows"]
    if doc.get("partial") or doc.get("note"):
        print(f"swarmctl: {'partial answer: ' if doc.get('partial') else ''}"
              f"{doc.get('note') or 'some nodes did not answer'}", file=sys.stderr)
    span = report.format_duration(args.since)
    if args.json:
        output.print_json(rows)
    elif args.csv:
        report.write_csv(args.by, rows, sys.stdout)
    elif not rows:
        print(f"no usage in the last {span}")
    else:
        output.print_table(f"usage by {args.by}, last {span}", report.table_columns(args.by),
                           report.table_rows(args.by, rows))
    return 0
