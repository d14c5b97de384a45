"""CPU: vendor, model, topology and virtualization support, from /proc/cpuinfo."""

from __future__ import annotations

from hardware.model import CpuInfo
from hardware.sysfs import Root

# The flags an operator checks before trusting a host with VMs.
VIRT_FLAGS = ("vmx", "svm", "ept", "npt", "vpid", "avic", "x2apic", "aes", "avx2", "avx512f",
              "hypervisor")


def probe_cpu(root: Root) -> CpuInfo:
    """Parse cpuinfo's per-processor blocks; a missing topology counts as one socket."""
    text = root.read("proc/cpuinfo") or ""
    blocks = [b for b in text.split("\n\n") if b.strip()]
    vendor = model = "unknown"
    flags: set[str] = set()
    sockets: set[str] = set()
    cores: set[tuple[str, str]] = set()
    threads = 0
    for block in blocks:
        fields = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if "processor" not in fields:
            continue
        threads += 1
        vendor = fields.get("vendor_id", vendor)
        model = fields.get("model name", model)
        flags |= set(fields.get("flags", "").split())
        socket = fields.get("physical id", "0")
        sockets.add(socket)
        cores.add((socket, fields.get("core id", str(threads))))
    present = [f for f in VIRT_FLAGS if f in flags]
    virtualization = "vmx" if "vmx" in flags else "svm" if "svm" in flags else None
    return CpuInfo(
        vendor=vendor, model=model, sockets=max(len(sockets), 1), cores=max(len(cores), 1),
        threads=max(threads, 1), virtualization=virtualization, flags=present,
        is_virtual_machine="hypervisor" in flags,
    )
