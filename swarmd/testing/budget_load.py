"""Concurrent clients against one node's API with one key (budget and rate tests).

``python -m swarmd.testing.budget_load --url URL --key KEY --clients N
--requests M [--max-tokens T] [--model MODEL]`` runs ``N`` threads that each
send ``M`` chat requests (stdlib HTTP, so it runs inside a network namespace
with nothing else), and prints one JSON object: ``ok``, ``refused`` (429
``insufficient_quota``), ``rate_limited``, ``errors`` (anything else, with
the first few reasons) and ``tokens`` (prompt + completion tokens the
answers reported).
"""

from __future__ import annotations

import argparse
import json
import threading
import urllib.error
import urllib.request
from typing import Any


def run(url: str, key: str, clients: int, requests: int, max_tokens: int,
        model: str) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": 0, "refused": 0, "rate_limited": 0, "errors": 0,
                           "tokens": 0, "reasons": []}
    lock = threading.Lock()

    def client(i: int) -> None:
        for j in range(requests):
            body = json.dumps({"model": model, "max_tokens": max_tokens, "messages": [
                {"role": "user", "content": f"client {i} request {j}: tell me a story"}]})
            req = urllib.request.Request(url + "/v1/chat/completions", data=body.encode(),
                                         headers={"Authorization": f"Bearer {key}",
                                                  "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    doc = json.loads(r.read())
                u = doc.get("usage") or {}
                with lock:
                    out["ok"] += 1
                    out["tokens"] += int(u.get("prompt_tokens", 0)) + int(
                        u.get("completion_tokens", 0))
            except urllib.error.HTTPError as e:
                try:
                    code = json.loads(e.read())["error"].get("code")
                except (ValueError, KeyError, TypeError, AttributeError):
                    code = None
                with lock:
                    if code == "insufficient_quota":
                        out["refused"] += 1
                    elif code == "rate_limit_exceeded":
                        out["rate_limited"] += 1
                    else:
                        out["errors"] += 1
                        if len(out["reasons"]) < 5:
                            out["reasons"].append(f"HTTP {e.code} {code}")
            except OSError as e:
                with lock:
                    out["errors"] += 1
                    if len(out["reasons"]) < 5:
                        out["reasons"].append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--requests", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=50)
    p.add_argument("--model", default="sim-model")
    a = p.parse_args()
    print(json.dumps(run(a.url, a.key, a.clients, a.requests, a.max_tokens, a.model)))


if __name__ == "__main__":
    main()
