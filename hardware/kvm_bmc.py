"""KVM support and the presence of a baseboard management controller (BMC)."""

from __future__ import annotations

from collections.abc import Callable

from hardware.model import BmcInfo, KvmInfo
from hardware.sysfs import Root

# Boots a tiny guest under KVM: (usable, detail). Only meaningful on a live root.
KvmBootProbe = Callable[[], tuple[bool, str]]


def probe_kvm(root: Root, boot_probe: KvmBootProbe | None = None) -> KvmInfo:
    """Device, module and nested setting from the tree; usability only from `boot_probe`.

    /dev/kvm existing does not mean KVM works (nested KVM can hang a guest
    forever), so without a boot probe `usable` stays None: unknown.
    """
    device = root.exists("dev/kvm")
    module = next((m for m in ("kvm_intel", "kvm_amd") if root.exists(f"sys/module/{m}")), None)
    nested_text = root.read(f"sys/module/{module}/parameters/nested") if module else None
    nested = None if nested_text is None else nested_text in ("Y", "1")
    if not device:
        return KvmInfo(device=False, module=module, nested=nested, usable=False,
                       detail="/dev/kvm is missing: enable VT-x/AMD-V in the firmware "
                              "and load kvm_intel or kvm_amd")
    if boot_probe is None:
        return KvmInfo(device=True, module=module, nested=nested, usable=None,
                       detail="/dev/kvm present; no guest was booted to prove it works")
    usable, detail = boot_probe()
    return KvmInfo(device=True, module=module, nested=nested, usable=usable, detail=detail)


def probe_bmc(root: Root) -> BmcInfo:
    """A BMC shows as an IPMI device, an ipmi class entry, or an SMBIOS type 38 record."""
    for dev in ("dev/ipmi0", "dev/ipmi/0", "dev/ipmidev/0"):
        if root.exists(dev):
            return BmcInfo(present=True, detail=f"IPMI device /{dev}")
    ipmi = root.entries("sys/class/ipmi")
    if ipmi:
        return BmcInfo(present=True, detail=f"IPMI interface {ipmi[0]} (driver loaded)")
    if [e for e in root.entries("sys/firmware/dmi/entries") if e.startswith("38-")]:
        return BmcInfo(present=True,
                       detail="SMBIOS lists an IPMI device; load ipmi_si to reach it")
    return BmcInfo(present=False, detail="no IPMI device, driver or SMBIOS record")
