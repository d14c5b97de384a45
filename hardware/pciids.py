"""Names for PCI vendor, device and class ids, from the pci.ids database (Debian: pci.ids)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from hardware.sysfs import Root

SEARCH = ("usr/share/misc/pci.ids", "usr/share/hwdata/pci.ids")
_BRACKETED = re.compile(r"\[([^\]]+)\]")


@dataclass
class PciIds:
    vendors: dict[str, str] = field(default_factory=dict)
    devices: dict[tuple[str, str], str] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)  # "03" and "0302"

    def device(self, vendor: str, device: str) -> str | None:
        return self.devices.get((vendor, device))

    def class_name(self, class_id: str) -> str:
        """The most precise name of a 6-digit class id ("030200" -> "3D controller")."""
        return (self.classes.get(class_id[:4]) or self.classes.get(class_id[:2])
                or f"class {class_id}")


def parse(text: str) -> PciIds:
    """Vendors, devices and classes of a pci.ids file (subsystems and prog-ifs skipped)."""
    ids = PciIds()
    vendor: str | None = None
    klass: str | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("C "):
            klass, _, name = line[2:].partition("  ")
            ids.classes[klass] = name.strip()
            vendor = None
        elif not line.startswith("\t"):
            vendor, _, name = line.partition("  ")
            ids.vendors[vendor] = name.strip()
            klass = None
        elif not line.startswith("\t\t"):
            code, _, name = line[1:].partition("  ")
            if vendor is not None:
                ids.devices[(vendor, code)] = name.strip()
            elif klass is not None:
                ids.classes[klass + code] = name.strip()
    return ids


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> PciIds:
    return parse(path.read_text(errors="replace"))


def load(root: Root) -> PciIds:
    """The database under `root`, else this host's, else an empty one (ids stay unnamed)."""
    for base in (root, Root("/")):
        for rel in SEARCH:
            path = base.join(rel)
            if path.is_file():
                return _load(path)
    return PciIds()


def marketing_name(device_name: str | None, device_id: str) -> str:
    """The product inside pci.ids' brackets ("GH100 [H100 PCIe]" -> "H100 PCIe")."""
    if not device_name:
        return f"NVIDIA device {device_id}"
    found = _BRACKETED.search(device_name)
    return found.group(1).strip() if found else device_name
