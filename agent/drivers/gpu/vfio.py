"""Bind a GPU's whole IOMMU group to vfio-pci and give it back, from a record on disk.

The kernel's own sequence, per device: write "vfio-pci" to its
`driver_override`, unbind it from its driver, and ask the PCI core to probe it
again (`drivers_probe`), which now only vfio-pci may claim. Giving it back
reverses this with the driver on record. The record (one JSON file per GPU)
is written before the first change, so a restarted agent still restores the
drivers the host had.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from agent.drivers.gpu.base import GpuError
from agent.revert import Reverter
from hardware import pciids
from hardware.gpus import BRIDGE_CLASS, is_nvidia_gpu, passthrough_blocker
from hardware.model import PciDevice
from hardware.pci import DEVICES, group_members, probe_device, probe_iommu
from hardware.sysfs import Root

log = logging.getLogger(__name__)

VFIO = "vfio-pci"
# Writes a value into a sysfs attribute (relative to the root); the kernel acts on it.
SysfsWrite = Callable[[Path, str], None]


def write_attribute(path: Path, value: str) -> None:
    """One write(2) of `value`, as the kernel expects for sysfs attributes."""
    with open(path, "w") as f:
        f.write(value)


def modprobe(module: str) -> None:
    subprocess.run(["modprobe", module], check=True, capture_output=True, timeout=60)


class GroupBinder:
    """Hands IOMMU groups to vfio-pci and back; records live in `records`."""

    def __init__(self, root: Root, records: Path, write: SysfsWrite = write_attribute,
                 load_module: Callable[[str], None] = modprobe) -> None:
        self.root = root
        self.records = records
        self._write = write
        self._load_module = load_module

    # -- records -------------------------------------------------------------------------

    def _record_path(self, address: str) -> Path:
        return self.records / f"{address}.json"

    def record(self, address: str) -> dict[str, object] | None:
        """The record of a held GPU: {"owner": vm, "drivers": {address: driver or None}}."""
        try:
            data: dict[str, object] = json.loads(self._record_path(address).read_text())
        except FileNotFoundError:
            return None
        return data

    def _save(self, address: str, owner: str, drivers: dict[str, str | None]) -> None:
        self.records.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._record_path(address)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"owner": owner, "drivers": drivers}, indent=2))
        os.replace(tmp, path)  # a crash leaves the old record or the new one, never half

    def held(self) -> dict[str, str]:
        out = {}
        for path in sorted(self.records.glob("*.json")) if self.records.is_dir() else []:
            data = json.loads(path.read_text())
            out[path.stem] = str(data["owner"])
        return out

    # -- sysfs -----------------------------------------------------------------------------

    def _attr(self, rel: str, value: str) -> None:
        path = self.root.join(rel)
        try:
            self._write(path, value)
        except OSError as e:
            raise GpuError(f"writing {value.strip() or 'an empty value'!r} to /{rel} failed: "
                           f"{e.strerror or e}") from e

    def driver_of(self, address: str) -> str | None:
        return self.root.link_name(f"{DEVICES}/{address}/driver")

    def _bind_to(self, address: str, driver: str | None) -> None:
        """Make `driver` (None: no driver) the one driving `address`, and check it took."""
        current = self.driver_of(address)
        if current == driver:
            return
        self._attr(f"{DEVICES}/{address}/driver_override", driver or "\n")
        if current is not None:
            self._attr(f"{DEVICES}/{address}/driver/unbind", address)
        if driver is not None:
            self._attr("sys/bus/pci/drivers_probe", address)
        if self.driver_of(address) != driver:
            raise GpuError(f"{address} is driven by {self.driver_of(address) or 'no driver'} "
                           f"after asking for {driver or 'none'}")

    def _ensure_vfio(self) -> None:
        if self.root.exists(f"sys/bus/pci/drivers/{VFIO}"):
            return
        try:
            self._load_module("vfio-pci")
        except (OSError, subprocess.SubprocessError) as e:
            raise GpuError(f"cannot load the vfio-pci module: {e}") from e
        if not self.root.exists(f"sys/bus/pci/drivers/{VFIO}"):
            raise GpuError("the vfio-pci driver is not available after loading its module")

    # -- the contract ------------------------------------------------------------------------

    def members(self, address: str) -> tuple[PciDevice, list[PciDevice]]:
        """The GPU and every device of its IOMMU group that travels with it (bridges stay)."""
        ids = pciids.load(self.root)
        if not self.root.exists(f"{DEVICES}/{address}"):
            raise GpuError(f"no PCI device {address} on this node")
        gpu = probe_device(self.root, address, ids)
        if not is_nvidia_gpu(gpu):
            raise GpuError(f"{address} is not an NVIDIA GPU ({gpu.class_name})")
        iommu = probe_iommu(self.root)
        group = group_members(self.root, gpu.iommu_group) if gpu.iommu_group is not None else []
        devices = {a: probe_device(self.root, a, ids) for a in group}
        blocker = passthrough_blocker(self.root, gpu, devices, iommu)
        if blocker:
            raise GpuError(f"GPU {address} cannot be passed through: {blocker}")
        return gpu, [d for a, d in devices.items() if not d.class_id.startswith(BRIDGE_CLASS)]

    def attach(self, owner: str, address: str) -> list[str]:
        """Bind the group of GPU `address` to vfio-pci for `owner` (see GpuDriver)."""
        held = self.record(address)
        if held is not None:
            if held["owner"] != owner:
                raise GpuError(f"GPU {address} is already held for VM {held['owner']}")
            drivers = held["drivers"]
            assert isinstance(drivers, dict)
            if all(self.driver_of(a) == VFIO for a in drivers):
                return sorted(drivers)
        _, members = self.members(address)
        self._ensure_vfio()
        original = {d.address: self.driver_of(d.address) for d in members}
        if held is not None and isinstance(held["drivers"], dict):
            original = {**original, **held["drivers"]}  # a half-done attach: keep the first record
        with Reverter() as revert:
            self._save(address, owner, original)
            revert.add(lambda: self._record_path(address).unlink(missing_ok=True), "record")
            for dev in members:
                before = self.driver_of(dev.address)
                # registered first: a bind that fails half-way (unbound, not rebound) is undone too
                revert.add(functools.partial(self._restore, dev.address, before), dev.address)
                self._bind_to(dev.address, VFIO)
            revert.success()
        log.info("GPU %s: group %s bound to vfio-pci for %s", address, sorted(original), owner)
        return sorted(original)

    def _restore(self, address: str, driver: str | None) -> None:
        self._bind_to(address, driver)
        self._attr(f"{DEVICES}/{address}/driver_override", "\n")

    def release(self, address: str) -> None:
        """Restore the drivers on record for GPU `address`'s group, then drop the record."""
        held = self.record(address)
        if held is None:
            return
        drivers = held["drivers"]
        assert isinstance(drivers, dict)
        for member, driver in sorted(drivers.items()):
            self._restore(member, driver)
        self._record_path(address).unlink()
        log.info("GPU %s: group given back to %s", address, drivers)
