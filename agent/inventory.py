"""What the node is made of, read from /proc and /sys under a root (tests use a recorded tree)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from agent.protocol import DiskInfo, NicInfo
from hardware.cpu import probe_cpu
from hardware.discover import discover
from hardware.disks import probe_disks
from hardware.memory import probe_memory
from hardware.model import HardwareInventory, QualificationReport
from hardware.nics import probe_nics
from hardware.qualify import Profile, qualify
from hardware.sysfs import Root


def cpu_model_and_flags(root: Path = Path("/")) -> tuple[str, list[str]]:
    cpu = probe_cpu(Root(root))
    return cpu.model, sorted(cpu.flags)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def memory_mib(root: Path = Path("/")) -> int:
    total = probe_memory(Root(root)).total_mib
    if total <= 0:
        raise ValueError("MemTotal missing from /proc/meminfo")
    return total


def disks(root: Path = Path("/")) -> list[DiskInfo]:
    """Whole disks (not partitions, loops or RAM disks)."""
    return [DiskInfo(name=d.name, size_bytes=d.size_bytes, rotational=d.rotational, model=d.model)
            for d in probe_disks(Root(root))]


def nics(root: Path = Path("/")) -> list[NicInfo]:
    """Network interfaces except loopback; `up` means a carrier is detected."""
    return [NicInfo(name=n.name, mac=n.mac, mtu=n.mtu, up=n.link) for n in probe_nics(Root(root))]


def hostname() -> str:
    return socket.gethostname()


SSH_HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                      "ecdsa-sha2-nistp521", "ssh-rsa")
MAX_HOST_KEY_LINE = 4096  # an RSA-16384 public key line is about 2.8 KiB


def ssh_host_keys(root: Path = Path("/")) -> list[str]:
    """The node's SSH host public keys ("TYPE BASE64", no comment), read from
    /etc/ssh/ssh_host_*_key.pub: the controller pins them when it adopts the node into
    its fleet. A file that is unreadable, too long or not a key line is left out."""
    found = []
    for path in sorted((root / "etc/ssh").glob("ssh_host_*_key.pub")):
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_HOST_KEY_LINE + 1)
            fields = data.decode("ascii").split()
        except (OSError, UnicodeDecodeError):
            continue
        if len(data) <= MAX_HOST_KEY_LINE and len(fields) >= 2 and fields[0] in SSH_HOST_KEY_TYPES:
            found.append(f"{fields[0]} {fields[1]}")
    return found


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


class HardwareReporter:
    """The hardware inventory and its qualification, probed again every `refresh_s`.

    KVM usability comes from the agent's boot probe, made once at start.
    """

    def __init__(self, profile: Profile, kvm_usable: bool, kvm_detail: str,
                 refresh_s: float = 300.0, root: Root | None = None) -> None:
        self.profile = profile
        self._kvm = (kvm_usable, kvm_detail)
        self.refresh_s = refresh_s
        self.root = root or Root("/")
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._last: tuple[HardwareInventory, QualificationReport] | None = None

    def current(self) -> tuple[HardwareInventory, QualificationReport]:
        with self._lock:
            if self._last is None or time.monotonic() - self._at >= self.refresh_s:
                hw = discover(self.root, lambda: self._kvm)
                self._last = (hw, qualify(hw, self.profile))
                self._at = time.monotonic()
            return self._last
