"""`make image-debian`: a Debian 12 generic cloud image, built from Debian's packages only.

What a cloud user expects of a Debian image: the cloud kernel, systemd, cloud-init
reading a NoCloud seed (no network metadata service is probed), qemu-guest-agent,
OpenSSH, sudo, and growpart so the root grows to the disk it is given. The disk is GPT
with a BIOS boot partition, an EFI system partition and the root (the appliance
installer's layout and GRUB, for BIOS and UEFI alike; GRUB is unsigned, so the image
cannot boot with Secure Boot on). Nothing identifies one VM: no SSH host key, machine
id or hostname (cloud-init and systemd make them on first boot).

The result is a compressed qcow2 in the cache, named by the hash of its inputs, so a
fresh checkout reuses it:

    /var/cache/vauban/images/debian-12-<hash>.qcow2

    python -m images.debian --out var/images/debian-12.qcow2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from appliance.install import install_grub, make_filesystems, partition
from iso import hashing
from iso.base import SOURCES_LIST, bootstrap_root, prune, remove_stale
from iso.identity import strip_identity
from iso.mounts import mount, remove_tree

PACKAGES = (
    "linux-image-cloud-amd64", "initramfs-tools", "systemd-sysv", "systemd-resolved",
    "udev", "kmod", "cloud-init", "cloud-guest-utils", "fdisk", "e2fsprogs",
    "qemu-guest-agent", "openssh-server", "sudo", "iproute2", "iputils-ping", "netbase",
    "locales", "less",
)
# cloud-init: the NoCloud seed only (no metadata service is probed, so a VM without one
# boots without waiting), networking by systemd-networkd from network-config v2, and the
# C.UTF-8 locale that libc carries (another one would have to be generated first: the
# locale module fails without the locales package and its data)
CLOUD_CFG = """\
# written by the Vauban image builder
datasource_list: [NoCloud, None]
locale: C.UTF-8
system_info:
  network:
    renderers: [networkd]
"""
FSTAB = "UUID={root} / ext4 defaults,discard,errors=remount-ro 0 1\n"
LAYOUT_VERSION = "2"  # bump when what is done after the packages changes
KEEP_IMAGES = 2  # each is about 180 MiB
DISK_SIZE = "2G"
DEFAULT_CACHE = Path("/var/cache/vauban/images")
TITLE = "Debian GNU/Linux 12 (bookworm)"


def inputs() -> dict[str, object]:
    return {"packages": sorted(PACKAGES), "sources": SOURCES_LIST, "cloud_cfg": CLOUD_CFG,
            "fstab": FSTAB, "layout": LAYOUT_VERSION, "size": DISK_SIZE}


def cached_path(cache: Path = DEFAULT_CACHE) -> Path:
    return cache / f"debian-12-{hashing.digest(inputs())}.qcow2"


def _run(argv: list[str], log: Path | None = None) -> str:
    with open(log or os.devnull, "ab") as err:
        return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=err,
                              text=True).stdout


def configure(root: Path) -> None:
    """What the packages leave to do in `root`: cloud-init's settings, networkd and
    resolved enabled, no identity of the build machine."""
    (root / "etc/cloud/cloud.cfg.d/90-vauban.cfg").write_text(CLOUD_CFG)
    (root / "etc/default/locale").write_text("LANG=C.UTF-8\n")  # what cloud-init will find
    for unit in ("systemd-networkd.service", "systemd-resolved.service"):
        _run(["chroot", str(root), "systemctl", "enable", unit])
    (root / "etc/apt/sources.list").write_text(SOURCES_LIST)
    strip_identity(root)


@contextmanager
def _loop(backing: Path) -> Iterator[Path]:
    device = Path(_run(["losetup", "--find", "--show", "--partscan", str(backing)]).strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", str(device)], check=False)


def write_disk(root: Path, raw: Path, work: Path) -> None:
    """`raw` becomes a bootable disk holding `root` (GPT, ext4 root, GRUB for BIOS and
    UEFI). Everything mounted here is unmounted, the loop device detached, either way."""
    with open(raw, "wb") as f:
        f.truncate(int(DISK_SIZE.rstrip("G")) * 1024**3)
    target = work / "target"
    target.mkdir()
    with _loop(raw) as device, ExitStack() as mounts:
        parts = partition(device)
        root_uuid, _ = make_filesystems(parts)
        mount(mounts, [str(parts.root)], target)
        # the tree as it is: owners, modes, links, extended attributes (file capabilities)
        _run(["cp", "-a", "--preserve=all", f"{root}/.", str(target)])
        (target / "etc/fstab").write_text(FSTAB.format(root=root_uuid))
        install_grub(device, parts.esp, target, root_uuid, title=TITLE)
        _run(["sync"])


def build(cache: Path = DEFAULT_CACHE, log: Path | None = None) -> Path:
    """The cached image for the current inputs, built first if there is none (in a work
    folder of the cache, renamed into place only when complete)."""
    final = cached_path(cache)
    if final.is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    remove_stale(cache)
    work = cache / f"{final.stem}.building-{os.getpid()}"
    remove_tree(work)
    work.mkdir()
    try:
        root = work / "root"
        root.mkdir()
        bootstrap_root(root, PACKAGES, log)
        configure(root)
        raw = work / "disk.raw"
        write_disk(root, raw, work)
        remove_tree(root)
        partial = work / "disk.qcow2"
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", str(raw),
              str(partial)], log)
        os.replace(partial, final)
    finally:
        remove_tree(work)
    prune(cache, final, "debian-12-*.qcow2", KEEP_IMAGES)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m images.debian",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="where the image goes (a hard link to the cached one)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--log", type=Path, help="debootstrap's and apt's output go here")
    args = parser.parse_args(argv)
    image = build(args.cache, args.log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.unlink(missing_ok=True)
    try:
        os.link(image, args.out)
    except OSError:  # another filesystem
        _run(["cp", "--reflink=auto", str(image), str(args.out)])
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
