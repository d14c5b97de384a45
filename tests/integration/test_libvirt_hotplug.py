"""Disk hot-plug through LibvirtDriver, against the real libvirtd and the booted test guest.

The test guest prints `vauban-testguest disks=<vd* names>` on its serial console
at boot and whenever its set of virtio disks changes, so a test sees what the
guest kernel sees. Every domain and file a test makes has a unique name, is
recorded, and is removed in teardown; nothing else on the host is touched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.drivers.hypervisor.base import DiskSpec, HypervisorError, VmSpec
from agent.drivers.hypervisor.libvirt import LibvirtDriver
from agent.protocol import CloudInitSeed
from images.seed import build_nocloud_seed
from tests.integration.libvirt_fixtures import URI, Domains

pytestmark = pytest.mark.integration

BOOT_TIMEOUT_S = 120.0  # TCG on a loaded 2-core machine; a boot normally takes a few seconds
HOTPLUG_TIMEOUT_S = 60.0  # guest sees an attach / releases a detached disk
DISKS_LINE = re.compile(r"vauban-testguest disks=([a-z0-9,]*)")


@pytest.fixture
def driver(libvirtd: list[int]) -> Iterator[LibvirtDriver]:
    drv = LibvirtDriver(URI, accelerated=False, detach_timeout=HOTPLUG_TIMEOUT_S)
    yield drv
    drv.host.close()


def qcow2(path: Path, size: str = "16M", backing: Path | None = None) -> Path:
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        cmd += ["-F", "raw", "-b", str(backing)]
    subprocess.run([*cmd, str(path)] + ([] if backing else [size]), check=True)
    return path


def guest_spec(domains: Domains, workdir: Path, image: Path) -> VmSpec:
    """The test guest: an overlay of (a private copy of) the image as vda, a seed as vdb.

    The copy keeps libvirt's relabelling of backing files off the shared image.
    """
    vm_id = domains.new_id()
    base = workdir / "testguest.raw"
    shutil.copyfile(image, base)
    seed = workdir / "seed.iso"
    build_nocloud_seed(CloudInitSeed(instance_id=f"iid-{vm_id[:8]}", hostname="tg-hotplug"),
                       seed)
    return VmSpec(id=vm_id, name=f"vauban-it-{vm_id}", vcpus=1, memory_mib=256,
                  disks=(DiskSpec(qcow2(workdir / "root.qcow2", backing=base), "qcow2", "vda"),
                         DiskSpec(seed, "raw", "vdb", readonly=True)),
                  console_log=workdir / "console.log", labels={"test": "hotplug"})


def blank_spec(domains: Domains, workdir: Path) -> VmSpec:
    """A VM without an OS: enough for what libvirt alone decides."""
    vm_id = domains.new_id()
    return VmSpec(id=vm_id, name=f"vauban-it-{vm_id}", vcpus=1, memory_mib=64,
                  disks=(DiskSpec(qcow2(workdir / f"{vm_id}.qcow2"), "qcow2", "vda"),),
                  console_log=workdir / f"{vm_id}.log")


def console(log: Path) -> str:
    try:
        return log.read_text(errors="replace").replace("\r", "")
    except FileNotFoundError:
        return ""


def wait_for_disks(log: Path, expected: str, *, since: int = 0,
                   timeout: float = HOTPLUG_TIMEOUT_S) -> float:
    """Poll the console until the guest's latest `disks=` line after offset `since` says
    `expected`; return the seconds it took. Fails with the console on timeout."""
    t0 = time.monotonic()
    while True:
        text = console(log)
        seen = DISKS_LINE.findall(text[since:])
        if seen and seen[-1] == expected:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"guest never said disks={expected} within {timeout:.0f}s "
                        f"(last: {seen[-1:] or 'none'}); console:\n{text[since:]}")
        time.sleep(0.1)  # polling interval, not a stand-in for the condition


@pytest.mark.timeout(600)
def test_guest_sees_a_hot_plugged_disk_come_and_go(
        driver: LibvirtDriver, domains: Domains, workdir: Path,
        testguest_image: Path) -> None:
    spec = guest_spec(domains, workdir, testguest_image)
    driver.define(spec)
    driver.start(spec.id)
    wait_for_disks(spec.console_log, "vda,vdb", timeout=BOOT_TIMEOUT_S)
    assert driver.list_disks(spec.id) == list(spec.disks)

    data = DiskSpec(qcow2(workdir / "data.qcow2", "32M"), "qcow2", "vdc")
    t0 = time.monotonic()
    driver.attach_disk(spec.id, data)
    attach_s = time.monotonic() - t0
    seen_s = wait_for_disks(spec.console_log, "vda,vdb,vdc")
    print(f"attach {attach_s:.2f}s, guest saw it {seen_s:.1f}s later")
    assert driver.list_disks(spec.id) == [*spec.disks, data]

    # persistent too: after a power cycle the guest boots with the disk
    driver.stop(spec.id, grace_seconds=60)
    assert driver.list_disks(spec.id) == [*spec.disks, data]
    mark = len(console(spec.console_log))
    driver.start(spec.id)
    wait_for_disks(spec.console_log, "vda,vdb,vdc", since=mark, timeout=BOOT_TIMEOUT_S)

    t0 = time.monotonic()
    driver.detach_disk(spec.id, "vdc")
    detach_s = time.monotonic() - t0
    print(f"detach returned after {detach_s:.2f}s (guest released the device)")
    wait_for_disks(spec.console_log, "vda,vdb", since=mark)
    assert driver.list_disks(spec.id) == list(spec.disks)
    driver.stop(spec.id, grace_seconds=60)
    assert driver.list_disks(spec.id) == list(spec.disks)  # gone from the definition too
    assert data.path.exists()  # the file belongs to the storage driver


def test_attach_to_a_stopped_vm_is_refused(driver: LibvirtDriver, domains: Domains,
                                           workdir: Path) -> None:
    spec = blank_spec(domains, workdir)
    driver.define(spec)
    data = DiskSpec(qcow2(workdir / "data.qcow2"), "qcow2", "vdc")

    with pytest.raises(HypervisorError, match="not running"):
        driver.attach_disk(spec.id, data)

    assert driver.list_disks(spec.id) == list(spec.disks)


def test_refusals_on_a_running_vm_change_nothing(driver: LibvirtDriver, domains: Domains,
                                                 workdir: Path) -> None:
    spec = blank_spec(domains, workdir)
    driver.define(spec)
    driver.start(spec.id)
    other = DiskSpec(qcow2(workdir / "other.qcow2"), "qcow2", "vda")

    with pytest.raises(HypervisorError, match="root disk cannot be detached"):
        driver.detach_disk(spec.id, "vda")
    with pytest.raises(HypervisorError, match="target vda is already in use"):
        driver.attach_disk(spec.id, other)
    with pytest.raises(HypervisorError, match="no disk vdq"):
        driver.detach_disk(spec.id, "vdq")
    with pytest.raises(HypervisorError, match="not a virtio name"):
        driver.attach_disk(spec.id, DiskSpec(other.path, "qcow2", "sda"))
    with pytest.raises(HypervisorError, match="no VM"):
        driver.attach_disk(str(uuid.uuid4()), DiskSpec(other.path, "qcow2", "vdc"))

    assert driver.list_disks(spec.id) == list(spec.disks)


def test_failed_attach_leaves_nothing(driver: LibvirtDriver, domains: Domains,
                                      workdir: Path) -> None:
    spec = blank_spec(domains, workdir)
    driver.define(spec)
    driver.start(spec.id)
    missing = DiskSpec(workdir / "no-such-file.qcow2", "qcow2", "vdc")

    with pytest.raises(HypervisorError):
        driver.attach_disk(spec.id, missing)

    assert driver.list_disks(spec.id) == list(spec.disks)
    driver.stop(spec.id, grace_seconds=0)
    assert driver.list_disks(spec.id) == list(spec.disks)


def test_detach_from_a_stopped_vm_edits_its_definition(
        driver: LibvirtDriver, domains: Domains, workdir: Path) -> None:
    spec = blank_spec(domains, workdir)
    data = DiskSpec(qcow2(workdir / "data.qcow2"), "qcow2", "vdc")
    driver.define(replace(spec, disks=(*spec.disks, data)))

    driver.detach_disk(spec.id, "vdc")

    assert driver.list_disks(spec.id) == list(spec.disks)
