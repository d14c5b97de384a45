"""What the node is made of, read from /proc and /sys under a root (tests use a recorded tree)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from agent.protocol import DiskInfo, NicInfo

VIRT_FLAGS = ("vmx", "svm", "hypervisor", "ept", "npt", "avx2", "aes")


def cpu_model_and_flags(root: Path = Path("/")) -> tuple[str, list[str]]:
    model, flags = "unknown", set()
    for line in (root / "proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags":
            flags |= set(value.split())
    return model, sorted(f for f in VIRT_FLAGS if f in flags)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def memory_mib(root: Path = Path("/")) -> int:
    for line in (root / "proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ValueError("MemTotal missing from /proc/meminfo")


def disks(root: Path = Path("/")) -> list[DiskInfo]:
    """Whole disks (not partitions, loops or RAM disks)."""
    out = []
    block = root / "sys/block"
    for dev in sorted(block.iterdir()) if block.is_dir() else []:
        if dev.name.startswith(("loop", "ram", "zram", "dm-", "sr", "nbd")):
            continue
        size = int(_read(dev / "size", "0")) * 512
        out.append(DiskInfo(
            name=dev.name, size_bytes=size,
            rotational=_read(dev / "queue/rotational", "0") == "1",
            model=_read(dev / "device/model", "") or None,
        ))
    return out


def nics(root: Path = Path("/")) -> list[NicInfo]:
    """Network interfaces except loopback."""
    out = []
    net = root / "sys/class/net"
    for dev in sorted(net.iterdir()) if net.is_dir() else []:
        if dev.name == "lo":
            continue
        out.append(NicInfo(
            name=dev.name, mac=_read(dev / "address", "") or None,
            mtu=int(_read(dev / "mtu", "0") or 0),
            up=_read(dev / "operstate", "down") in ("up", "unknown"),
        ))
    return out


def hostname() -> str:
    return socket.gethostname()


def _read(path: Path, default: str) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def underlay_address(controller_url: str) -> str | None:
    """The address this node reaches the controller from: where its VXLAN tunnels start.

    No packet is sent: connecting a UDP socket only asks the kernel for the route.
    """
    from urllib.parse import urlsplit

    host = urlsplit(controller_url).hostname
    if not host:
        return None
    try:
        family = socket.getaddrinfo(host, None)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, 4789))
            return str(s.getsockname()[0])
    except OSError:
        return None
