"""The compact model inventory a node gossips in its record (pure functions).

A node's record says which manifests it holds complete, as
``[[<manifest sha256 hex>, name, alias, ...], ...]`` sorted by name: digests
and names, never file lists, so a 50-model store costs about 5 KB before
compression.  :func:`parse_inventory` reads a peer's entry defensively (a
record is untrusted input): malformed items are dropped, never raised.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from swarmd.models.spec import valid_name
from swarmd.models.store import StoredModel

#: Most models listed in one record (the rest are left out, oldest use first).
MAX_ENTRIES = 256
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def inventory(models: Iterable[StoredModel]) -> list[list[str]]:
    """What to put in the node record: complete manifests, by digest and names."""
    ms = sorted(models, key=lambda m: -m.last_used)[:MAX_ENTRIES]
    out = [[m.digest.removeprefix("sha256:"), *m.manifest.names] for m in ms]
    return sorted(out, key=lambda e: (e[1], e[0]))


def parse_inventory(value: Any) -> dict[str, tuple[str, ...]]:
    """A peer's inventory -> {``sha256:<hex>``: names}; bad items are skipped."""
    out: dict[str, tuple[str, ...]] = {}
    if not isinstance(value, list):
        return out
    for item in value[:MAX_ENTRIES]:
        if not isinstance(item, list) or len(item) < 2 or len(item) > 34:
            continue
        digest, *names = item
        if not isinstance(digest, str) or not _HEX64.match(digest):
            continue
        good = tuple(n for n in names if isinstance(n, str) and valid_name(n))
        if good:
            out[f"sha256:{digest}"] = good
    return out


def holders(records: dict[str, Any], ref: str) -> list[str]:
    """Node ids whose inventory (``records``: node id -> inventory) holds ``ref``
    (a name, alias or ``sha256:`` digest) complete."""
    found = []
    for node_id, inv in records.items():
        for digest, names in parse_inventory(inv).items():
            if ref == digest or ref in names:
                found.append(node_id)
                break
    return sorted(found)
