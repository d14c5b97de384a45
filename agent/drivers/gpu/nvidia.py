"""The NVIDIA GPU driver: PCI discovery, vfio-pci passthrough, mdev vGPUs and NVML telemetry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.drivers.gpu.base import GpuDriver, GpuDriverInfo
from agent.drivers.gpu.mdev import MdevManager
from agent.drivers.gpu.nvml import Nvml, XidWatcher
from agent.drivers.gpu.vfio import GroupBinder, SysfsWrite, modprobe, write_attribute
from agent.protocol import DesiredVgpu, NodeGpu
from hardware.gpus import probe_gpus
from hardware.pci import probe_iommu, probe_pci
from hardware.sysfs import Root


class NvidiaGpuDriver(GpuDriver):
    info = GpuDriverInfo(name="nvidia", passthrough=True, vgpu=True, telemetry=True)

    def __init__(self, records: Path, root: Root | None = None,
                 write: SysfsWrite = write_attribute,
                 load_module: Callable[[str], None] = modprobe, telemetry: bool = True) -> None:
        self.root = root or Root("/")
        self.binder = GroupBinder(self.root, records, write, load_module)
        self.mdevs = MdevManager(self.root, write)
        # NVML speaks for the live host only; a recorded tree has no driver to ask.
        self.nvml = Nvml() if telemetry else None
        self.xids = XidWatcher(self.nvml) if self.nvml is not None else None
        if self.xids is not None:
            self.xids.start()

    def discover(self) -> tuple[list[NodeGpu], str]:
        pci = probe_pci(self.root)
        found = probe_gpus(self.root, pci, probe_iommu(self.root))
        nvml = {g.address: g for g in self.nvml.gpus(self.xids)} if self.nvml else {}
        mdevs = self.mdevs.instances()
        detail = self.nvml.detail if self.nvml else "NVML not consulted"
        return [NodeGpu(pci=g, mdevs=[m for m in mdevs if m.parent == g.address],
                        nvml=nvml.get(g.address)) for g in found], detail

    def attach_group(self, owner: str, address: str) -> list[str]:
        return self.binder.attach(owner, address)

    def release_group(self, address: str) -> None:
        self.binder.release(address)

    def held(self) -> dict[str, str]:
        return self.binder.held()

    def create_vgpu(self, spec: DesiredVgpu) -> None:
        self.mdevs.create(spec)

    def remove_vgpu(self, uuid: str) -> None:
        self.mdevs.remove(uuid)

    def close(self) -> None:
        if self.xids is not None:
            self.xids.stop()  # before NVML goes: the watcher waits on an NVML event set
        if self.nvml is not None:
            self.nvml.close()
