"""Compose the host, NVIDIA, AMD and Apple probes into ``caps`` and ``load``.

Theory of operation
-------------------
:class:`HwProbes` holds one instance of each GPU probe (so NVML is initialised
once and its handles kept) and builds the two documents of the node record
(see protocol/records-capabilities.md):

- :meth:`capabilities`: rarely changes; gathered at start-up.
- :meth:`load`: cheap, called every couple of seconds from a worker thread.

Each probe runs inside :func:`_guard`: an exception in one yields that part's
empty value and a note, never a failed document.  Everything that touches the
machine beyond psutil (NVML module, rocm-smi runner, sysctl reader, OS name)
is injectable, so tests run the whole composition with fakes.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from swarmd.hw import host
from swarmd.hw.amd import RocmProbe, Runner, run_rocm_smi
from swarmd.hw.apple import Sysctl, apple_silicon, gpu_row, read_sysctl
from swarmd.hw.nvidia import NvmlProbe, _import_pynvml

log = logging.getLogger("swarmd.hw")

T = TypeVar("T")


def _guard(what: str, fn: Callable[[], T], default: T, notes: list[str]) -> T:
    try:
        return fn()
    except Exception as exc:
        notes.append(f"{what} probe failed: {type(exc).__name__}: {exc}")
        log.debug("hw probe %s failed", what, exc_info=True)
        return default


def _dict(what: str, fn: Callable[[], dict[str, Any]], notes: list[str]) -> dict[str, Any]:
    return _guard(what, fn, {}, notes)


def _list(what: str, fn: Callable[[], list[dict[str, Any]]], notes: list[str]) -> list[dict[str, Any]]:
    return _guard(what, fn, [], notes)


class HwProbes:
    def __init__(
        self,
        *,
        nvml_loader: Callable[[], Any] = _import_pynvml,
        rocm_runner: Runner = run_rocm_smi,
        sysctl: Sysctl = read_sysctl,
        system: Callable[[], str] = platform.system,
        cpuinfo: Path = Path("/proc/cpuinfo"),
    ) -> None:
        self.nvml = NvmlProbe(nvml_loader)
        self.rocm = RocmProbe(rocm_runner)
        self._sysctl = sysctl
        self._system = system
        self._cpuinfo = cpuinfo

    def capabilities(self, data_dir: Path | None = None) -> dict[str, Any]:
        notes: list[str] = []
        system = _guard("os", self._system, "", notes)
        apple = (
            _guard("apple", lambda: apple_silicon(self._sysctl), None, notes)
            if system == "Darwin"
            else None
        )
        model = apple["chip"] if apple else _guard(
            "cpu model", lambda: host.cpu_model(self._cpuinfo), "unknown", notes
        )
        caps: dict[str, Any] = {
            "cpu": _dict("cpu", lambda: host.cpu(model), notes),
            "memory": _dict("memory", host.memory, notes),
            "disk": _dict("disk", lambda: host.disk(data_dir), notes),
            "os": _dict("os", host.os_info, notes),
            "interfaces": _list("interfaces", host.interfaces, notes),
        }
        nvidia = _list("nvidia", self.nvml.capabilities, notes)
        amd = _list("amd", self.rocm.capabilities, notes)
        gpus = [*nvidia, *amd]
        if apple:
            caps["apple"] = apple
            gpus.append(gpu_row(apple))
        for i, g in enumerate(gpus):
            g.setdefault("index", i)
        caps["gpus"] = gpus
        if not gpus:
            gpu_notes = [n for n in (self.nvml.note, self.rocm.note) if n]
            notes.insert(0, "no GPU" + (f" ({'; '.join(gpu_notes)})" if gpu_notes else ""))
        caps["gpu_note"] = "; ".join(notes)
        return caps

    def load(self) -> dict[str, Any]:
        notes: list[str] = []
        doc: dict[str, Any] = _dict("load", host.host_load, notes)
        gpus: list[dict[str, Any]] = []
        gpus += _list("nvidia", self.nvml.load, notes)
        if self.rocm.present:
            gpus += _list("amd", self.rocm.load, notes)
        doc["gpus"] = gpus
        return doc

    def close(self) -> None:
        self.nvml.close()
