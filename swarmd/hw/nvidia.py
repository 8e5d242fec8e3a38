"""NVIDIA GPUs through NVML (module ``pynvml`` from the nvidia-ml-py package).

Theory of operation
-------------------
:class:`NvmlProbe` initialises NVML once and keeps the device handles, so the
load probe (every couple of seconds) costs a handful of NVML calls and no
re-initialisation.  If the library is missing, ``nvmlInit`` fails (no driver)
or no device is present, the probe reports no GPUs and a one-line ``note``
saying why; it never raises.  A failed init is remembered: NVML is not retried
on every load tick.

The NVML module is injectable (``loader``) so tests can feed a fake one.
Units: bytes, percent 0..100, degrees C, watts (NVML gives milliwatts).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def _import_pynvml() -> Any:
    import pynvml

    return pynvml


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


class NvmlProbe:
    def __init__(self, loader: Callable[[], Any] = _import_pynvml) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._done = False
        self.note = ""

    def _init(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            nvml = self._loader()
        except Exception as exc:  # ImportError, or anything odd in the module
            self.note = f"NVML unavailable: {_err(exc)}"
            return
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.note = f"NVML unavailable: {_err(exc)}"
            return
        try:
            count = int(nvml.nvmlDeviceGetCount())
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:
            self.note = f"NVML error: {_err(exc)}"
            self._handles = []
        self._nvml = nvml
        if not self._handles and not self.note:
            self.note = "no NVIDIA GPU"

    def _memory(self, handle: Any) -> Any:
        """Memory info; v2 (as nvidia-smi shows it: driver-reserved memory not "used") if known."""
        nvml = self._nvml
        v2 = getattr(nvml, "nvmlMemory_v2", None)
        if v2 is not None:
            try:
                return nvml.nvmlDeviceGetMemoryInfo(handle, version=v2)
            except Exception:
                pass
        return nvml.nvmlDeviceGetMemoryInfo(handle)

    def _read(self, index: int, handle: Any, with_name: bool) -> dict[str, Any]:
        nvml = self._nvml

        def get(fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except Exception:
                return None

        mem = get(lambda: self._memory(handle))
        util = get(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        temp = get(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        power_mw = get(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        row: dict[str, Any] = {"index": index}
        if with_name:
            name = get(lambda: nvml.nvmlDeviceGetName(handle))
            row["vendor"] = "nvidia"
            row["name"] = _text(name) if name is not None else "NVIDIA GPU"
            row["memory_total"] = int(mem.total) if mem is not None else None
        row["memory_used"] = int(mem.used) if mem is not None else None
        row["utilization"] = float(util.gpu) if util is not None else None
        row["temperature"] = float(temp) if temp is not None else None
        row["power_w"] = round(power_mw / 1000.0, 1) if power_mw is not None else None
        return row

    def capabilities(self) -> list[dict[str, Any]]:
        with self._lock:
            self._init()
            return [self._read(i, h, True) for i, h in enumerate(self._handles)]

    def load(self) -> list[dict[str, Any]]:
        with self._lock:
            self._init()
            return [self._read(i, h, False) for i, h in enumerate(self._handles)]

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:
                    pass
            self._nvml = None
            self._handles = []
            self._done = False
            self.note = ""
