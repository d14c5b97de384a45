"""Block devices: size, kind, identity, and whether a Ceph OSD may take the disk."""

from __future__ import annotations

from hardware.model import Disk
from hardware.sysfs import Root

# Software block devices: never a disk an operator would give to Ceph.
VIRTUAL_PREFIXES = ("loop", "ram", "zram", "dm-", "md", "sr", "nbd", "rbd", "fd")


def _partitions(root: Root, name: str) -> list[str]:
    return [e for e in root.entries(f"sys/block/{name}")
            if root.exists(f"sys/block/{name}/{e}/partition")]


def _first_field(root: Root, rel: str) -> set[str]:
    text = root.read(rel, "") or ""
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def in_use_reason(root: Root, name: str, mounted: set[str], swaps: set[str]) -> str | None:
    """Why the whole disk `name` is not free for an OSD, or None when it is."""
    if root.read(f"sys/block/{name}/removable") == "1":
        return "removable media"
    if root.read(f"sys/block/{name}/ro") == "1":
        return "read-only"
    parts = _partitions(root, name)
    for dev, base in ((name, f"sys/block/{name}"),
                      *((p, f"sys/block/{name}/{p}") for p in parts)):
        if f"/dev/{dev}" in mounted:
            return f"/dev/{dev} is mounted"
        if f"/dev/{dev}" in swaps:
            return f"/dev/{dev} is swap"
        holders = root.entries(f"{base}/holders")
        if holders:
            return f"/dev/{dev} is held by {', '.join(holders)} (LVM, RAID or dm)"
    if parts:
        return f"has partitions ({', '.join(parts)})"
    return None


def probe_disks(root: Root) -> list[Disk]:
    """Whole disks, software devices left out, each with whether Ceph may take it."""
    mounted = _first_field(root, "proc/mounts")
    swaps = _first_field(root, "proc/swaps")
    disks = []
    for name in root.entries("sys/block"):
        if name.startswith(VIRTUAL_PREFIXES):
            continue
        base = f"sys/block/{name}"
        reason = in_use_reason(root, name, mounted, swaps)
        size = (root.read_int(f"{base}/size", 0) or 0) * 512  # always 512-byte sectors
        if size == 0:
            reason = reason or "empty (size 0)"
        disks.append(Disk(
            name=name, size_bytes=size,
            rotational=root.read(f"{base}/queue/rotational") == "1",
            removable=root.read(f"{base}/removable") == "1",
            model=root.read(f"{base}/device/model") or None,
            serial=root.read(f"{base}/device/serial") or root.read(f"{base}/serial") or None,
            free_for_osd=reason is None, in_use_reason=reason,
        ))
    return disks
