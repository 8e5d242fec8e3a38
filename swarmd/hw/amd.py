"""AMD GPUs through ``rocm-smi --json``.

Theory of operation
-------------------
When a ``rocm-smi`` executable is on PATH we run it once per probe (5 s time
limit) with ``--showproductname --showmeminfo vram --showuse --showtemp
--showpower --json`` and parse its output: a JSON object with one key per card
(``card0``, ``card1``...) whose values are strings keyed by human labels that
changed across ROCm releases.  So fields are found by label fragments
("VRAM Total Memory (B)", "GPU use (%)", "Temperature (Sensor edge) (C)",
"...Power (W)"), and anything not found is ``None``.

The runner is injectable so tests feed recorded outputs.  Load readings are
cached for ``min_interval`` seconds: a subprocess every load tick would cost
more than the reading is worth.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

ROCM_ARGS = [
    "--showproductname",
    "--showmeminfo",
    "vram",
    "--showuse",
    "--showtemp",
    "--showpower",
    "--json",
]

# Returns rocm-smi's stdout, or None when rocm-smi is not installed.
Runner = Callable[[], str | None]


def run_rocm_smi(timeout: float = 5.0) -> str | None:
    exe = shutil.which("rocm-smi")
    if exe is None:
        return None
    proc = subprocess.run(
        [exe, *ROCM_ARGS], capture_output=True, text=True, timeout=timeout, check=False
    )
    if not proc.stdout.strip():
        raise RuntimeError(f"rocm-smi exit {proc.returncode}: {proc.stderr.strip()[:200]}")
    return proc.stdout


def _num(value: Any) -> float | None:
    if value is None:
        return None
    m = re.search(r"-?\d+(?:\.\d+)?", str(value))
    return float(m.group()) if m else None


def _find(card: dict[str, Any], *fragments: str) -> Any:
    """The first value whose label contains every fragment (case-insensitive)."""
    for key, value in card.items():
        k = key.lower()
        if all(f.lower() in k for f in fragments):
            return value
    return None


def parse_rocm_smi(text: str) -> list[dict[str, Any]]:
    """Parse ``rocm-smi --json`` output into caps-style GPU rows (sorted by card)."""
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("rocm-smi JSON is not an object")
    cards = []
    for key, card in doc.items():
        m = re.fullmatch(r"card(\d+)", str(key))
        if m and isinstance(card, dict):
            cards.append((int(m.group(1)), card))
    rows: list[dict[str, Any]] = []
    for index, card in sorted(cards):
        name = (
            _find(card, "card series")
            or _find(card, "card model")
            or _find(card, "device name")
            or _find(card, "marketing name")
            or "AMD GPU"
        )
        total = _num(_find(card, "vram total memory"))
        used = _num(_find(card, "vram total used"))
        temp = _num(_find(card, "temperature", "edge")) or _num(_find(card, "temperature"))
        power = _num(_find(card, "power (w)"))
        util = _num(_find(card, "gpu use"))
        rows.append(
            {
                "index": index,
                "vendor": "amd",
                "name": str(name),
                "memory_total": int(total) if total is not None else None,
                "memory_used": int(used) if used is not None else None,
                "utilization": util,
                "temperature": temp,
                "power_w": power,
            }
        )
    return rows


LOAD_KEYS = ("index", "utilization", "memory_used", "temperature", "power_w")


class RocmProbe:
    def __init__(
        self,
        runner: Runner = run_rocm_smi,
        min_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runner = runner
        self._min_interval = min_interval
        self._clock = clock
        self._cached: tuple[float, list[dict[str, Any]]] | None = None
        self.note = ""
        self.present = False

    def capabilities(self) -> list[dict[str, Any]]:
        """GPU rows; ``note`` says why there are none.  Never raises."""
        try:
            text = self._runner()
        except Exception as exc:
            self.note = f"rocm-smi failed: {type(exc).__name__}: {exc}"
            return []
        if text is None:
            self.present = False
            self.note = ""
            return []
        self.present = True
        try:
            rows = parse_rocm_smi(text)
        except Exception as exc:
            self.note = f"rocm-smi output unreadable: {type(exc).__name__}: {exc}"
            return []
        self.note = "" if rows else "rocm-smi reports no AMD GPU"
        self._cached = (self._clock(), rows)
        return rows

    def load(self) -> list[dict[str, Any]]:
        now = self._clock()
        if self._cached is None or now - self._cached[0] >= self._min_interval:
            rows = self.capabilities()
            self._cached = (now, rows)
        return [{k: r.get(k) for k in LOAD_KEYS} for r in self._cached[1]]
