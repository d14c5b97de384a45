"""Find out whether KVM actually works here, by booting a tiny guest under it.

`/dev/kvm` existing is not enough: under nested virtualization a KVM guest can
hang at kernel entry forever. So we boot a real kernel with a busybox
initramfs whose /init prints a marker on the serial console and powers off;
KVM is usable only if the marker shows up before the timeout.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

KVM_DEVICE = Path("/dev/kvm")
BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"
MARKER = "VAUBAN-KVM-PROBE-OK"
INIT_SCRIPT = f"#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n"


@dataclass(frozen=True)
class KvmProbe:
    """Result of a probe: `usable` implies `device`; `detail` says why in words."""

    device: bool
    usable: bool
    detail: str


def find_kernel(boot: Path = Path("/boot")) -> Path | None:
    """The running kernel's image in `boot` if present, else the newest vmlinuz-*, else None."""
    own = boot / f"vmlinuz-{platform.release()}"
    if own.is_file():
        return own
    candidates = sorted(boot.glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One `newc` cpio entry (header, name, data, each padded to 4 bytes)."""
    fields = [0, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    return out + data + b"\0" * (-len(data) % 4)


def build_initramfs(dest: Path, busybox: Path = BUSYBOX) -> Path:
    """Write an uncompressed initramfs to `dest`: busybox, /dev/console and the marker /init.

    Written in Python (no cpio tool, no mknod privilege needed for the device node).
    """
    entries = [
        _cpio_entry("bin", 0o040755),
        _cpio_entry("dev", 0o040755),
        # Without /dev/console in the initramfs, /init runs with no stdout.
        _cpio_entry("dev/console", 0o020600, rdev=(5, 1)),
        _cpio_entry("bin/busybox", 0o100755, busybox.read_bytes()),
        _cpio_entry("init", 0o100755, INIT_SCRIPT.encode()),
        _cpio_entry("TRAILER!!!", 0),
    ]
    dest.write_bytes(b"".join(entries))
    return dest


def boot_marker(accel: str, kernel: Path, timeout: float) -> tuple[bool, float, str]:
    """Boot `kernel` with the probe initramfs under `accel` ("kvm" or "tcg").

    Returns (marker seen, seconds taken, QEMU's own error output if it failed).
    The QEMU process is gone afterwards: killed by its PID at the timeout.
    """
    with tempfile.TemporaryDirectory(prefix="vauban-kvmprobe-") as tmp:
        initrd = build_initramfs(Path(tmp) / "initramfs.cpio")
        serial = Path(tmp) / "serial.log"
        errlog = Path(tmp) / "qemu.err"
        cpu = ["-cpu", "host"] if accel == "kvm" else []
        argv = [QEMU, "-accel", accel, *cpu, "-machine", "pc", "-m", "128", "-nodefaults",
                "-display", "none", "-no-reboot", "-serial", f"file:{serial}",
                "-kernel", str(kernel), "-initrd", str(initrd),
                "-append", "console=ttyS0 quiet panic=-1"]
        start = time.monotonic()
        deadline = start + timeout
        with errlog.open("wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            while True:
                if serial.exists() and MARKER in serial.read_text(errors="replace"):
                    return True, time.monotonic() - start, ""
                if proc.poll() is not None:
                    # It may have printed the marker and powered off between our two checks.
                    seen = serial.exists() and MARKER in serial.read_text(errors="replace")
                    return seen, time.monotonic() - start, errlog.read_text(errors="replace")
                if time.monotonic() >= deadline:
                    return False, time.monotonic() - start, ""
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()  # by its own PID; a hung KVM guest never exits by itself
            proc.wait(timeout=30)


def _qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def _cache_key(kernel: Path | None, device: bool) -> str:
    return "|".join([platform.release(), str(kernel), _qemu_version(), f"dev={device}"])


def _read_cache(cache: Path, key: str) -> KvmProbe | None:
    try:
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return KvmProbe(bool(data["device"]), bool(data["usable"]), str(data["detail"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _write_cache(cache: Path, key: str, result: KvmProbe) -> None:
    """Write atomically, so a crash never leaves a half-written cache."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, **asdict(result)}, indent=2))
    tmp.replace(cache)


def probe_kvm(timeout: float = 10.0, cache: Path | None = None) -> KvmProbe:
    """Probe whether KVM boots a guest here; at most about `timeout` seconds of booting.

    With `cache`, a result stored there for the same host kernel, probe kernel,
    QEMU version and /dev/kvm presence is returned without probing, and a fresh
    result is stored. Never raises for a failed probe: the reason is in `detail`.
    """
    device = KVM_DEVICE.exists()
    kernel = find_kernel()
    key = _cache_key(kernel, device)
    if cache is not None and (hit := _read_cache(cache, key)) is not None:
        return hit
    result = _probe(device, kernel, timeout)
    if cache is not None:
        _write_cache(cache, key, result)
    return result


def _probe(device: bool, kernel: Path | None, timeout: float) -> KvmProbe:
    if not device:
        return KvmProbe(False, False, f"{KVM_DEVICE} does not exist")
    if kernel is None:
        return KvmProbe(True, False, "no kernel in /boot to boot a probe guest with")
    if not BUSYBOX.is_file():
        return KvmProbe(True, False, f"{BUSYBOX} missing (install busybox-static)")
    try:
        seen, took, err = boot_marker("kvm", kernel, timeout)
    except OSError as e:
        return KvmProbe(True, False, f"could not run {QEMU}: {e}")
    if seen:
        return KvmProbe(True, True, f"KVM guest booted {kernel.name} to its init in {took:.1f}s")
    if err.strip():
        # e.g. "failed to set MSR 0x10a" where the outer hypervisor hides a host MSR.
        oneline = "; ".join(line.strip() for line in err.strip().splitlines()[-3:])
        return KvmProbe(True, False, f"QEMU with KVM exited before the guest booted: {oneline}")
    return KvmProbe(True, False, f"KVM guest ({kernel.name}) printed nothing within "
                    f"{timeout:.0f}s (nested KVM hangs at kernel entry); QEMU killed")


if __name__ == "__main__":
    print(probe_kvm())
