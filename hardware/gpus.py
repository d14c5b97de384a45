"""NVIDIA GPUs on the PCI bus: model, IOMMU group, vGPU types, and what blocks passthrough."""

from __future__ import annotations

from hardware import pciids
from hardware.model import GpuInfo, IommuInfo, MdevType, PciDevice
from hardware.pci import DEVICES, group_members
from hardware.sysfs import Root

NVIDIA = "10de"
GPU_CLASSES = ("0300", "0302")  # VGA-compatible and 3D controllers
# Functions of the GPU's own card that go to the VM with it: display, HD audio, USB-C, UCSI.
COMPANION_CLASSES = ("03", "0403", "0c03", "0c80")
BRIDGE_CLASS = "0604"  # PCIe ports stay with the host's pcieport driver; vfio allows that


def is_nvidia_gpu(dev: PciDevice) -> bool:
    return dev.vendor_id == NVIDIA and dev.class_id[:4] in GPU_CLASSES


def _slot(address: str) -> str:
    return address.rsplit(".", 1)[0]  # domain:bus:device, without the function


def host_needed_reason(member: PciDevice, gpu: PciDevice) -> str | None:
    """Why `member`, in the GPU's IOMMU group, keeps the group from a VM; None if it may go."""
    if member.class_id.startswith(BRIDGE_CLASS):
        return None
    if _slot(member.address) == _slot(gpu.address) and \
            member.class_id.startswith(COMPANION_CLASSES):
        return None
    driver = f", driver {member.driver}" if member.driver else ""
    if is_nvidia_gpu(member):
        what = "another GPU; they can only be passed through together"
    else:
        what = "the host needs it"
    return (f"IOMMU group {gpu.iommu_group} also holds {member.address} "
            f"({member.class_name}{driver}): {what}")


def mdev_types(root: Root, address: str) -> list[MdevType]:
    """The vGPU types the GPU's host driver offers; [] without a vGPU driver."""
    base = f"{DEVICES}/{address}/mdev_supported_types"
    types = []
    for type_id in root.entries(base):
        rel = f"{base}/{type_id}"
        types.append(MdevType(
            id=type_id, name=root.read(f"{rel}/name") or type_id,
            available_instances=root.read_int(f"{rel}/available_instances", 0) or 0,
            device_api=root.read(f"{rel}/device_api"),
            description=root.read(f"{rel}/description"),
        ))
    return types


def passthrough_blocker(root: Root, gpu: PciDevice, devices: dict[str, PciDevice],
                        iommu: IommuInfo) -> str | None:
    """Why the GPU cannot be given to a VM whole, or None: IOMMU, console, group members."""
    if gpu.iommu_group is None:
        return f"IOMMU is off: {iommu.detail}"
    if root.read(f"{DEVICES}/{gpu.address}/boot_vga") == "1" and gpu.driver != "vfio-pci":
        return "it drives the host's console (boot VGA)"
    for address in group_members(root, gpu.iommu_group):
        member = devices.get(address)
        if member is None or address == gpu.address:
            continue
        reason = host_needed_reason(member, gpu)
        if reason:
            return reason
    return None


def probe_gpus(root: Root, devices: list[PciDevice], iommu: IommuInfo) -> list[GpuInfo]:
    """Every NVIDIA GPU, with the other devices its IOMMU group would take along."""
    by_address = {d.address: d for d in devices}
    gpus = []
    for dev in devices:
        if not is_nvidia_gpu(dev):
            continue
        group = group_members(root, dev.iommu_group) if dev.iommu_group is not None else []
        gpus.append(GpuInfo(
            address=dev.address, device_id=dev.device_id,
            model=pciids.marketing_name(dev.device_name, dev.device_id),
            driver=dev.driver, iommu_group=dev.iommu_group,
            group_devices=[a for a in group if a != dev.address],
            numa_node=dev.numa_node,
            boot_vga=root.read(f"{DEVICES}/{dev.address}/boot_vga") == "1",
            mdev_types=mdev_types(root, dev.address),
            passthrough_blocker=passthrough_blocker(root, dev, by_address, iommu),
        ))
    return gpus
