"""The lab nodes' Debian 12 root: built once by debootstrap, cached by the hash of its inputs.

The root carries the Debian packages the playbooks' roles install (so that a rollout to
twenty nodes does not fetch them twenty times, and works with nodes that reach nothing
but the lab bridge), and nothing of Vauban: no wheel, settings or certificates, which
come from the rollout. It holds no SSH host key and no machine id: each node gets its
own. Nodes boot from an overlay over it, so it is never written after it is built.

    python -m lab.rootfs [--cache DIR]     # prints the root's path, building it if needed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = Path("/var/cache/vauban/lab-root")
# what debootstrap itself installs: enough for apt in the chroot to resolve the rest
BOOTSTRAP_PACKAGES = ("systemd", "systemd-sysv", "dbus", "ca-certificates")
# what a node runs, and what the roles install (present already, so never downloaded)
NODE_PACKAGES = (
    "libpam-systemd", "openssh-server", "python3", "python3-venv", "python3-apt",
    "iproute2", "iputils-ping", "kmod", "procps", "chrony", "nftables", "python3-nftables",
    "libvirt-daemon-system", "libvirt-clients", "qemu-system-x86", "qemu-utils",
    "qemu-block-extra", "ceph-common", "python3-rados", "python3-rbd",
    "pciutils", "pci.ids", "cryptsetup-bin",
    "ceph-osd", "udev",  # the ceph role: ceph-volume, the OSD daemon, udevadm it calls
    "ceph-mon", "ceph-mgr",  # the ceph_mon role: a region's first monitor and manager
)
# bump when what is done to the root after the packages changes
LAYOUT_VERSION = "1"
# the host has cgroup v1 hierarchies, which nspawn mounts read-only in a node
QEMU_CONF = "cgroup_controllers = [ ]\n"


def inputs() -> dict[str, object]:
    """Everything the root is made from; its hash names the cached root."""
    return {"suite": SUITE, "mirror": MIRROR, "bootstrap": sorted(BOOTSTRAP_PACKAGES),
            "packages": sorted(NODE_PACKAGES), "layout": LAYOUT_VERSION}


def input_hash() -> str:
    return hashlib.sha256(json.dumps(inputs(), sort_keys=True).encode()).hexdigest()[:16]


def root_path(cache: Path = DEFAULT_CACHE) -> Path:
    return cache / input_hash()


def ensure_root(cache: Path = DEFAULT_CACHE, log: Path | None = None) -> Path:
    """The cached root for the current inputs, built first if there is none.

    A build goes to a temporary folder renamed into place only once complete, so an
    interrupted build leaves no root that looks finished (its folder is removed on the
    next build). Raises CalledProcessError with the failing command on failure."""
    final = root_path(cache)
    if (final / ".vauban-lab-root.json").is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(f"{final.name}.building-*"):
        shutil.rmtree(stale)
    work = cache / f"{final.name}.building-{os.getpid()}"
    try:
        _build(work, log)
        (work / ".vauban-lab-root.json").write_text(json.dumps(inputs(), indent=1) + "\n")
        work.rename(final)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return final


def _run(args: list[str], log: Path | None, env: dict[str, str] | None = None) -> None:
    with open(log or os.devnull, "ab") as out:
        subprocess.run(args, check=True, stdout=out, stderr=subprocess.STDOUT,
                       env={**os.environ, **(env or {})})


@contextmanager
def apt_chroot(root: Path) -> Iterator[dict[str, str]]:
    """`root` (a debootstrapped tree) made ready for apt-get run through chroot: no
    service starts inside it (policy-rc.d), proc, sys and the host's /dev are mounted.
    Yields apt's environment. Afterwards, also after a failure, the mounts are detached
    (lazily: a process left inside cannot hold them) and the policy removed."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    with ExitStack() as mounts:
        mounts.callback(policy.unlink, missing_ok=True)
        for source, where in ((["-t", "proc", "proc"], "proc"), (["-t", "sysfs", "sysfs"], "sys"),
                              (["--bind", "/dev"], "dev")):
            target = str(root / where)
            subprocess.run(["mount", *source, target], check=True)
            mounts.callback(subprocess.run, ["umount", "-l", target], check=False)
        yield {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}


def _build(root: Path, log: Path | None) -> None:
    _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(BOOTSTRAP_PACKAGES),
          SUITE, str(root), MIRROR], log)
    with apt_chroot(root) as env:
        _run(["chroot", str(root), "apt-get", "install", "-y", "-q",
              "--no-install-recommends", *NODE_PACKAGES], log, env)
        _run(["chroot", str(root), "apt-get", "clean"], log, env)
    _strip_identity(root)
    (root / "etc/libvirt/qemu.conf").write_text(QEMU_CONF)


def _strip_identity(root: Path) -> None:
    """No node may share another's SSH host key or machine id: each node writes its own."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    (root / "etc/hostname").write_text("")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--log", type=Path, help="debootstrap's and apt's output go here")
    args = parser.parse_args(argv)
    print(ensure_root(args.cache, args.log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
