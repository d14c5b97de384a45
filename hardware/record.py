"""Record the files the probes read into a directory, to replay them elsewhere.

An operator attaches such a recording to a bug report; the tests keep several.
Symlinks are recreated with their own targets (the probes read `driver` and
`iommu_group` by the name they point to), and followed so that what lies
behind them is recorded too. Device nodes become empty files: the probes only
ask whether they exist. Attributes that cannot be read (a down link's speed,
write-only `bind`) become empty files too, which the probes treat as unreadable.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from hardware.sysfs import Root

PROBED = (
    "proc/cpuinfo", "proc/meminfo", "proc/mounts", "proc/swaps", "proc/cmdline",
    "sys/devices/system/node/node*/cpulist", "sys/devices/system/node/node*/meminfo",
    "sys/kernel/mm/hugepages/*/nr_hugepages", "sys/kernel/mm/hugepages/*/free_hugepages",
    "sys/block/*/size", "sys/block/*/removable", "sys/block/*/ro", "sys/block/*/serial",
    "sys/block/*/queue/rotational", "sys/block/*/device/model", "sys/block/*/device/serial",
    "sys/block/*/holders", "sys/block/*/*/partition", "sys/block/*/*/holders",
    "sys/block/*/holders/*", "sys/block/*/*/holders/*",
    "sys/class/net/*/address", "sys/class/net/*/mtu", "sys/class/net/*/carrier",
    "sys/class/net/*/speed", "sys/class/net/*/device/driver",
    "sys/class/net/*/device/sriov_totalvfs", "sys/class/net/*/device/sriov_numvfs",
    "sys/bus/pci/devices/*/vendor", "sys/bus/pci/devices/*/device",
    "sys/bus/pci/devices/*/class", "sys/bus/pci/devices/*/driver",
    "sys/bus/pci/devices/*/iommu_group", "sys/bus/pci/devices/*/numa_node",
    "sys/bus/pci/devices/*/boot_vga", "sys/bus/pci/devices/*/driver_override",
    "sys/bus/pci/devices/*/mdev_supported_types/*/name",
    "sys/bus/pci/devices/*/mdev_supported_types/*/available_instances",
    "sys/bus/pci/devices/*/mdev_supported_types/*/device_api",
    "sys/bus/pci/devices/*/mdev_supported_types/*/description",
    "sys/bus/pci/devices/*/mdev_supported_types/*/create",
    "sys/bus/pci/drivers/*/bind", "sys/bus/pci/drivers/*/unbind", "sys/bus/pci/drivers_probe",
    "sys/bus/mdev/devices/*/mdev_type", "sys/bus/mdev/devices/*/remove",
    "sys/kernel/iommu_groups/*/devices/*", "sys/class/iommu/*",
    "sys/module/kvm_intel/parameters/nested", "sys/module/kvm_amd/parameters/nested",
    "dev/kvm", "dev/ipmi0", "dev/ipmi/0", "dev/ipmidev/0", "sys/class/ipmi/*",
    "sys/firmware/dmi/entries/38-*",
)


def _copy_leaf(src: Path, dest: Path) -> None:
    if src.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = src.read_bytes() if src.is_file() else b""
    except OSError:
        data = b""
    dest.write_bytes(data)


def copy_path(source: Root, dest: Path, rel: str, depth: int = 0) -> None:
    """Copy `rel` from `source` into `dest`, recreating every symlink on the way."""
    if depth > 40:
        raise OSError(f"too many levels of symlinks under {rel}")
    parts = rel.split("/")
    for i in range(len(parts)):
        here = "/".join(parts[: i + 1])
        src, out = source.join(here), dest / here
        if src.is_symlink():
            if i == len(parts) - 1 and src.is_file():
                break  # a link to a file (/proc/mounts -> self/mounts): its content is what counts
            target = os.readlink(src)
            if not out.is_symlink():
                out.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(target, out)
            if i == len(parts) - 1:
                return
            base = target.lstrip("/") if os.path.isabs(target) else \
                os.path.normpath(os.path.join(os.path.dirname(here), target))
            copy_path(source, dest, "/".join([base, *parts[i + 1:]]), depth + 1)
            return
    _copy_leaf(source.join(rel), dest / rel)


def record(source: Root, dest: Path) -> int:
    """Copy every probed file of `source` under `dest`; returns how many paths were copied."""
    count = 0
    for pattern in PROBED:
        for match in sorted(glob.glob(str(source.join(pattern)))):
            copy_path(source, dest, os.path.relpath(match, source.path))
            count += 1
    return count
