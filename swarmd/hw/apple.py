"""Apple Silicon (macOS): chip name and unified memory from ``sysctl``.

The sysctl reader is injectable (``name -> value or None``) so tests run on any
OS.  On Apple Silicon the GPU shares the unified memory; we report it both as
``caps["apple"]`` and as one GPU row with vendor ``apple``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

Sysctl = Callable[[str], str | None]


def read_sysctl(name: str) -> str | None:
    try:
        proc = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = proc.stdout.strip()
    return out if proc.returncode == 0 and out else None


def apple_silicon(sysctl: Sysctl = read_sysctl) -> dict[str, Any] | None:
    """``{"chip", "unified_memory"}`` on Apple Silicon, else None."""
    brand = sysctl("machdep.cpu.brand_string")
    if not brand or not brand.startswith("Apple"):
        return None
    mem_text = sysctl("hw.memsize")
    try:
        mem = int(mem_text) if mem_text else None
    except ValueError:
        mem = None
    return {"chip": brand, "unified_memory": mem}


def gpu_row(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": 0,
        "vendor": "apple",
        "name": f"{info['chip']} GPU",
        "memory_total": info["unified_memory"],
        "memory_used": None,
        "utilization": None,
        "temperature": None,
        "power_w": None,
    }
