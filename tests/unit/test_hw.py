"""swarmd.hw: probes with fake NVML / rocm-smi / sysctl, and the real machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest

from swarmd.hw import HwProbes, capabilities, load
from swarmd.hw.amd import RocmProbe, parse_rocm_smi
from swarmd.hw.apple import apple_silicon
from swarmd.hw.host import cpu_model
from tests.fakes import hw as fk

CAPS_GPU_KEYS = {"index", "vendor", "name", "memory_total", "memory_used", "utilization",
                 "temperature", "power_w"}
LOAD_GPU_KEYS = {"index", "utilization", "memory_used", "temperature", "power_w"}


def probes(nvml: Any = fk.missing_nvml, rocm: Any = fk.no_rocm, system: str = "Linux",
           sysctl: dict[str, str] | None = None) -> HwProbes:
    return HwProbes(nvml_loader=nvml, rocm_runner=rocm, system=lambda: system,
                    sysctl=fk.sysctl(sysctl or {}))


def test_no_gpu_library_gives_note_not_exception(tmp_path: Path) -> None:
    caps = probes().capabilities(tmp_path)
    assert caps["gpus"] == []
    assert caps["gpu_note"].startswith("no GPU")
    assert "NVML unavailable" in caps["gpu_note"] and "pynvml" in caps["gpu_note"]
    assert "apple" not in caps
    assert probes().load()["gpus"] == []


def test_nvml_init_error_is_noted_and_not_retried() -> None:
    fake = fk.FakeNVML(init_error="Driver Not Loaded")
    p = probes(nvml=fk.nvml_loader(fake))
    caps = p.capabilities()
    assert caps["gpus"] == []
    assert "Driver Not Loaded" in caps["gpu_note"]
    for _ in range(3):
        assert p.load()["gpus"] == []
    assert fake.calls["nvmlInit"] == 1


def test_nvml_no_device() -> None:
    caps = probes(nvml=fk.nvml_loader(fk.FakeNVML(gpus=[]))).capabilities()
    assert caps["gpus"] == [] and "no NVIDIA GPU" in caps["gpu_note"]


def test_fake_nvml_two_gpus() -> None:
    fake = fk.FakeNVML([fk.FakeGpu(), fk.FakeGpu(name="NVIDIA A10", total=24 * 1024**3,
                                                  used=5, util=99, temp=70, power_mw=150_000)],
                       name_bytes=True)
    p = probes(nvml=fk.nvml_loader(fake))
    caps = p.capabilities()
    g0, g1 = caps["gpus"]
    assert set(g0) == CAPS_GPU_KEYS
    assert g0 == {"index": 0, "vendor": "nvidia", "name": "NVIDIA H100 80GB HBM3",
                  "memory_total": 80 * 1024**3, "memory_used": 1024**3, "utilization": 37.0,
                  "temperature": 41.0, "power_w": 123.4}
    assert g1["name"] == "NVIDIA A10" and g1["index"] == 1 and g1["power_w"] == 150.0
    assert caps["gpu_note"] == ""
    fake.gpus[1].util = 5
    ld = p.load()
    assert [set(g) for g in ld["gpus"]] == [LOAD_GPU_KEYS, LOAD_GPU_KEYS]
    assert ld["gpus"][1]["utilization"] == 5.0
    # handles are cached: one init and one handle lookup per GPU across calls
    p.load()
    assert fake.calls["nvmlInit"] == 1
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 2


def test_nvml_unsupported_query_gives_none() -> None:
    fake = fk.FakeNVML([fk.FakeGpu()])
    fake.broken = {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature"}
    g = probes(nvml=fk.nvml_loader(fake)).capabilities()["gpus"][0]
    assert g["power_w"] is None and g["temperature"] is None and g["utilization"] == 37.0


def test_nvml_v2_memory_excludes_reserved() -> None:
    fake = fk.FakeNVML([fk.FakeGpu(used=500)], reserved=500)
    assert probes(nvml=fk.nvml_loader(fake)).capabilities()["gpus"][0]["memory_used"] == 0


def test_parse_rocm_smi() -> None:
    rows = parse_rocm_smi(fk.ROCM_TWO_CARDS)
    assert [r["index"] for r in rows] == [0, 1]
    assert rows[0] == {"index": 0, "vendor": "amd", "name": "AMD Instinct MI210",
                       "memory_total": 68702699520, "memory_used": 1073741824,
                       "utilization": 12.0, "temperature": 45.0, "power_w": 35.0}
    assert rows[1]["power_w"] == 20.5 and rows[1]["name"] == "AMD Instinct MI210"


def test_rocm_in_caps_and_cached_load() -> None:
    calls = []

    def runner() -> str:
        calls.append(1)
        return fk.ROCM_TWO_CARDS

    p = probes(rocm=runner)
    caps = p.capabilities()
    assert [g["vendor"] for g in caps["gpus"]] == ["amd", "amd"]
    assert caps["gpu_note"] == ""
    ld = p.load()
    assert [set(g) for g in ld["gpus"]] == [LOAD_GPU_KEYS, LOAD_GPU_KEYS]
    p.load()
    assert len(calls) == 1  # within min_interval, load reuses the reading


def test_rocm_cache_expires() -> None:
    now = [0.0]
    calls = []

    def runner() -> str:
        calls.append(1)
        return fk.ROCM_TWO_CARDS

    r = RocmProbe(runner, min_interval=5.0, clock=lambda: now[0])
    r.load()
    now[0] = 4.9
    r.load()
    now[0] = 5.0
    r.load()
    assert len(calls) == 2


@pytest.mark.parametrize("out", ["not json", "[1,2]", "{}"])
def test_rocm_bad_output_gives_note(out: str) -> None:
    caps = probes(rocm=fk.rocm_runner(out)).capabilities()
    assert caps["gpus"] == [] and "rocm-smi" in caps["gpu_note"]


def test_rocm_runner_raising_is_isolated() -> None:
    def boom() -> str:
        raise TimeoutError("rocm-smi timed out after 5 s")

    caps = probes(rocm=boom).capabilities()
    assert caps["gpus"] == [] and "timed out" in caps["gpu_note"]
    assert caps["cpu"]["threads"] >= 1  # the other probes still ran


def test_nvidia_and_amd_together() -> None:
    caps = probes(nvml=fk.nvml_loader(fk.FakeNVML([fk.FakeGpu()])),
                  rocm=fk.rocm_runner(fk.ROCM_TWO_CARDS)).capabilities()
    assert [g["vendor"] for g in caps["gpus"]] == ["nvidia", "amd", "amd"]


def test_apple_silicon() -> None:
    caps = probes(system="Darwin", sysctl=fk.APPLE_M2).capabilities()
    assert caps["apple"] == {"chip": "Apple M2 Max", "unified_memory": 64 * 1024**3}
    assert caps["cpu"]["model"] == "Apple M2 Max"
    assert caps["gpus"][0]["vendor"] == "apple"
    assert caps["gpus"][0]["memory_total"] == 64 * 1024**3


def test_intel_mac_and_linux_have_no_apple_section() -> None:
    assert apple_silicon(fk.sysctl(fk.INTEL_MAC)) is None
    assert "apple" not in probes(system="Darwin", sysctl=fk.INTEL_MAC).capabilities()
    # sysctl is only consulted on macOS
    assert "apple" not in probes(system="Linux", sysctl=fk.APPLE_M2).capabilities()


def test_cpu_model_from_cpuinfo(tmp_path: Path) -> None:
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Fancy CPU 9000\n")
    assert cpu_model(f) == "Fancy CPU 9000"
    assert cpu_model(tmp_path / "missing")  # falls back to platform, never empty


def test_disk_of_missing_data_dir_uses_parent(tmp_path: Path) -> None:
    caps = probes().capabilities(tmp_path / "not" / "yet")
    assert caps["disk"]["total"] > 0 and 0 <= caps["disk"]["free"] <= caps["disk"]["total"]


def test_real_machine_capabilities_are_sane(tmp_path: Path) -> None:
    caps = capabilities(tmp_path)
    assert caps["cpu"]["cores"] >= 1 and caps["cpu"]["threads"] >= caps["cpu"]["cores"]
    assert caps["cpu"]["model"] and caps["cpu"]["arch"]
    assert caps["memory"]["total"] > 64 * 1024**2
    assert caps["disk"]["total"] > 0
    assert caps["os"]["system"]
    for iface in caps["interfaces"]:
        assert iface["name"] != "lo" and iface["addrs"] and iface["up"] in (True, False, None)
        assert "127.0.0.1" not in iface["addrs"] and "::1" not in iface["addrs"]
    assert isinstance(caps["gpus"], list) and isinstance(caps["gpu_note"], str)
    if not caps["gpus"]:
        assert caps["gpu_note"]
    msgpack.packb(caps)  # goes into the gossiped record


def test_real_machine_load_is_sane_and_cheap() -> None:
    import time

    load()
    t0 = time.perf_counter()
    ld = load()
    elapsed = time.perf_counter() - t0
    assert 0.0 <= ld["cpu_percent"] <= 100.0
    assert len(ld["load_avg"]) == 3 and all(x >= 0 for x in ld["load_avg"])
    assert ld["memory_used"] > 0 and ld["memory_available"] > 0
    assert isinstance(ld["gpus"], list)
    assert elapsed < 0.1, elapsed
    msgpack.packb(ld)
