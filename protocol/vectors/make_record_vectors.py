"""Regenerate protocol/vectors/records.json (golden node-record vectors).

Run: PYTHONPATH=. .venv/bin/python protocol/vectors/make_record_vectors.py
Tests compare swarmd.core.record against the committed file, never against
this script.  Each ``parse`` case is a record as a peer might gossip it (JSON
stands in for msgpack: the same maps, lists, strings, numbers, booleans and
nulls) and what :func:`swarmd.core.record.parse_record` reads from it
(rendered by :func:`swarmd.core.record.describe`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack

from swarmd.core.record import describe, parse_record, self_record

ENGINE = {"id": "llamacpp-1", "kind": "llamacpp", "healthy": True,
          "models": ["qwen2.5:7b", "nomic-embed"],
          "load": {"running": 2, "waiting": 0, "kv_cache": 0.25, "capacity": 4},
          "capabilities": ["chat", "completions", "embeddings"],
          "model_capabilities": {"nomic-embed": ["embeddings"]}}

PARSE: list[tuple[str, Any]] = [
    ("full", {"name": "gpu-box", "addrs": ["/ip4/10.0.0.2/tcp/4100/p2p/12D3KooWB"],
              "started": 1700000000.5, "api": "0.0.0.0:4180",
              "caps": {"cpu": {"cores": 8}}, "load": {"cpu_percent": 12.5},
              "engines": [ENGINE], "draining": False,
              "dp": ["10.0.0.2:4101", "[fd00::2]:4101"]}),
    ("empty", {}),
    ("not_a_map", ["name", "x"]),
    ("future_version_and_fields", {"v": 2, "name": "n", "budget": {"share": 0.25},
                                   "engines": [{**ENGINE, "queue_model": "fifo",
                                                "load": {**ENGINE["load"], "queued": 3}}]}),
    ("wrong_types", {"v": "2", "name": 7, "addrs": "x", "started": "yesterday", "api": 4180,
                     "caps": [1], "load": "busy", "engines": {"id": "e"}, "draining": "yes"}),
    ("bad_engines_dropped", {"engines": [
        {"id": "", "models": ["m"]}, {"id": "e1"}, {"id": "e2", "models": "m"}, "e3",
        {"id": "e4", "models": ["m", 5, "", "x" * 300], "healthy": 1,
         "load": {"running": -1, "waiting": True, "kv_cache": 2.0, "capacity": 0},
         "capabilities": "chat", "model_capabilities": {"m": "chat", "n": ["embeddings"]}},
    ]}),
    ("dp_bounds", {"dp": [f"10.0.0.{i}:4101" for i in range(12)] + [7, ""]}),
    ("bounds", {"addrs": [f"/ip4/10.0.0.{i}/tcp/1" for i in range(40)],
                "engines": [{"id": f"e{i}", "models": []} for i in range(70)]}),
]


def main() -> None:
    me = self_record(name="gpu-box", addrs=["/ip4/10.0.0.2/tcp/4100/p2p/12D3KooWB"],
                     started=1700000000.5, api="127.0.0.1:4180", caps={"cpu": {"cores": 8}})
    doc = {
        "about": "node record vectors: protocol/records.md; regenerate with "
                 "protocol/vectors/make_record_vectors.py",
        "self_record": {"record": me,
                        "msgpack_hex": msgpack.packb(me, use_bin_type=True).hex()},
        "parse": [{"name": n, "input": raw, "parsed": describe(parse_record(raw))}
                  for n, raw in PARSE],
    }
    out = Path(__file__).with_name("records.json")
    out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
