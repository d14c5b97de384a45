"""Network interfaces: driver, link, speed, MAC and SR-IOV capacity."""

from __future__ import annotations

import re

from hardware.model import Nic
from hardware.sysfs import Root

_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def _pci_address(root: Root, name: str) -> str | None:
    """The NIC's PCI function: `device` itself, or its parent for virtio (virtioN)."""
    try:
        target = root.join(f"sys/class/net/{name}/device").resolve()
    except OSError:
        return None
    for part in (target.name, target.parent.name):
        if _PCI_ADDRESS.match(part):
            return part
    return None


def probe_nics(root: Root) -> list[Nic]:
    """Every interface but loopback; software links (bridges, veths) have physical=False."""
    nics = []
    for name in root.entries("sys/class/net"):
        if name == "lo":
            continue
        base = f"sys/class/net/{name}"
        physical = root.exists(f"{base}/device")
        speed = root.read_int(f"{base}/speed")  # reading it fails while the link is down
        nics.append(Nic(
            name=name, mac=root.read(f"{base}/address") or None,
            driver=root.link_name(f"{base}/device/driver") if physical else None,
            physical=physical,
            pci_address=_pci_address(root, name) if physical else None,
            link=root.read(f"{base}/carrier") == "1",
            speed_mbps=speed if speed is not None and speed > 0 else None,
            mtu=root.read_int(f"{base}/mtu", 0) or 0,
            sriov_total_vfs=root.read_int(f"{base}/device/sriov_totalvfs", 0) or 0,
            sriov_num_vfs=root.read_int(f"{base}/device/sriov_numvfs", 0) or 0,
        ))
    return nics
