"""PCI devices and IOMMU groups, from /sys/bus/pci and /sys/kernel/iommu_groups."""

from __future__ import annotations

from hardware import pciids
from hardware.model import IommuInfo, PciDevice
from hardware.sysfs import Root

DEVICES = "sys/bus/pci/devices"
GROUPS = "sys/kernel/iommu_groups"
IOMMU_KINDS = {"dmar": "Intel VT-d", "ivhd": "AMD-Vi", "smmu": "Arm SMMU"}


def _hex(root: Root, rel: str, digits: int) -> str:
    """A sysfs id ("0x10de") as bare lowercase hex of fixed width ("10de")."""
    value = root.read_int(rel, 0, base=16) or 0
    return f"{value:0{digits}x}"


def probe_device(root: Root, address: str, ids: pciids.PciIds) -> PciDevice:
    base = f"{DEVICES}/{address}"
    vendor, device = _hex(root, f"{base}/vendor", 4), _hex(root, f"{base}/device", 4)
    class_id = _hex(root, f"{base}/class", 6)
    group = root.link_name(f"{base}/iommu_group")
    numa = root.read_int(f"{base}/numa_node")
    return PciDevice(
        address=address, vendor_id=vendor, device_id=device, class_id=class_id,
        vendor_name=ids.vendors.get(vendor), device_name=ids.device(vendor, device),
        class_name=ids.class_name(class_id), driver=root.link_name(f"{base}/driver"),
        iommu_group=int(group) if group and group.isdigit() else None,
        numa_node=numa if numa is not None and numa >= 0 else None,  # -1: no affinity
    )


def probe_pci(root: Root) -> list[PciDevice]:
    ids = pciids.load(root)
    return [probe_device(root, address, ids) for address in root.entries(DEVICES)]


def group_members(root: Root, group: int) -> list[str]:
    """PCI addresses in one IOMMU group, sorted."""
    return root.entries(f"{GROUPS}/{group}/devices")


def probe_iommu(root: Root) -> IommuInfo:
    """On when the kernel made IOMMU groups; the detail says how to turn it on when off."""
    groups = [g for g in root.entries(GROUPS) if g.isdigit()]
    units = root.entries("sys/class/iommu")
    kinds = sorted({IOMMU_KINDS.get(u.rstrip("0123456789"), u) for u in units})
    kind = ", ".join(kinds) or None
    cmdline = root.read("proc/cmdline", "") or ""
    if groups:
        return IommuInfo(enabled=True, kind=kind, groups=len(groups),
                         detail=f"{len(groups)} IOMMU groups ({kind or 'unknown IOMMU'})")
    asked = [w for w in cmdline.split() if "iommu" in w]
    hint = ("the kernel command line has " + " ".join(asked) if asked
            else "add intel_iommu=on (Intel) or amd_iommu=on (AMD) to the kernel command line")
    return IommuInfo(enabled=False, kind=kind, groups=0,
                     detail=f"no IOMMU groups: enable VT-d/AMD-Vi in the firmware; {hint}")
