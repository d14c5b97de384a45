"""agent.drivers.gpu.nvml: the real pynvml without a driver, then a fake pynvml with two GPUs."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from agent.drivers.gpu import nvml as nvml_mod
from agent.drivers.gpu.nvml import Nvml, XidWatcher, mig_memory_gb, pci_address
from agent.protocol import GpuTelemetry, MigInstance, MigProfile, MigState, NvmlGpu

MIB = 1024 * 1024
H100_MIB = 81559  # what an H100 80GB HBM3 reports as total memory


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition` until true; fail the test when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s")
        time.sleep(0.005)


# --- the real pynvml on this machine ---------------------------------------------------------

def test_real_nvml_without_driver() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        pass
    except pynvml.NVMLError as err:
        pytest.skip(f"NVML fails here with {err!r}, not LibraryNotFound")
    else:
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is installed here; the no-driver path cannot be observed")
    with Nvml() as nvml:
        assert nvml.available is False
        assert "no NVIDIA driver" in nvml.detail
        assert nvml.gpus() == []
        assert nvml.handles() == []
        watcher = XidWatcher(nvml)
        watcher.start()
        assert not watcher.running
        watcher.stop()
    nvml.close()  # twice is harmless


# --- a fake pynvml ----------------------------------------------------------------------------

class FakeError(Exception):
    """Stands for pynvml.NVMLError."""


class NotSupported(FakeError):
    pass


class InvalidArgument(FakeError):
    pass


class Timeout(FakeError):
    pass


class LibraryNotFound(FakeError):
    pass


class DriverNotLoaded(FakeError):
    pass


def unsupported(*_: Any) -> Any:
    raise NotSupported("Not Supported")


class FakePynvml:
    """The subset of pynvml the module calls, over two GPUs: an H100 in MIG mode and a 4090."""

    NVMLError = FakeError
    NVMLError_NotSupported = NotSupported
    NVMLError_InvalidArgument = InvalidArgument
    NVMLError_Timeout = Timeout
    NVMLError_LibraryNotFound = LibraryNotFound
    NVMLError_DriverNotLoaded = DriverNotLoaded
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC
    NVML_AGGREGATE_ECC = pynvml.NVML_AGGREGATE_ECC
    NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE
    NVML_GPU_INSTANCE_PROFILE_COUNT = pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT
    nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError
    c_nvmlGpuInstance_t = ctypes.py_object  # lets the fake put any object in the array

    def __init__(self, init_error: FakeError | None = None) -> None:
        self.init_error = init_error
        self.initialised = 0
        self.registered: list[str] = []
        self.freed: list[object] = []
        self.events: list[SimpleNamespace] = []
        self.lock = threading.Lock()
        self.bus = {"A": b"00000000:AB:00.0", "B": "00000000:01:00.0"}
        self.profiles = {  # GPU A: index -> (id, slices, instances, MiB, free)
            0: (0, 1, 7, 9856, 6),
            4: (4, 7, 1, 80896, 0),
        }
        self.gpu_instances = {0: [SimpleNamespace(
            id=3, profileId=0, placement=SimpleNamespace(start=2, size=1))]}

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.65.06"

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return "AB"[index]

    def nvmlDeviceGetPciInfo(self, h: str) -> SimpleNamespace:
        return SimpleNamespace(busId=self.bus[h])

    def nvmlDeviceGetName(self, h: str) -> str | bytes:
        return "NVIDIA H100 80GB HBM3" if h == "A" else b"NVIDIA GeForce RTX 4090"

    def nvmlDeviceGetUUID(self, h: str) -> str:
        return f"GPU-{h * 8}"

    def nvmlDeviceGetUtilizationRates(self, h: str) -> SimpleNamespace:
        return SimpleNamespace(gpu=37, memory=12) if h == "A" else SimpleNamespace(gpu=0, memory=1)

    def nvmlDeviceGetMemoryInfo(self, h: str) -> SimpleNamespace:
        total = (H100_MIB if h == "A" else 24564) * MIB
        return SimpleNamespace(total=total, free=total - 2 * MIB, used=2 * MIB)

    def nvmlDeviceGetTemperature(self, h: str, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return 41 if h == "A" else 55

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:
        return 123456 if h == "A" else 30500

    def nvmlDeviceGetEnforcedPowerLimit(self, h: str) -> int:
        return 700000 if h == "A" else unsupported()

    def nvmlDeviceGetTotalEccErrors(self, h: str, error_type: int, counter: int) -> int:
        assert error_type == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        if h == "B":
            raise NotSupported("Not Supported")
        return {pynvml.NVML_VOLATILE_ECC: 0, pynvml.NVML_AGGREGATE_ECC: 3}[counter]

    def nvmlDeviceGetMigMode(self, h: str) -> list[int]:
        return [1, 1] if h == "A" else unsupported()

    def nvmlDeviceGetGpuInstanceProfileInfo(self, h: str, index: int) -> SimpleNamespace:
        assert h == "A"
        if index not in self.profiles:
            raise (InvalidArgument if index % 2 else NotSupported)("no such profile")
        pid, slices, count, mib, _ = self.profiles[index]
        return SimpleNamespace(id=pid, sliceCount=slices, instanceCount=count, memorySizeMB=mib)

    def nvmlDeviceGetGpuInstanceRemainingCapacity(self, h: str, profile_id: int) -> int:
        return self.profiles[profile_id][4]

    def nvmlDeviceGetGpuInstances(self, h: str, profile_id: int, array: Any, count: Any) -> int:
        found = self.gpu_instances.get(profile_id, [])
        assert len(array) == self.profiles[profile_id][2]  # sized by the profile's instanceCount
        for i, info in enumerate(found):
            array[i] = info
        count.contents.value = len(found)
        return 0

    def nvmlGpuInstanceGetInfo(self, instance: SimpleNamespace) -> SimpleNamespace:
        return instance

    def nvmlEventSetCreate(self) -> object:
        return "event-set"

    def nvmlDeviceRegisterEvents(self, h: str, types: int, event_set: object) -> None:
        assert types == pynvml.nvmlEventTypeXidCriticalError and event_set == "event-set"
        if h == "B":
            raise NotSupported("Not Supported")
        self.registered.append(h)

    def nvmlEventSetWait(self, event_set: object, timeout_ms: int) -> SimpleNamespace:
        with self.lock:
            if self.events:
                return self.events.pop(0)
        time.sleep(min(timeout_ms, 10) / 1000)  # a real wait blocks until its timeout
        raise Timeout("Timeout")

    def nvmlEventSetFree(self, event_set: object) -> None:
        self.freed.append(event_set)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePynvml]:
    fake = FakePynvml()
    monkeypatch.setattr(nvml_mod, "pynvml", fake)
    yield fake


@pytest.mark.parametrize(("bus_id", "address"), [
    (b"00000000:17:00.0", "0000:17:00.0"),
    ("00000000:AB:1F.7", "0000:ab:1f.7"),
    ("0001:3B:00.0", "0001:3b:00.0"),
])
def test_pci_address(bus_id: str | bytes, address: str) -> None:
    assert pci_address(bus_id) == address


@pytest.mark.parametrize(("mib", "device_mib", "gb"), [
    (9856, H100_MIB, 10), (19968, H100_MIB, 20), (40448, H100_MIB, 40), (80896, H100_MIB, 80),
    (4864, 40536, 5), (9984, 40536, 10), (1536, None, 2),
])
def test_mig_memory_gb(mib: int, device_mib: int | None, gb: int) -> None:
    assert mig_memory_gb(mib, device_mib * MIB if device_mib else None) == gb


def test_gpus_read_every_field_and_none_where_unsupported(fake: FakePynvml) -> None:
    with Nvml() as nvml:
        assert nvml.available
        assert nvml.detail == "NVIDIA driver 580.65.06: 2 GPU(s) in NVML"
        gpus = nvml.gpus()
    assert fake.initialised == 0  # closed by the with block
    assert gpus == [
        NvmlGpu(
            address="0000:ab:00.0", name="NVIDIA H100 80GB HBM3", uuid="GPU-AAAAAAAA",
            telemetry=GpuTelemetry(
                utilization_pct=37, memory_utilization_pct=12,
                memory_total_bytes=H100_MIB * MIB, memory_used_bytes=2 * MIB,
                temperature_c=41, power_w=123.456, power_limit_w=700.0,
                ecc_uncorrected_volatile=0, ecc_uncorrected_aggregate=3),
            mig=MigState(
                current=True, pending=True,
                profiles=[
                    MigProfile(profile_id=0, name="1g.10gb", slices=1, memory_mib=9856,
                               max_instances=7, free_instances=6),
                    MigProfile(profile_id=4, name="7g.80gb", slices=7, memory_mib=80896,
                               max_instances=1, free_instances=0),
                ],
                instances=[MigInstance(instance_id=3, profile_id=0, start=2, size=1)])),
        NvmlGpu(
            address="0000:01:00.0", name="NVIDIA GeForce RTX 4090", uuid="GPU-BBBBBBBB",
            telemetry=GpuTelemetry(
                utilization_pct=0, memory_utilization_pct=1,
                memory_total_bytes=24564 * MIB, memory_used_bytes=2 * MIB,
                temperature_c=55, power_w=30.5, power_limit_w=None,
                ecc_uncorrected_volatile=None, ecc_uncorrected_aggregate=None),
            mig=None),
    ]


def test_mig_off_lists_profiles_but_no_instances(fake: FakePynvml) -> None:
    fake.nvmlDeviceGetMigMode = lambda h: [0, 1] if h == "A" else unsupported()  # type: ignore[method-assign]
    with Nvml() as nvml:
        mig = nvml.gpus()[0].mig
    assert mig is not None
    assert (mig.current, mig.pending) == (False, True)
    assert [p.name for p in mig.profiles] == ["1g.10gb", "7g.80gb"]
    assert mig.instances == []


def test_one_failing_gpu_is_skipped_not_the_others(fake: FakePynvml) -> None:
    def handle(index: int) -> str:
        if index == 0:
            raise FakeError("GPU is lost")
        return "B"

    fake.nvmlDeviceGetHandleByIndex = handle  # type: ignore[method-assign]
    with Nvml() as nvml:
        assert [g.address for g in nvml.gpus()] == ["0000:01:00.0"]


@pytest.mark.parametrize(("error", "detail"), [
    (LibraryNotFound(), "no NVIDIA driver (NVML library not found): no NVIDIA GPUs"),
    (DriverNotLoaded(), "NVIDIA driver not loaded (NVML: Driver Not Loaded): no NVIDIA GPUs"),
    (FakeError("Insufficient Permissions"),
     "NVML could not be initialised (Insufficient Permissions): no NVIDIA GPUs"),
])
def test_init_failure_means_no_gpus(fake: FakePynvml, error: FakeError, detail: str) -> None:
    fake.init_error = error
    nvml = Nvml()
    assert (nvml.available, nvml.detail) == (False, detail)
    assert nvml.gpus() == []
    watcher = XidWatcher(nvml)
    watcher.start()
    assert not watcher.running
    watcher.stop()
    nvml.close()
    assert fake.initialised == 0  # no shutdown without an init


def test_xid_watcher_keeps_recent_events_per_gpu(fake: FakePynvml) -> None:
    nvml = Nvml()
    watcher = XidWatcher(nvml, timeout_ms=20)
    watcher.start()
    try:
        assert fake.registered == ["A"]  # B refused registration and was skipped
        threads = [t for t in threading.enumerate() if t.name == "nvml-xid"]
        assert len(threads) == 1 and threads[0].daemon
        with fake.lock:
            fake.events += [SimpleNamespace(device="A", eventData=79),
                            SimpleNamespace(device="A", eventData=48)]
        wait_until(lambda: len(watcher.recent("0000:ab:00.0")) == 2)
        events = watcher.recent("0000:ab:00.0")
        assert [e.xid for e in events] == [79, 48]
        assert events[0].at <= events[1].at and events[0].at.tzinfo is not None
        assert watcher.recent("0000:01:00.0") == []
        gpus = nvml.gpus(xids=watcher)
        assert [e.xid for e in gpus[0].telemetry.xid_events] == [79, 48]
        assert gpus[1].telemetry.xid_events == []
    finally:
        watcher.stop()
    assert not threads[0].is_alive()
    assert not watcher.running
    assert fake.freed == ["event-set"]
    nvml.close()


def test_xid_watcher_keeps_only_the_last(fake: FakePynvml) -> None:
    with Nvml() as nvml:
        watcher = XidWatcher(nvml, timeout_ms=20, keep=3)
        with fake.lock:
            fake.events += [SimpleNamespace(device="A", eventData=x) for x in range(1, 6)]
        watcher.start()
        wait_until(lambda: [e.xid for e in watcher.recent("0000:ab:00.0")] == [3, 4, 5])
        watcher.stop()
