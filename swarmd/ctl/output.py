"""Shared printing for swarmctl: JSON, human units, and rich tables (lazily imported)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def short_id(node_id: str) -> str:
    """Last 8 characters: libp2p ids share the ``12D3KooW`` prefix."""
    return node_id[-8:] if len(node_id) > 8 else node_id


def human_bytes(n: Any) -> str:
    if not isinstance(n, int | float) or n < 0:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"


def human_age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def cpu_text(caps: dict[str, Any]) -> str:
    cpu = caps.get("cpu") or {}
    if not cpu:
        return "-"
    cores = cpu.get("cores", "?")
    model = str(cpu.get("model") or "")
    return f"{cores}c {model}".strip()


def gpu_text(caps: dict[str, Any]) -> str:
    gpus = caps.get("gpus") or []
    if not gpus:
        return "-"
    names: dict[str, int] = {}
    for g in gpus:
        name = str(g.get("name") or g.get("vendor") or "GPU")
        names[name] = names.get(name, 0) + 1
    return ", ".join(f"{n}x {name}" if n > 1 else name for name, n in names.items())


def load_text(load: dict[str, Any]) -> str:
    if not load:
        return "-"
    parts = []
    if isinstance(load.get("cpu_percent"), int | float):
        parts.append(f"cpu {load['cpu_percent']:.0f}%")
    la = load.get("load_avg")
    if isinstance(la, list) and la:
        parts.append(f"la {la[0]}")
    for g in load.get("gpus") or []:
        if isinstance(g.get("utilization"), int | float):
            parts.append(f"gpu{g.get('index', '')} {g['utilization']:.0f}%")
    return " ".join(parts) or "-"


def engines_text(engines: list[dict[str, Any]]) -> str:
    models = {m for e in engines for m in (e.get("models") or [])}
    return f"{len(engines)}/{len(models)}"


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console = Console(width=max(Console().width, 120), highlight=False)
    console.print(table)
