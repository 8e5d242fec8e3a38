"""Fake hardware back-ends for swarmd.hw tests: NVML module, rocm-smi output, sysctl."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class FakeNVMLError(Exception):
    pass


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    total: int = 80 * 1024**3
    used: int = 1024**3
    util: int = 37
    temp: int = 41
    power_mw: int = 123_400


@dataclass
class _Mem:
    total: int
    used: int
    free: int


@dataclass
class _Util:
    gpu: int
    memory: int


class FakeNVML:
    """Enough of the ``pynvml`` module for :class:`swarmd.hw.nvidia.NvmlProbe`."""

    NVML_TEMPERATURE_GPU = 0
    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[FakeGpu] | None = None, init_error: str | None = None,
                 name_bytes: bool = False, reserved: int | None = None) -> None:
        self.gpus = list(gpus or [])
        self.init_error = init_error
        self.name_bytes = name_bytes
        # reserved set: NVML v2 memory info exists and "used" excludes driver-reserved bytes
        self.reserved = reserved
        if reserved is not None:
            self.nvmlMemory_v2 = 0x02000028
        self.calls: dict[str, int] = {}
        self.broken: set[str] = set()  # method names that raise

    def _hit(self, fn: str) -> None:
        self.calls[fn] = self.calls.get(fn, 0) + 1
        if fn in self.broken:
            raise FakeNVMLError(f"{fn}: Not Supported")

    def nvmlInit(self) -> None:
        self._hit("nvmlInit")
        if self.init_error:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self._hit("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:
        self._hit("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        self._hit("nvmlDeviceGetHandleByIndex")
        return self.gpus[i]

    def nvmlDeviceGetName(self, h: FakeGpu) -> str | bytes:
        self._hit("nvmlDeviceGetName")
        return h.name.encode() if self.name_bytes else h.name

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu, version: int | None = None) -> _Mem:
        self._hit("nvmlDeviceGetMemoryInfo")
        if version is not None and self.reserved is not None:
            return _Mem(h.total, h.used - self.reserved, h.total - h.used)
        return _Mem(h.total, h.used, h.total - h.used)

    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> _Util:
        self._hit("nvmlDeviceGetUtilizationRates")
        return _Util(h.util, 0)

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        self._hit("nvmlDeviceGetTemperature")
        return h.temp

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        self._hit("nvmlDeviceGetPowerUsage")
        return h.power_mw


def nvml_loader(fake: FakeNVML) -> Callable[[], Any]:
    return lambda: fake


def missing_nvml() -> Any:
    raise ImportError("No module named 'pynvml'")


# Output shape of `rocm-smi --showproductname --showmeminfo vram --showuse --showtemp
# --showpower --json` (ROCm 5.x/6.x labels).
ROCM_TWO_CARDS = json.dumps({
    "card0": {
        "Temperature (Sensor edge) (C)": "45.0",
        "Temperature (Sensor junction) (C)": "50.0",
        "Average Graphics Package Power (W)": "35.0",
        "GPU use (%)": "12",
        "VRAM Total Memory (B)": "68702699520",
        "VRAM Total Used Memory (B)": "1073741824",
        "Card series": "AMD Instinct MI210",
        "Card model": "0x0c34",
        "Card vendor": "Advanced Micro Devices, Inc. [AMD/ATI]",
        "Card SKU": "D67301",
    },
    "card1": {
        "Temperature (Sensor edge) (C)": "40.0",
        "Current Socket Graphics Package Power (W)": "20.5",
        "GPU use (%)": "0",
        "VRAM Total Memory (B)": "68702699520",
        "VRAM Total Used Memory (B)": "12345",
        "Card Series": "AMD Instinct MI210",
    },
    "system": {"Driver version": "6.7.0"},
})


def rocm_runner(text: str | None) -> Callable[[], str | None]:
    return lambda: text


def no_rocm() -> str | None:
    return None


def sysctl(values: dict[str, str]) -> Callable[[str], str | None]:
    return lambda name: values.get(name)


APPLE_M2 = {"machdep.cpu.brand_string": "Apple M2 Max", "hw.memsize": "68719476736"}
INTEL_MAC = {"machdep.cpu.brand_string": "Intel(R) Core(TM) i9-9880H CPU @ 2.30GHz",
             "hw.memsize": "17179869184"}
