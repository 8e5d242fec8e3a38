"""Host facts from psutil and the OS: CPU, memory, disk, OS, network interfaces.

Every function here is one probe: it reads one thing and returns plain
msgpack-able values.  Callers (``swarmd.hw.probes``) isolate each probe so one
failing (a container without /proc, an odd psutil build) never hides the rest.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import socket
from pathlib import Path
from typing import Any

import psutil


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU model name: /proc/cpuinfo ``model name`` (or ``Hardware``), else platform."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "cpu model", "Processor"):
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu(model: str | None = None) -> dict[str, Any]:
    threads = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    cores = psutil.cpu_count(logical=False) or threads
    return {
        "model": model if model is not None else cpu_model(),
        "arch": platform.machine() or "unknown",
        "cores": int(cores),
        "threads": int(threads),
    }


def memory() -> dict[str, Any]:
    return {"total": int(psutil.virtual_memory().total)}


def disk(data_dir: Path | None) -> dict[str, Any]:
    """Size and free space of the file system holding ``data_dir`` (or its nearest parent)."""
    path = Path(data_dir) if data_dir is not None else Path.cwd()
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = psutil.disk_usage(str(path))
    return {"total": int(usage.total), "free": int(usage.free)}


def os_info() -> dict[str, Any]:
    return {"system": platform.system(), "release": platform.release()}


def interfaces() -> list[dict[str, Any]]:
    """Interfaces with at least one non-loopback IP address, and whether each is up."""
    try:
        stats = psutil.net_if_stats()
    except Exception:  # some containers hide /sys/class/net details
        stats = {}
    out: list[dict[str, Any]] = []
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        ips: list[str] = []
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            text = a.address.split("%", 1)[0]
            try:
                if ipaddress.ip_address(text).is_loopback:
                    continue
            except ValueError:
                continue
            ips.append(text)
        if ips:
            st = stats.get(name)
            out.append({"name": name, "addrs": ips, "up": bool(st.isup) if st else None})
    return out


def load_avg() -> list[float]:
    try:
        one, five, fifteen = os.getloadavg()
    except (OSError, AttributeError):
        one, five, fifteen = psutil.getloadavg()
    return [round(one, 2), round(five, 2), round(fifteen, 2)]


def host_load() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {
        "cpu_percent": float(psutil.cpu_percent(interval=None)),
        "load_avg": load_avg(),
        "memory_used": int(vm.total - vm.available),
        "memory_available": int(vm.available),
    }
