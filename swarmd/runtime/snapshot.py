"""Compatibility name: the snapshot is pure data and lives in :mod:`swarmd.core.snapshot`.

Import from there; this alias remains only until every caller has moved
(tests/unit/test_layout.py fails if a swarmd module imports it).
"""

from __future__ import annotations

from swarmd.core.snapshot import NodeInfo, Snapshot, SnapshotBox

__all__ = ["NodeInfo", "Snapshot", "SnapshotBox"]
