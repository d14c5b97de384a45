"""vGPUs as mediated devices: create one of a type on a GPU, list them, remove them."""

from __future__ import annotations

import logging
from pathlib import Path

from agent.drivers.gpu.base import GpuError
from agent.drivers.gpu.vfio import SysfsWrite, write_attribute
from agent.protocol import DesiredVgpu, MdevInstance
from hardware.gpus import mdev_types
from hardware.pci import DEVICES
from hardware.sysfs import Root

log = logging.getLogger(__name__)

MDEVS = "sys/bus/mdev/devices"


class MdevManager:
    def __init__(self, root: Root, write: SysfsWrite = write_attribute) -> None:
        self.root = root
        self._write = write

    def instances(self) -> list[MdevInstance]:
        """Every mediated device on the node, with its type and parent GPU."""
        out = []
        for uuid in self.root.entries(MDEVS):
            try:
                parent = Path(self.root.join(f"{MDEVS}/{uuid}").resolve()).parent.name
            except OSError:
                continue
            out.append(MdevInstance(
                uuid=uuid, type_id=self.root.link_name(f"{MDEVS}/{uuid}/mdev_type") or "unknown",
                parent=parent))
        return out

    def create(self, spec: DesiredVgpu) -> None:
        """See GpuDriver.create_vgpu."""
        existing = {m.uuid: m for m in self.instances()}.get(spec.uuid)
        if existing is not None:
            if (existing.type_id, existing.parent) != (spec.type_id, spec.parent):
                raise GpuError(f"vGPU {spec.uuid} exists as {existing.type_id} on "
                               f"{existing.parent}, not {spec.type_id} on {spec.parent}")
            return
        offered = {t.id: t for t in mdev_types(self.root, spec.parent)}
        if spec.type_id not in offered:
            known = ", ".join(sorted(offered)) or "none (no vGPU host driver)"
            raise GpuError(f"GPU {spec.parent} offers no vGPU type {spec.type_id}; "
                           f"it offers: {known}")
        if offered[spec.type_id].available_instances < 1:
            raise GpuError(f"GPU {spec.parent} has no {spec.type_id} "
                           f"({offered[spec.type_id].name}) instance left")
        rel = f"{DEVICES}/{spec.parent}/mdev_supported_types/{spec.type_id}/create"
        try:
            self._write(self.root.join(rel), spec.uuid)
        except OSError as e:
            raise GpuError(f"creating vGPU {spec.uuid} ({spec.type_id}) on {spec.parent} "
                           f"failed: {e.strerror or e}") from e
        log.info("vGPU %s (%s) created on %s", spec.uuid, spec.type_id, spec.parent)

    def remove(self, uuid: str) -> None:
        """See GpuDriver.remove_vgpu."""
        if not self.root.exists(f"{MDEVS}/{uuid}"):
            return
        try:
            self._write(self.root.join(f"{MDEVS}/{uuid}/remove"), "1")
        except OSError as e:
            raise GpuError(f"removing vGPU {uuid} failed: {e.strerror or e}",
                           retryable=True) from e
        log.info("vGPU %s removed", uuid)
