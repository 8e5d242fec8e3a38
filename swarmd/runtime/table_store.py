"""Replicated tables on this node's disk: ``data_dir/tables/<name>.msgpack``.

Each file is the whole table (tombstones included) as a msgpack list of
wire-form entries, replaced atomically (write a temporary file, fsync,
rename), so a crash leaves the old or the new copy, never half of one.  A
table changed by this node is saved at once (a key made here must survive
our own restart even if no peer heard of it yet); one changed by peers is
saved at most every :data:`SAVE_DELAY` seconds.  On start the node merges
what it saved (:meth:`swarmd.core.node.NodeMachine.load_table`) and
anti-entropy brings it up to date.  A file that cannot be read is renamed
aside (``.bad``) and logged, never fatal: peers hold the same table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgpack

from swarmd.core.replica import Entry

log = logging.getLogger("swarmd.tables")

#: Seconds a peer-made change may wait before it is written.
SAVE_DELAY = 1.0


class TableStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def load(self, name: str) -> list[Any]:
        path = self.dir / f"{name}.msgpack"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.error("cannot read table file %s: %s", path, exc)
            return []
        try:
            raw = msgpack.unpackb(data, raw=False)
            if not isinstance(raw, list):
                raise ValueError("not a list")
            return raw
        except Exception as exc:  # noqa: BLE001 -- any damage: set it aside
            bad = path.with_suffix(".bad")
            log.error("table file %s is damaged (%s); moved to %s", path, exc, bad)
            os.replace(path, bad)
            return []

    def save(self, name: str, entries: Iterable[Entry]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{name}.msgpack"
        tmp = path.with_suffix(".tmp")
        data = msgpack.packb([e.encode() for e in entries], use_bin_type=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def save_all(self, tables: Mapping[str, Mapping[str, Entry]], names: Iterable[str]) -> None:
        for name in names:
            try:
                self.save(name, tables[name].values())
            except OSError as exc:
                log.error("cannot save table %s: %s", name, exc)
