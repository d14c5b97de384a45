"""GPU telemetry, MIG state and Xid errors read through NVML (the nvidia-ml-py `pynvml` module).

A node without an NVIDIA driver is normal: `Nvml` then reports `available` False with a
one-sentence `detail`, and every query returns an empty list instead of raising. A GPU that
does not support one reading (ECC on a consumer card, say) gets None for that field only.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

import pynvml

from agent.protocol import GpuTelemetry, MigInstance, MigProfile, MigState, NvmlGpu, XidEvent

log = logging.getLogger(__name__)

T = TypeVar("T")
Handle = Any  # an NVML device handle (a ctypes pointer)
XID_KEEP = 20
MIB = 1024 * 1024
GIB = 1024 * MIB

# Suffixes NVIDIA appends to profile names whose media engines differ from the plain profile.
_PROFILE_SUFFIX = {
    pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1: "+me",
    pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1: "+me",
    pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_GFX: "+gfx",
    pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE_GFX: "+gfx",
    pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE_GFX: "+gfx",
    pynvml.NVML_GPU_INSTANCE_PROFILE_4_SLICE_GFX: "+gfx",
    pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_NO_ME: "-me",
    pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE_NO_ME: "-me",
    pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME: "+me.all",
    pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE_ALL_ME: "+me.all",
}


def _text(value: str | bytes) -> str:
    # pynvml returns str from some calls and raw ctypes bytes from struct fields.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def pci_address(bus_id: str | bytes) -> str:
    """NVML's `00000000:17:00.0` as Linux sysfs writes it: `0000:17:00.0`."""
    domain, rest = _text(bus_id).strip().lower().split(":", 1)
    return f"{domain[-4:].rjust(4, '0')}:{rest}"


def _read(query: Callable[[], T]) -> T | None:
    """The query's result, or None when NVML refuses it (unsupported on this GPU, say)."""
    try:
        return query()
    except pynvml.NVMLError:
        return None


def mig_memory_gb(memory_mib: int, device_bytes: int | None) -> int:
    """The GB figure of a MIG profile name, computed as NVIDIA's go-nvlib does.

    The profile's share of the GPU is rounded up to eighths, then applied to the
    GPU's memory in whole GiB; without the GPU's memory, the profile's own is rounded.
    """
    if not device_bytes:
        return round(memory_mib / 1024)
    eighths = -(-memory_mib * MIB * 8 // device_bytes)  # ceiling division
    return round(eighths / 8 * (-(-device_bytes // GIB)))


class Nvml:
    """One NVML session. After construction, `available` says whether NVML answered.

    Construction never raises: an absent driver leaves `available` False, `detail` saying
    why, and every query returning an empty list.
    """

    def __init__(self) -> None:
        self.available = False
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            self.detail = _init_failure(err)
            return
        self.available = True
        version = _read(pynvml.nvmlSystemGetDriverVersion)
        count = _read(pynvml.nvmlDeviceGetCount)
        self.detail = (f"NVIDIA driver {_text(version) if version else '(version unknown)'}: "
                       f"{count if count is not None else 'unknown number of'} GPU(s) in NVML")

    def close(self) -> None:
        """End the session (stop its XidWatcher first); afterwards queries return empty lists.

        Calling it twice is harmless.
        """
        if not self.available:
            return
        self.available = False
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as err:
            log.warning("nvmlShutdown failed: %s", err)

    def __enter__(self) -> Nvml:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def handles(self) -> list[tuple[str, Handle]]:
        """(PCI address, handle) of every GPU NVML can open; a GPU it cannot is logged, skipped."""
        if not self.available:
            return []
        found = []
        for index in range(_read(pynvml.nvmlDeviceGetCount) or 0):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                found.append((pci_address(pynvml.nvmlDeviceGetPciInfo(handle).busId), handle))
            except pynvml.NVMLError as err:
                log.warning("NVML cannot open GPU %d: %s", index, err)
        return found

    def gpus(self, xids: XidWatcher | None = None) -> list[NvmlGpu]:
        """Every GPU NVML drives, with its telemetry, MIG state and `xids`' recent Xid errors.

        Empty when NVML is unavailable. A GPU whose name or UUID cannot be read is skipped.
        """
        result = []
        for address, handle in self.handles():
            try:
                name = _text(pynvml.nvmlDeviceGetName(handle))
                uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            except pynvml.NVMLError as err:
                log.warning("NVML cannot identify GPU %s: %s", address, err)
                continue
            telemetry = _telemetry(handle)
            if xids is not None:
                telemetry.xid_events = xids.recent(address)
            result.append(NvmlGpu(address=address, name=name, uuid=uuid, telemetry=telemetry,
                                  mig=_mig(handle, telemetry.memory_total_bytes)))
        return result


def _init_failure(err: Exception) -> str:
    """The sentence `Nvml.detail` holds when nvmlInit failed with `err`."""
    if isinstance(err, pynvml.NVMLError_LibraryNotFound):
        return "no NVIDIA driver (NVML library not found): no NVIDIA GPUs"
    if isinstance(err, pynvml.NVMLError_DriverNotLoaded):
        return "NVIDIA driver not loaded (NVML: Driver Not Loaded): no NVIDIA GPUs"
    return f"NVML could not be initialised ({err}): no NVIDIA GPUs"


def _telemetry(handle: Handle) -> GpuTelemetry:
    """One reading of the GPU; each value NVML refuses is None, the others are kept."""
    util = _read(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
    memory = _read(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
    power_mw = _read(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
    limit_mw = _read(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle))

    def ecc(counter: int) -> int | None:
        return _read(lambda: pynvml.nvmlDeviceGetTotalEccErrors(
            handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, counter))

    return GpuTelemetry(
        utilization_pct=util.gpu if util is not None else None,
        memory_utilization_pct=util.memory if util is not None else None,
        memory_total_bytes=memory.total if memory is not None else None,
        memory_used_bytes=memory.used if memory is not None else None,
        temperature_c=_read(
            lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
        power_w=power_mw / 1000 if power_mw is not None else None,
        power_limit_w=limit_mw / 1000 if limit_mw is not None else None,
        ecc_uncorrected_volatile=ecc(pynvml.NVML_VOLATILE_ECC),
        ecc_uncorrected_aggregate=ecc(pynvml.NVML_AGGREGATE_ECC),
    )


def _mig(handle: Handle, device_bytes: int | None) -> MigState | None:
    """The GPU's MIG modes, profiles and (with MIG on) GPU instances; None: no MIG."""
    modes = _read(lambda: pynvml.nvmlDeviceGetMigMode(handle))
    if modes is None:
        return None
    state = MigState(current=modes[0] == pynvml.NVML_DEVICE_MIG_ENABLE,
                     pending=modes[1] == pynvml.NVML_DEVICE_MIG_ENABLE)
    for index in range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
        # Profile indexes this GPU does not offer answer NotSupported or InvalidArgument.
        info = _read(partial(pynvml.nvmlDeviceGetGpuInstanceProfileInfo, handle, index))
        if info is None or info.sliceCount < 1:
            continue
        memory_mib = int(info.memorySizeMB)
        gb = mig_memory_gb(memory_mib, device_bytes)
        free = _read(partial(pynvml.nvmlDeviceGetGpuInstanceRemainingCapacity, handle, info.id))
        state.profiles.append(MigProfile(
            profile_id=info.id, slices=info.sliceCount, memory_mib=memory_mib,
            name=f"{info.sliceCount}g.{gb}gb{_PROFILE_SUFFIX.get(info.id, '')}",
            max_instances=info.instanceCount, free_instances=free or 0))
        if state.current and info.instanceCount > 0:
            state.instances.extend(_instances(handle, info.id, info.instanceCount))
    return state


def _instances(handle: Handle, profile_id: int, capacity: int) -> list[MigInstance]:
    """The GPU instances of one profile; empty (and logged) when NVML refuses to list them."""
    # pynvml mirrors the C call here: we pass the array and the count it fills in.
    array = (pynvml.c_nvmlGpuInstance_t * capacity)()
    count = ctypes.c_uint(0)
    try:
        pynvml.nvmlDeviceGetGpuInstances(handle, profile_id, array, ctypes.pointer(count))
        infos = [pynvml.nvmlGpuInstanceGetInfo(array[i]) for i in range(count.value)]
    except pynvml.NVMLError as err:
        log.warning("NVML cannot list GPU instances of MIG profile %d: %s", profile_id, err)
        return []
    return [MigInstance(instance_id=info.id, profile_id=info.profileId,
                        start=info.placement.start, size=info.placement.size) for info in infos]


class XidWatcher:
    """Collects the Xid errors NVML reports, the last `keep` per GPU, on a daemon thread.

    After `start()` the thread waits on an NVML event set holding every GPU that accepts
    Xid registration; after `stop()` the thread has ended and the set is freed.
    """

    def __init__(self, nvml: Nvml, timeout_ms: int = 500, keep: int = XID_KEEP) -> None:
        self.nvml = nvml
        self.timeout_ms = timeout_ms
        self.keep = keep
        self._events: dict[str, deque[XidEvent]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._set: Any = None

    def start(self) -> None:
        """Register the GPUs and start the thread; does nothing without NVML or any GPU."""
        if self._thread is not None or not self.nvml.available:
            return
        try:
            event_set = pynvml.nvmlEventSetCreate()
        except pynvml.NVMLError as err:
            log.warning("NVML event set unavailable, no Xid events: %s", err)
            return
        registered = 0
        for address, handle in self.nvml.handles():
            try:
                pynvml.nvmlDeviceRegisterEvents(
                    handle, pynvml.nvmlEventTypeXidCriticalError, event_set)
                registered += 1
            except pynvml.NVMLError as err:
                log.info("GPU %s reports no Xid events: %s", address, err)
        if registered == 0:
            _free(event_set)
            return
        self._set = event_set
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nvml-xid", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and join the thread, then free the event set (kept if the thread hangs)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=5 + 4 * self.timeout_ms / 1000)
        if thread.is_alive():
            # Freeing the set under a thread still waiting on it would crash the process.
            log.warning("Xid watcher thread did not stop; its NVML event set is leaked")
            return
        _free(self._set)
        self._set = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def recent(self, address: str) -> list[XidEvent]:
        """The last Xid errors of the GPU at `address`, oldest first."""
        with self._lock:
            return list(self._events.get(address, ()))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = pynvml.nvmlEventSetWait(self._set, self.timeout_ms)
            except pynvml.NVMLError_Timeout:
                continue
            except pynvml.NVMLError as err:
                log.warning("waiting for Xid events failed: %s", err)
                # Back off so a persistent failure does not spin the CPU.
                self._stop.wait(self.timeout_ms / 1000)
                continue
            self._record(data)

    def _record(self, data: Any) -> None:
        try:
            address = pci_address(pynvml.nvmlDeviceGetPciInfo(data.device).busId)
        except pynvml.NVMLError as err:
            log.warning("Xid %s on a GPU NVML cannot name: %s", data.eventData, err)
            return
        log.warning("GPU %s: Xid %s", address, data.eventData)
        event = XidEvent(xid=int(data.eventData), at=datetime.now(UTC))
        with self._lock:
            self._events.setdefault(address, deque(maxlen=self.keep)).append(event)


def _free(event_set: Any) -> None:
    try:
        pynvml.nvmlEventSetFree(event_set)
    except pynvml.NVMLError as err:
        log.warning("nvmlEventSetFree failed: %s", err)
