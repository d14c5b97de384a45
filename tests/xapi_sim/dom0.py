"""A Xen dom0 root image for the simulator's real-Xen backend, built once and cached.

Debian bookworm (debootstrap, then apt-get in a chroot) with Debian's Xen 4.17, the
standard kernel and sshd, packed into an ext4 image with `mkfs.ext4 -d`. Next to the
image lie what QEMU boots it with: the unzipped Xen hypervisor (a multiboot kernel),
dom0's vmlinuz and initrd. Each build makes its own SSH host key and client key (never
committed anywhere); the host key's public half lies next to the image so that the
client can verify it. The cache lives outside the checkout, in a folder named by the
hash of the inputs, so fresh clones reuse it; a file lock keeps two processes from
building it at once. Boots use an overlay, so the image is never written after its build.

    python -m tests.xapi_sim.dom0 [--cache DIR] [--log FILE]   # prints the image's folder
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lab.rootfs import apt_chroot

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = Path("/var/cache/vauban/xen-dom0")
# what debootstrap itself installs: enough for apt in the chroot to resolve the rest
BOOTSTRAP_PACKAGES = ("systemd", "systemd-sysv", "dbus", "udev", "kmod", "ca-certificates")
DOM0_PACKAGES = (
    "xen-system-amd64", "xen-utils-4.17", "linux-image-amd64", "openssh-server",
    "busybox", "iproute2", "procps",
)
# bump when what is done to the root after the packages changes
LAYOUT_VERSION = "1"
HOST_TOOLS = {"debootstrap": "debootstrap", "chroot": "coreutils", "mkfs.ext4": "e2fsprogs",
              "ssh-keygen": "openssh-client", "mount": "mount"}
FINISHED = "inputs.json"
# written on dom0's console (hvc0, which Xen forwards to the serial port) once xl works
READY_LINE = "VAUBAN-DOM0-READY"
XL_FAILED_LINE = "VAUBAN-DOM0-XL-FAILED"
# where xenconsoled writes each guest's console (guest-<name>.log)
CONSOLE_LOG_DIR = "/var/log/xen/console"
SLACK_MIB = 768  # free room in the root: logs, guest kernels and configs copied in later


class Dom0Unavailable(Exception):
    """The image cannot be built here: a host tool is missing or the Debian mirror
    could not give the packages. Carries the reason (and the tail of the build log)."""


@dataclass(frozen=True)
class Dom0Image:
    """A built dom0: its root image and what QEMU boots it with, plus its SSH keys."""

    folder: Path

    @property
    def root(self) -> Path:
        """The ext4 root (raw); boot an overlay over it, never the image itself."""
        return self.folder / "root.img"

    @property
    def xen(self) -> Path:
        """The hypervisor, unzipped: QEMU's `-kernel` (multiboot)."""
        return self.folder / "xen"

    @property
    def vmlinuz(self) -> Path:
        """dom0's kernel, also the kernel of the PV guests."""
        return self.folder / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.folder / "initrd.img"

    @property
    def host_key(self) -> Path:
        """The public half of dom0's only SSH host key (OpenSSH one-line format)."""
        return self.folder / "ssh_host_ed25519_key.pub"

    @property
    def client_key(self) -> Path:
        """The private key authorised for root in dom0 (mode 0600)."""
        return self.folder / "client_key"


def inputs() -> dict[str, object]:
    """Everything the image is made from; its hash names the cached image."""
    return {"suite": SUITE, "mirror": MIRROR, "bootstrap": sorted(BOOTSTRAP_PACKAGES),
            "packages": sorted(DOM0_PACKAGES), "layout": LAYOUT_VERSION,
            "ready": READY_LINE, "console_logs": CONSOLE_LOG_DIR}


def input_hash() -> str:
    return hashlib.sha256(json.dumps(inputs(), sort_keys=True).encode()).hexdigest()[:16]


def image_folder(cache: Path = DEFAULT_CACHE) -> Path:
    return cache / input_hash()


def missing_tools() -> list[str]:
    """The Debian packages of host tools the build needs that are not installed."""
    return sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})


def ensure_image(cache: Path = DEFAULT_CACHE, log: Path | None = None) -> Dom0Image:
    """The cached image for the current inputs, built first if there is none.

    After success the folder holds a complete image (its `inputs.json` is written last,
    and the folder renamed into place only then). A build goes to a temporary folder,
    removed on failure; one a killed build left is removed by the next build. Raises
    Dom0Unavailable when the host lacks a tool or the mirror fails, CalledProcessError
    when a later step fails."""
    final = image_folder(cache)
    if (final / FINISHED).is_file():
        return Dom0Image(final)
    missing = missing_tools()
    if missing:
        raise Dom0Unavailable("host packages missing: " + " ".join(missing))
    with _cache_lock(cache):
        if (final / FINISHED).is_file():  # another process built it while we waited
            return Dom0Image(final)
        for stale in cache.glob(f"{final.name}.building-*"):
            _remove_tree(stale)
        work = cache / f"{final.name}.building-{os.getpid()}"
        try:
            _build(work, log or work.with_suffix(".log"))
            (work / FINISHED).write_text(json.dumps(inputs(), indent=1) + "\n")
            work.rename(final)
        finally:
            if work.exists():
                _remove_tree(work)
    return Dom0Image(final)


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_tree(tree: Path) -> None:
    """Remove a build folder, first unmounting what a killed build left mounted in it
    (its chroot binds the host's /dev: removing through it would delete host devices)."""
    prefix = str(tree.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], check=True)
    shutil.rmtree(tree)


def _run(args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    with open(log, "ab") as out:
        out.write(("+ " + " ".join(args) + "\n").encode())
        out.flush()
        subprocess.run(args, check=True, stdout=out, stderr=subprocess.STDOUT,
                       env={**os.environ, **(env or {})})


def _fetch(args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """A step that downloads from the mirror: its failure means "cannot be built here"."""
    try:
        _run(args, log, env)
    except subprocess.CalledProcessError as e:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise Dom0Unavailable(f"{args[0]} failed ({e.returncode}); end of {log}:\n"
                              + "\n".join(tail)) from e


def _build(work: Path, log: Path) -> None:
    root = work / "root"
    work.mkdir(parents=True)
    log.unlink(missing_ok=True)
    _fetch(["debootstrap", "--variant=minbase", "--include=" + ",".join(BOOTSTRAP_PACKAGES),
            SUITE, str(root), MIRROR], log)
    _install(root, log)
    _configure(root)
    _keys(root, work, log)
    _extract_boot_files(root, work)
    _make_ext4(root, work / "root.img", log)
    shutil.rmtree(root)


def _install(root: Path, log: Path) -> None:
    with apt_chroot(root) as env:
        _fetch(["chroot", str(root), "apt-get", "install", "-y", "-q",
                "--no-install-recommends", *DOM0_PACKAGES], log, env)
        _run(["chroot", str(root), "apt-get", "clean"], log, env)
        _write_units(root)
        _run(["chroot", str(root), "systemctl", "enable", "systemd-networkd",
              "vauban-dom0-ready.service"], log)


def _write_units(root: Path) -> None:
    """The units dom0 runs beyond Debian's: DHCP on the NIC and the ready line."""
    network = root / "etc/systemd/network/10-vauban-dhcp.network"
    network.parent.mkdir(parents=True, exist_ok=True)
    network.write_text("[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n")
    # xl only works once Debian's LSB xen.service has started xenstored and xenconsoled
    (root / "etc/systemd/system/vauban-dom0-ready.service").write_text(
        "[Unit]\n"
        "Description=Say on the console that xl and sshd are up\n"
        "After=xen.service ssh.service systemd-networkd.service\n"
        "Wants=xen.service ssh.service\n\n"
        "[Service]\nType=oneshot\n"
        f"ExecStart=/bin/sh -c 'if xl info >/dev/null; then echo {READY_LINE};"
        f" else echo {XL_FAILED_LINE}; fi >/dev/hvc0'\n\n"
        "[Install]\nWantedBy=multi-user.target\n")


def _configure(root: Path) -> None:
    """Identity, mounts, consoles: what a booted dom0 needs beyond its packages."""
    (root / "etc/hostname").write_text("vauban-dom0\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 vauban-dom0\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    (root / "etc/machine-id").write_text("")
    # a getty on hvc0 cuts off what units write there: the ready line would be lost
    getty = root / "etc/systemd/system/serial-getty@hvc0.service"
    getty.unlink(missing_ok=True)
    getty.symlink_to("/dev/null")
    # xenconsoled keeps every guest's console in a file the backend reads
    # (Debian's /etc/init.d/xen sources /etc/default/xen for the daemon's arguments)
    (root / "etc/default/xen").write_text(
        f'XENCONSOLED_ARGS="--log=guest --log-dir={CONSOLE_LOG_DIR}"\n')
    (root / CONSOLE_LOG_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (root / "etc/ssh/sshd_config.d/vauban.conf").write_text(
        "HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n")
    (root / "var/lib/vauban-xl").mkdir(parents=True, exist_ok=True)


def _keys(root: Path, work: Path, log: Path) -> None:
    """A host key and a client key of this build's own; dom0 keeps no other host key."""
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    host_key = root / "etc/ssh/ssh_host_ed25519_key"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vauban-dom0",
          "-f", str(host_key)], log)
    shutil.copyfile(host_key.with_suffix(".pub"), work / "ssh_host_ed25519_key.pub")
    client = work / "client_key"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vauban-xl-backend",
          "-f", str(client)], log)
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text(client.with_suffix(".pub").read_text())
    authorized.chmod(0o600)


def _extract_boot_files(root: Path, work: Path) -> None:
    boot = root / "boot"
    (xen_gz,) = boot.glob("xen-4.17-amd64.gz")
    with gzip.open(xen_gz, "rb") as src, open(work / "xen", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (vmlinuz,) = boot.glob("vmlinuz-*")
    (initrd,) = boot.glob("initrd.img-*")
    shutil.copyfile(vmlinuz, work / "vmlinuz")
    shutil.copyfile(initrd, work / "initrd.img")


def _make_ext4(root: Path, image: Path, log: Path) -> None:
    used = sum(p.lstat().st_size for p in root.rglob("*"))
    size_mib = used // (1 << 20) * 5 // 4 + SLACK_MIB
    _run(["mkfs.ext4", "-q", "-F", "-L", "vauban-dom0", "-d", str(root), str(image),
          f"{size_mib}M"], log)
    image.chmod(0o444)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--log", type=Path, help="debootstrap's and apt's output go here")
    args = parser.parse_args(argv)
    try:
        print(ensure_image(args.cache, args.log).folder)
    except Dom0Unavailable as e:
        print(f"dom0 image cannot be built here: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
