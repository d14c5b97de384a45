"""What a server is made of, as the probes find it; also the shape the agent sends.

These models travel inside the agent's inventory, so, like every wire type,
they reject unknown fields.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class HwModel(BaseModel):
    """Base of every hardware record: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class CpuInfo(HwModel):
    vendor: str = Field(examples=["GenuineIntel", "AuthenticAMD"])
    model: str = Field(examples=["Intel(R) Xeon(R) Platinum 8480+"])
    sockets: int = Field(ge=1)
    cores: int = Field(ge=1, description="Physical cores over all sockets")
    threads: int = Field(ge=1, description="Logical CPUs the kernel sees")
    virtualization: str | None = Field(
        description="'vmx' (Intel VT-x), 'svm' (AMD-V), or None when the CPU offers neither")
    flags: list[str] = Field(description="Virtualization-related flags present (vmx, ept, ...)")
    is_virtual_machine: bool = Field(description="The 'hypervisor' flag: this host is a guest")


class NumaNode(HwModel):
    id: int = Field(ge=0)
    cpus: list[int]
    memory_mib: int = Field(ge=0)


class HugepagePool(HwModel):
    size_kib: int = Field(examples=[2048, 1048576])
    total: int = Field(ge=0)
    free: int = Field(ge=0)


class MemoryInfo(HwModel):
    total_mib: int = Field(ge=0)
    available_mib: int = Field(ge=0)
    hugepages: list[HugepagePool]


class Disk(HwModel):
    name: str = Field(examples=["nvme1n1"])
    size_bytes: int = Field(ge=0)
    rotational: bool
    removable: bool
    model: str | None
    serial: str | None
    free_for_osd: bool = Field(description="Whole, unused disk a Ceph OSD may take")
    in_use_reason: str | None = Field(
        description="Why the disk is not free (partitions, mounted, holders...), None if free")


class Nic(HwModel):
    name: str = Field(examples=["ens1f0"])
    mac: str | None
    driver: str | None = Field(description="Kernel driver of the device; None for virtual ones")
    physical: bool = Field(description="Backed by a device (PCI, virtio), not a software link")
    pci_address: str | None
    link: bool = Field(description="Carrier detected")
    speed_mbps: int | None = Field(description="Negotiated speed; None when down or unknown")
    mtu: int
    sriov_total_vfs: int = Field(ge=0, description="0 when the NIC has no SR-IOV")
    sriov_num_vfs: int = Field(ge=0)


class IommuInfo(HwModel):
    enabled: bool = Field(description="The kernel has put devices into IOMMU groups")
    kind: str | None = Field(examples=["Intel VT-d", "AMD-Vi"])
    groups: int = Field(ge=0)
    detail: str


class KvmInfo(HwModel):
    device: bool = Field(description="/dev/kvm exists")
    module: str | None = Field(examples=["kvm_intel", "kvm_amd"])
    nested: bool | None = Field(description="The module allows nested guests; None if unknown")
    usable: bool | None = Field(description="A guest was booted under KVM; None: not probed")
    detail: str


class BmcInfo(HwModel):
    present: bool
    detail: str = Field(examples=["IPMI device /dev/ipmi0"])


class PciDevice(HwModel):
    address: str = Field(examples=["0000:17:00.0"])
    vendor_id: str = Field(pattern=r"^[0-9a-f]{4}$", examples=["10de"])
    device_id: str = Field(pattern=r"^[0-9a-f]{4}$", examples=["2330"])
    class_id: str = Field(pattern=r"^[0-9a-f]{6}$", examples=["030200"])
    vendor_name: str | None
    device_name: str | None
    class_name: str = Field(examples=["3D controller"])
    driver: str | None
    iommu_group: int | None
    numa_node: int | None


class MdevType(HwModel):
    """A kind of mediated device (vGPU) the parent GPU can create."""

    id: str = Field(examples=["nvidia-700"])
    name: str = Field(examples=["GRID H100-10C"])
    available_instances: int = Field(ge=0)
    device_api: str | None = Field(examples=["vfio-pci"])
    description: str | None


class GpuInfo(HwModel):
    """An NVIDIA GPU found on the PCI bus, with what passthrough would take with it."""

    address: str = Field(examples=["0000:17:00.0"])
    device_id: str = Field(examples=["2330"])
    model: str = Field(examples=["H100 SXM5 80GB"], description="Marketing name from pci.ids")
    driver: str | None = Field(examples=["nvidia", "vfio-pci"])
    iommu_group: int | None
    group_devices: list[str] = Field(
        description="Every other device in the GPU's IOMMU group (bound along with it)")
    numa_node: int | None
    boot_vga: bool = Field(description="The firmware used it for the console")
    mdev_types: list[MdevType]
    passthrough_blocker: str | None = Field(
        description="Why the GPU cannot be handed to a VM whole; None when it can")


class HardwareInventory(HwModel):
    cpu: CpuInfo
    numa: list[NumaNode]
    memory: MemoryInfo
    disks: list[Disk]
    nics: list[Nic]
    iommu: IommuInfo
    kvm: KvmInfo
    bmc: BmcInfo
    pci: list[PciDevice]
    gpus: list[GpuInfo]


class Verdict(StrEnum):
    """Outcome of one qualification check, ordered from best to worst."""

    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"

    @property
    def rank(self) -> int:
        return ["PASS", "WARN", "FAIL"].index(self.value)


class CheckResult(HwModel):
    check: str = Field(examples=["memory"])
    verdict: Verdict
    reason: str = Field(examples=["256 GiB of memory, at least 64 GiB required"])


class QualificationReport(HwModel):
    profile: str = Field(examples=["compute"])
    verdict: Verdict = Field(description="The worst verdict of all checks")
    results: list[CheckResult]
    free_osd_disks: list[str] = Field(
        default_factory=list, examples=[["sdb", "nvme1n1"]],
        description="Kernel names of the whole disks found free for a Ceph OSD (see Disk)")
