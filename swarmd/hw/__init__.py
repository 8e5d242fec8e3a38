"""Hardware facts for the node record: ``capabilities()`` and ``load()``.

Both use one process-wide :class:`~swarmd.hw.probes.HwProbes`, created on first
use (no import-time work), so NVML is initialised once.  Keys and units are
specified in protocol/records-capabilities.md.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from swarmd.hw.probes import HwProbes

__all__ = ["HwProbes", "capabilities", "load"]

_default: HwProbes | None = None
_lock = threading.Lock()


def _probes() -> HwProbes:
    global _default
    with _lock:
        if _default is None:
            _default = HwProbes()
        return _default


def capabilities(data_dir: Path | None = None) -> dict[str, Any]:
    """This machine's capabilities (``record["caps"]``); never raises."""
    return _probes().capabilities(data_dir)


def load() -> dict[str, Any]:
    """This machine's live load (``record["load"]``); cheap, never raises."""
    return _probes().load()
