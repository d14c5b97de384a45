"""agent.drivers.gpu.nvml against the real NVIDIA driver and GPU(s) of this machine.

Skipped as a whole where NVML cannot start or sees no GPU. Run with `-s` to see what was read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.drivers.gpu.nvml import Nvml, XidWatcher
from agent.protocol import MigState, NvmlGpu

pytestmark = pytest.mark.integration

SYSFS_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def _why_skip() -> str | None:
    with Nvml() as probe:
        if not probe.available:
            return f"no NVIDIA driver/GPU on this machine: {probe.detail}"
        if not probe.handles():
            return f"NVML starts but sees no GPU here ({probe.detail})"
    return None


_reason = _why_skip()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)


@pytest.fixture(scope="module")
def nvml() -> Iterator[Nvml]:
    with Nvml() as session:
        yield session


@pytest.fixture(scope="module")
def gpus(nvml: Nvml) -> list[NvmlGpu]:
    found = nvml.gpus()
    print(f"\nNVML: {nvml.detail}")
    for gpu in found:
        t = gpu.telemetry
        mig = ("no MIG" if gpu.mig is None else
               f"MIG current={gpu.mig.current} pending={gpu.mig.pending} "
               f"profiles={[p.name for p in gpu.mig.profiles]} instances={len(gpu.mig.instances)}")
        print(f"  {gpu.address} {gpu.name} {gpu.uuid}: util={t.utilization_pct}% "
              f"mem={t.memory_used_bytes}/{t.memory_total_bytes} B temp={t.temperature_c} C "
              f"power={t.power_w}/{t.power_limit_w} W ecc(vol/agg)="
              f"{t.ecc_uncorrected_volatile}/{t.ecc_uncorrected_aggregate}; {mig}")
    return found


def test_every_gpu_is_read(gpus: list[NvmlGpu]) -> None:
    assert gpus, "NVML has GPU handles but gpus() returned none"
    for gpu in gpus:
        assert SYSFS_ADDRESS.match(gpu.address), gpu.address
        assert Path("/sys/bus/pci/devices", gpu.address).exists(), gpu.address
        assert gpu.name.strip()
        assert gpu.uuid.startswith("GPU-")
        t = gpu.telemetry
        assert t.memory_total_bytes is not None and t.memory_total_bytes > 0
        if t.temperature_c is not None:
            assert 0 <= t.temperature_c <= 120
        if t.memory_used_bytes is not None:
            assert t.memory_used_bytes <= t.memory_total_bytes


def test_mig_state_is_readable(gpus: list[NvmlGpu]) -> None:
    for gpu in gpus:
        assert gpu.mig is None or isinstance(gpu.mig, MigState)
        if gpu.mig is not None:
            names = [p.name for p in gpu.mig.profiles]
            assert len(names) == len(set(names)), names
            assert all(re.match(r"^\d+g\.\d+gb", name) for name in names), names
            if not gpu.mig.current:
                assert gpu.mig.instances == []


def test_xid_watcher_starts_and_stops(nvml: Nvml, gpus: list[NvmlGpu]) -> None:
    watcher = XidWatcher(nvml, timeout_ms=200)
    watcher.start()
    try:
        print(f"\nXid watcher running: {watcher.running}")
        for gpu in gpus:
            assert isinstance(watcher.recent(gpu.address), list)
    finally:
        watcher.stop()
    assert not watcher.running
