"""The ISO's base layer: Debian 12 with the node's packages, kernel and live-boot, squashed.

Built once by debootstrap + chroot apt and cached by the hash of its inputs, as the lab's
root is (lab/rootfs.py). The Debian packages the playbooks' roles install are read from
the roles' defaults, so the ISO and a node rolled out to carry the same list. The base has
no SSH host key, machine id or hostname: each installed node (and each live boot) makes its
own. Beside the squashfs the cache keeps the kernel and initrd the ISO boots, and the
installed packages (name, version, architecture) for the SBOM.

    <cache>/base-<hash>/base.squashfs, vmlinuz, initrd.img, manifest.json
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import yaml

from iso import hashing
from iso.identity import strip_identity
from iso.mounts import chroot_mounts, remove_tree

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# the image's apt sources: the release, its updates and its security fixes (apt takes the
# newest of each package from them at build time)
SOURCES_LIST = (f"deb {MIRROR} {SUITE} main\n"
                f"deb {MIRROR} {SUITE}-updates main\n"
                f"deb {SECURITY_MIRROR} {SUITE}-security main\n")
ROLES = Path(__file__).resolve().parent.parent / "playbooks" / "roles"
# (role, defaults key): the Debian packages each role installs on a node
ROLE_PACKAGE_LISTS = (
    ("base", "base_packages"), ("hypervisor", "hypervisor_packages"),
    ("agent", "agent_packages"), ("ceph", "ceph_packages"), ("ceph", "ceph_mon_packages"),
)
BOOTSTRAP_PACKAGES = ("systemd", "systemd-sysv", "dbus", "ca-certificates")
# what the appliance needs beyond the roles: a kernel that boots from a live medium, the
# software role's python3-venv, remote access, and what the installer writes disks with
APPLIANCE_PACKAGES = (
    "linux-image-amd64", "live-boot", "live-boot-initramfs-tools", "initramfs-tools",
    "libpam-systemd", "systemd-resolved", "udev", "kmod", "procps",
    "python3", "python3-venv", "openssh-server", "iputils-ping", "pci.ids", "less",
    "grub-pc-bin", "grub-efi-amd64-bin", "grub2-common", "efibootmgr",
    "util-linux", "fdisk", "dosfstools", "e2fsprogs", "squashfs-tools",
    "mtools",  # the installer writes the EFI system partition with it (no vfat mount needed)
    # Ansible's apt module needs it on the node, and would fetch it there otherwise: an
    # installed node is upgraded by rollouts, and reaches no mirror
    "python3-apt",
)
# bump when what is done to the root after the packages changes
LAYOUT_VERSION = "2"
DEFAULT_CACHE = Path("/var/cache/vauban/iso")
KEEP_BASES = 2  # each is about 450 MiB


@dataclass(frozen=True)
class Base:
    """A finished base layer in the cache (never written after it is complete)."""

    path: Path
    hash: str

    @property
    def squashfs(self) -> Path:
        return self.path / "base.squashfs"

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    def manifest(self) -> dict[str, object]:
        """inputs, built (epoch seconds) and packages ([{name, version, arch}] by name)."""
        data: dict[str, object] = json.loads((self.path / "manifest.json").read_text())
        return data


def role_packages(roles: Path = ROLES) -> list[str]:
    """The Debian packages the roles install, read from their defaults (sorted, unique)."""
    names: set[str] = set()
    for role, key in ROLE_PACKAGE_LISTS:
        defaults = yaml.safe_load((roles / role / "defaults" / "main.yml").read_text())
        names.update(str(name) for name in defaults[key])
    return sorted(names)


def packages(roles: Path = ROLES) -> list[str]:
    """Everything apt installs into the base after debootstrap (a trailing '-' removes)."""
    return sorted(set(role_packages(roles)) | set(APPLIANCE_PACKAGES))


def inputs(roles: Path = ROLES) -> dict[str, object]:
    """Everything the base is made from; its hash names the cached base."""
    return {"suite": SUITE, "mirror": MIRROR, "sources": SOURCES_LIST,
            "bootstrap": sorted(BOOTSTRAP_PACKAGES),
            "packages": packages(roles), "layout": LAYOUT_VERSION,
            "mksquashfs": hashing.tool_version("squashfs-tools")}


def base_path(cache: Path, roles: Path = ROLES) -> Path:
    return cache / f"base-{hashing.digest(inputs(roles))}"


def ensure_base(cache: Path = DEFAULT_CACHE, log: Path | None = None,
                roles: Path = ROLES) -> Base:
    """The cached base for the current inputs, built first if there is none.

    A build goes to `base-<hash>.building-<pid>`, renamed into place only once complete,
    so an interrupted build never looks finished; stale partial builds (of any hash) whose
    process is gone are removed first. Raises CalledProcessError on a failed command."""
    final = base_path(cache, roles)
    if (final / "manifest.json").is_file():
        return Base(final, final.name.removeprefix("base-"))
    cache.mkdir(parents=True, exist_ok=True)
    remove_stale(cache)
    work = cache / f"{final.name}.building-{os.getpid()}"
    try:
        root = work / "root"
        root.mkdir(parents=True)
        _build_root(root, roles, log)
        listing = installed_packages(root)
        for name in ("vmlinuz", "initrd.img"):  # the links Debian keeps to the newest
            shutil.copyfile(root / name, work / name)
        _run(["mksquashfs", str(root), str(work / "base.squashfs"), "-noappend", "-comp", "zstd",
              "-Xcompression-level", "15", "-b", "1M", "-no-progress", "-quiet"], log)
        remove_tree(root)
        manifest = {"inputs": inputs(roles), "built": int(time.time()), "packages": listing}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            work.rename(final)
        except OSError:  # another process finished the same base first: keep that one
            if not (final / "manifest.json").is_file():
                raise
    finally:
        remove_tree(work)
    prune(cache, final, "base-*", KEEP_BASES)
    return Base(final, final.name.removeprefix("base-"))


def prune(cache: Path, keep: Path, pattern: str, count: int) -> None:
    """Removes the finished builds matching `pattern` but `keep` and the `count` - 1
    newest others (a checkout going back to earlier inputs finds its build still there)."""
    others = sorted((p for p in cache.glob(pattern)
                     if ".building-" not in p.name and p != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[count - 1:]:
        if old.is_dir():
            remove_tree(old)
        else:
            old.unlink()


def remove_stale(cache: Path) -> None:
    """Removes the partial builds (`*.building-<pid>`) whose process is gone."""
    for stale in cache.glob("*.building-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_tree(stale)


def _run(args: list[str], log: Path | None, env: dict[str, str] | None = None) -> None:
    with open(log or os.devnull, "ab") as out:
        subprocess.run(args, check=True, stdout=out, stderr=subprocess.STDOUT,
                       env={**os.environ, **(env or {})})


def _build_root(root: Path, roles: Path, log: Path | None) -> None:
    bootstrap_root(root, packages(roles), log)


def bootstrap_root(root: Path, wanted: Iterable[str], log: Path | None) -> None:
    """Debian 12 in `root` (debootstrap, then apt in a chroot from the release, its updates
    and security fixes) with `wanted` and no recommends; no host key, machine id or
    hostname left in it, nor the mirror's indexes. CalledProcessError on a failed step."""
    _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(BOOTSTRAP_PACKAGES),
          SUITE, str(root), MIRROR], log)
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")  # nothing starts inside the chroot
    policy.chmod(0o755)
    env = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    with ExitStack() as mounts:
        chroot_mounts(root, mounts)
        (root / "etc/apt/sources.list").write_text(SOURCES_LIST)
        _run(["chroot", str(root), "apt-get", "update", "-q"], log, env)
        _run(["chroot", str(root), "apt-get", "dist-upgrade", "-y", "-q"], log, env)
        _run(["chroot", str(root), "apt-get", "install", "-y", "-q",
              "--no-install-recommends", *wanted], log, env)
        _run(["chroot", str(root), "apt-get", "clean"], log, env)
    policy.unlink()
    for lists in (root / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()  # the mirror's indexes: large, dated, and of no use offline
    strip_identity(root)


def installed_packages(root: Path) -> list[dict[str, str]]:
    """dpkg's installed packages in `root`, as [{name, version, arch}] sorted by name."""
    out = subprocess.run(
        ["dpkg-query", "--admindir", str(root / "var/lib/dpkg"), "-W",
         "-f", "${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\n"],
        check=True, capture_output=True, text=True).stdout
    return parse_dpkg_query(out.splitlines())


def parse_dpkg_query(lines: Iterable[str]) -> list[dict[str, str]]:
    rows = []
    for line in lines:
        status, name, version, arch = line.split("\t")
        if status == "installed":
            rows.append({"name": name, "version": version, "arch": arch})
    return sorted(rows, key=lambda row: (row["name"], row["arch"]))
