"""One call that runs every probe against a root and returns the whole inventory."""

from __future__ import annotations

from hardware.cpu import probe_cpu
from hardware.disks import probe_disks
from hardware.gpus import probe_gpus
from hardware.kvm_bmc import KvmBootProbe, probe_bmc, probe_kvm
from hardware.memory import probe_memory, probe_numa
from hardware.model import HardwareInventory
from hardware.nics import probe_nics
from hardware.pci import probe_iommu, probe_pci
from hardware.sysfs import Root


def discover(root: Root | None = None,
             kvm_boot_probe: KvmBootProbe | None = None) -> HardwareInventory:
    """Everything the probes find under `root` (default `/`). Reads only; changes nothing."""
    root = root or Root("/")
    pci = probe_pci(root)
    iommu = probe_iommu(root)
    return HardwareInventory(
        cpu=probe_cpu(root), numa=probe_numa(root), memory=probe_memory(root),
        disks=probe_disks(root), nics=probe_nics(root), iommu=iommu,
        kvm=probe_kvm(root, kvm_boot_probe), bmc=probe_bmc(root), pci=pci,
        gpus=probe_gpus(root, pci, iommu),
    )
