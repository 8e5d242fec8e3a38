"""``swarmctl run MODEL [--replicas N | --everywhere] [--gpu] [--ctx N] [--slots N] [--engine KIND]``.

Pulls MODEL into this node's store (a source -- ``hf:ORG/REPO[:FILE]``, a URL,
a path -- or a name the store holds), writes the deployment, and waits until
the swarm serves it, printing each step (pulling, loading, ready on node N).
Fails at once when the model fits on no node, with the largest free memory
and what the model needs.  ``swarmctl stop MODEL`` undoes it.

On a terminal with no other option (or with ``--chat``), it then opens a chat
prompt with the model (:mod:`swarmd.ctl.chat`), as ``ollama run`` does; a
model the swarm serves already is chatted with at once, without a deployment.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from typing import Any

from swarmd.control.client import ControlClient, ControlError
from swarmd.ctl import chat, output

HELP = "run a model on the swarm (pull, place, launch) and wait until it is served"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model source (hf:..., ollama:..., URL, path) or a name")
    p.add_argument("--name", help="the name to serve it as (default: from the source)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--replicas", type=int, default=1, help="how many nodes run it (default 1)")
    g.add_argument("--everywhere", action="store_true", help="run it on every node it fits")
    p.add_argument("--gpu", action="store_true", help="only on a GPU")
    p.add_argument("--ctx", type=int, default=4096, help="context length, tokens (default 4096)")
    p.add_argument("--slots", type=int, default=1, help="parallel requests per engine")
    p.add_argument("--engine", default="", metavar="KIND",
                   help="engine kind to launch (llamacpp, ollama, vllm, tgi, mlx; default: "
                        "the first installed one for the model's format)")
    p.add_argument("--wait", type=float, default=900.0, help="seconds to wait until served")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="open a chat prompt once served (default: on a terminal when no "
                        "other option is given)")


#: Options whose default keeps the chat prompt on (any other value: a deployment run).
_DEFAULTS = {"name": None, "replicas": 1, "everywhere": False, "gpu": False, "ctx": 4096,
             "slots": 1, "wait": 900.0, "engine": ""}


def wants_chat(args: argparse.Namespace, tty: bool | None = None) -> bool:
    if tty is None:
        tty = sys.stdin.isatty() and sys.stdout.isatty()
    if not tty or args.json or args.chat is False:
        return False
    return bool(args.chat) or all(getattr(args, k) == v for k, v in _DEFAULTS.items())


def _served(client: ControlClient, model: str) -> bool:
    rows = client.models().get("models", [])
    return any(r.get("id") == model and r.get("engines") for r in rows)


def run(client: ControlClient, args: argparse.Namespace) -> int:
    talk = wants_chat(args)
    if talk and _served(client, args.model):
        return chat.chat(client, args.model)
    code, model = deploy(client, args)
    if code == 0 and talk:
        return chat.chat(client, model)
    return code


def deploy(client: ControlClient, args: argparse.Namespace) -> tuple[int, str]:
    """Deploy and wait until served: (exit code, the model's name)."""
    slow = ControlClient(client.path, timeout=max(args.wait, 60.0))  # the pull may take long
    body: dict[str, Any] = {"source": args.model, "replicas": 0 if args.everywhere
                            else args.replicas, "everywhere": args.everywhere,
                            "ctx": args.ctx, "slots": args.slots}
    if args.gpu:
        body["gpu"] = True
    if args.name:
        body["name"] = args.name
    if args.engine:
        body["kind"] = args.engine
    if not args.json:
        print(f"pulling {args.model} ...", flush=True)
    doc = slow.post("/v1/deployments", body)
    model = str(doc["model"])
    if not args.json:
        print(f"deployed {model}; waiting for the swarm to serve it", flush=True)
    deadline = time.monotonic() + args.wait
    seen: dict[str, str] = {}  # node -> last state printed
    while time.monotonic() < deadline:
        deps = {d["model"]: d for d in client.get("/v1/deployments").get("deployments", [])}
        d = deps.get(model)
        if d is None:
            raise ControlError(f"the deployment of {model} was removed", 1)
        rows = [r for r in client.get("/v1/ps").get("engines", []) if r.get("model") == model]
        for r in rows:
            k = (str(r.get("node")), str(r.get("state")))
            if seen.get(k[0]) != k[1]:
                seen[k[0]] = k[1]
                if not args.json:
                    why = f" ({r['reason']})" if r.get("reason") else ""
                    print(f"  {k[1]} on {k[0]}{why}", flush=True)
        if not d.get("nodes") and d.get("reason"):
            # Nothing stays behind a failed run (it would be placed later, unasked).
            client.request("DELETE", "/v1/deployments/" + urllib.parse.quote(model, safe=""))
            print(f"swarmctl: {model} cannot run: {d['reason']}", file=sys.stderr)
            return 1, model
        want = len(d.get("nodes") or []) if args.everywhere else args.replicas
        ready = [r for r in rows if r.get("state") == "ready"]
        if want and len(ready) >= want:
            if args.json:
                output.print_json({"model": model, "ready_on": [r["node_id"] for r in ready]})
            else:
                print(f"{model} is served by {', '.join(str(r['node']) for r in ready)}")
            return 0, model
        time.sleep(0.5)
    print(f"swarmctl: {model} was not served within {args.wait:g} s (see swarmctl ps)",
          file=sys.stderr)
    return 1, model
