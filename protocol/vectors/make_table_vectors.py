"""Regenerate protocol/vectors/tables.json (golden replicated-table vectors).

Run: PYTHONPATH=. .venv/bin/python protocol/vectors/make_table_vectors.py
Tests compare swarmd.core.replica against the committed file, never this script.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgpack

from swarmd.core.hlc import Hlc, Stamp
from swarmd.core.replica import Entry, Replicas, Table, TableSpec

LWW = TableSpec("keys", final_tombstones=True)
MAX = TableSpec("usage", kind="max")


def main() -> None:
    out: dict[str, object] = {"about": __doc__.splitlines()[0]}
    r = Replicas("nodeA", (LWW, MAX), Hlc("nodeA"))
    r.write("keys", "0123456789ab", {"name": "team"}, 1_790_000_000_000)
    delta = [a for a in r.drain() if type(a).__name__ == "Broadcast"][0]
    out["delta"] = {"user_key": delta.key, "payload_hex": delta.payload.hex()}  # type: ignore[attr-defined]
    t = Table(LWW)
    t.merge(Entry("k1", Stamp(5, 0, "a"), {"v": 1}))
    t.merge(Entry("k2", Stamp(6, 1, "b"), None))
    m = Table(MAX)
    m.merge(Entry("a|d20261203|*", Stamp(1, 0, "a"), (3, 10, 20, 0, 0)))
    out["digests"] = {"lww": t.digest(), "lww_buckets": t.bucket_hashes(),
                      "max": m.digest()}
    q = Replicas("nodeA", (LWW,), Hlc("nodeA"))
    q.tables["keys"].merge(Entry("k1", Stamp(5, 0, "a"), {"v": 1}))
    q.tick(10.0, {"nodeB": {"keys": "0"}}, lambda xs: xs[0])
    sync = [a for a in q.drain() if type(a).__name__ == "Direct"][0]
    out["query"] = {"to": sync.to, "payload_hex": sync.payload.hex()}  # type: ignore[attr-defined]
    out["invalid_entries"] = [
        ["", [1, 0, "n"], {}], ["k", [1, 0], {}], ["k", [1.5, 0, "n"], {}],
        ["k", [1, 0, "n"], "string"], ["k", [1, 0, "n"], {"x": "y" * 9000}],
    ]
    out["invalid_messages_hex"] = [
        b"\xc1".hex(), msgpack.packb([1]).hex(), msgpack.packb({"t": "nope", "o": "d"}).hex(),
        msgpack.packb({"t": "keys", "o": "q", "b": b"\x00" * 10}).hex(),
        msgpack.packb({"t": "keys", "o": "zz"}).hex(),
    ]
    path = Path(__file__).with_name("tables.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
