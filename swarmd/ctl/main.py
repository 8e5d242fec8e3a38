"""``swarmctl [--socket PATH] <command> [--json]``: entry point and dispatch.

Theory of operation
-------------------
Each subcommand lives in its own module exposing ``HELP``,
``add_arguments(parser)`` and ``run(client, args) -> exit code``.  Startup
stays light: only the standard library, ``swarmd.config`` (for the default
socket path) and the stdlib control client are imported; ``rich`` is imported
by the table printers only when a table is printed.

Exit codes: 0 ok, 1 the daemon answered with an error, 2 usage error or the
daemon is not running / not reachable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from swarmd.control.client import ControlClient, ControlError
from swarmd.ctl import (
    budgets,
    drain,
    engines,
    join,
    keys,
    leave,
    logs,
    models,
    nodes,
    ps,
    pull,
    rm,
    run,
    status,
    stop,
    usage,
)

COMMANDS: dict[str, ModuleType] = {
    "status": status,
    "nodes": nodes,
    "models": models,
    "join": join,
    "leave": leave,
    "drain": drain,
    "pull": pull,
    "rm": rm,
    "keys": keys,
    "budgets": budgets,
    "engines": engines,
    "run": run,
    "stop": stop,
    "ps": ps,
    "logs": logs,
    "usage": usage,
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS,
        help="print the JSON document exactly as the daemon sent it",
    )
    common.add_argument(
        "--socket", type=Path, default=argparse.SUPPRESS, help="control socket path"
    )
    p = argparse.ArgumentParser(
        prog="swarmctl", description="Control a running swarmd.", parents=[common]
    )
    sub = p.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, mod in COMMANDS.items():
        sp = sub.add_parser(name, help=mod.HELP, description=mod.HELP, parents=[common])
        mod.add_arguments(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on usage errors
    args.json = getattr(args, "json", False)
    sock = getattr(args, "socket", None)
    if sock is None:
        from swarmd.config import default_control_socket

        sock = default_control_socket()
    client = ControlClient(sock)
    try:
        code: int = COMMANDS[args.command].run(client, args)
    except ControlError as exc:
        print(f"swarmctl: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
