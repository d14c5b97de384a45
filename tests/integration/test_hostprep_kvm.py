"""Host preparation against the real libvirtd: /dev/kvm as udev would leave it.

Regression: without udev, /dev/kvm stayed root:root 0600. libvirtd probed QEMU as
root (KVM found) but checked its capability cache as libvirt-qemu (KVM not
accessible), so it probed QEMU again on every domain lookup: each define took
half a minute or more.
"""

from __future__ import annotations

import grp
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.hostprep import KVM_DEVICE, KVM_GROUP, LIBVIRTD_PIDFILE, VIRTLOGD_PIDFILE
from tests.integration.libvirt_fixtures import Domains

pytestmark = pytest.mark.integration

CAPS_CACHE = Path("/var/cache/libvirt/qemu/capabilities")


def _cache_files() -> dict[str, tuple[int, int]]:
    """Each QEMU capability cache file with (inode, mtime in ns): a rewrite changes them."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in CAPS_CACHE.glob("*.xml")}


@pytest.mark.skipif(not KVM_DEVICE.exists(), reason="this machine has no /dev/kvm")
def test_kvm_device_has_udev_group_and_mode(libvirtd: list[int]) -> None:
    st = os.stat(KVM_DEVICE)
    assert grp.getgrgid(st.st_gid).gr_name == KVM_GROUP
    assert stat.S_IMODE(st.st_mode) == 0o660


@pytest.mark.skipif(not KVM_DEVICE.exists(), reason="this machine has no /dev/kvm")
def test_second_define_does_not_probe_qemu_again(domains: Domains) -> None:
    domains.define_foreign(f"vauban-it-probe-{os.getpid()}-a")  # may probe once: a fresh cache
    before = _cache_files()
    assert before, f"libvirtd wrote no QEMU capability cache under {CAPS_CACHE}"

    second = domains.define_foreign(f"vauban-it-probe-{os.getpid()}-b")

    assert domains.exists(second)
    assert _cache_files() == before, "libvirtd probed QEMU again and rewrote its cache"


def test_every_printed_line_says_what_it_is(libvirtd: list[int]) -> None:
    """Regression: it printed the PIDs it started, bare, or an empty line."""
    out = subprocess.run([sys.executable, "-m", "agent.hostprep"], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    lines = out.splitlines()
    daemons = [re.fullmatch(rf"({name}): (started|already running), pid (\d+)", line)
               for name, line in zip(("virtlogd", "libvirtd"), lines, strict=False)]
    # had the daemons gone meanwhile (stopped by whoever started them), the session stops
    # the ones this run started
    libvirtd.extend(int(m[3]) for m in daemons if m is not None and m[2] == "started")

    assert len(lines) == 3 and all(daemons), lines
    pids = [int(f.read_text()) for f in (VIRTLOGD_PIDFILE, LIBVIRTD_PIDFILE)]
    assert [int(m[3]) for m in daemons if m is not None] == pids
    assert re.fullmatch(r"/dev/kvm: (group \S+, mode \d{4}|absent .*)", lines[2]), lines
