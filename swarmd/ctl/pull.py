"""``swarmctl pull SOURCE [--name NAME]``: pull a model into this node's store.

SOURCE is ``hf:ORG/REPO[:FILE-OR-QUANT][@REV]``, ``ollama:NAME[:TAG]``, an
``http(s)://`` URL, a local path, or the NAME of a model already stored.
The daemon streams progress as JSON lines (``POST /v1/store/pull``); this
shows them as a rich progress bar (bytes, rate, ETA, sources), or with
``--json`` prints each line as it comes, the last one being the result with
``name``, ``digest`` and ``size``.  Ctrl-C cancels; pulling again resumes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterator
from typing import Any

from swarmd.control.client import (
    EXIT_DAEMON_ERROR,
    EXIT_NOT_RUNNING,
    ControlClient,
    ControlError,
    UnixHTTPConnection,
)

HELP = "pull a model into this node's store (hf:, ollama:, http(s)://, /path or NAME)"
#: Seconds without a progress line before giving up on the daemon.
STREAM_TIMEOUT = 600.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="hf:ORG/REPO[:PATTERN][@REV], ollama:NAME[:TAG], URL, path, NAME")
    p.add_argument("--name", help="the name to store the model under (default from the source)")


def stream_lines(client: ControlClient, url: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """POST ``body`` and yield each JSON line of the reply as it arrives."""
    conn = UnixHTTPConnection(str(client.path), STREAM_TIMEOUT)
    try:
        try:
            conn.request("POST", url, body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"swarmd is not running (no socket at {client.path})",
                               EXIT_NOT_RUNNING) from None
        except OSError as exc:
            raise ControlError(f"cannot reach swarmd at {client.path}: {exc}",
                               EXIT_NOT_RUNNING) from None
        if resp.status >= 400:
            raw = resp.read()
            try:
                msg = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = raw[:200].decode(errors="replace") or resp.reason
            raise ControlError(f"swarmd: {msg} (HTTP {resp.status})", EXIT_DAEMON_ERROR, resp.status)
        while line := resp.readline():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict):
                yield ev
    except TimeoutError:
        raise ControlError(f"swarmd sent no progress for {STREAM_TIMEOUT:g} s",
                           EXIT_DAEMON_ERROR) from None
    finally:
        conn.close()


def _bar() -> Any:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[sources]}"), transient=False)


def run(client: ControlClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"source": args.source}
    if args.name:
        body["name"] = args.name
    final: dict[str, Any] | None = None
    events = stream_lines(client, "/v1/store/pull", body)
    first = next(events, None)  # connects: errors before any bar is drawn
    stream = itertools.chain([first] if first else [], events)
    if args.json:
        for ev in stream:
            sys.stdout.write(json.dumps(ev) + "\n")
            sys.stdout.flush()
            final = ev
    else:
        with _bar() as bar:
            task = bar.add_task(args.source, total=None, sources="")
            for ev in stream:
                final = ev
                if ev.get("status") == "pulling":
                    bar.update(task, description=str(ev.get("file", "")),
                               completed=ev.get("completed", 0), total=ev.get("total"),
                               sources=", ".join(ev.get("sources") or []))
                elif ev.get("status") == "verifying":
                    bar.update(task, description="verifying")
        if final and final.get("status") == "success":
            print(f"{final['name']}  {final['digest']}  {final['size']} bytes\n  {final.get('path', '')}")
    if not final or final.get("status") != "success":
        err = (final or {}).get("error") or {}
        print(f"swarmctl: pull failed: {err.get('message', 'the daemon ended the stream')}",
              file=sys.stderr)
        return EXIT_DAEMON_ERROR
    return 0
