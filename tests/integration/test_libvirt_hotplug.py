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
from typing import Any

import libvirt
import pytest

from agent.drivers.hypervisor.base import DiskSpec, HypervisorError, VmSpec
from agent.drivers.hypervisor.libvirt import LibvirtDriver
from agent.drivers.storage.rbd.minicluster import ClusterInfo
from agent.protocol import (
    CloudInitSeed,
    DesiredState,
    DesiredVm,
    DesiredVolume,
    ImageRef,
    PowerState,
    VolumeAttachment,
)
from agent.volumes import VolumeKeeper
from images.seed import build_nocloud_seed
from tests.integration.libvirt_fixtures import URI, Domains
from tests.integration.test_rbd_driver import Names, make_driver

pytestmark = pytest.mark.integration

BOOT_TIMEOUT_S = 120.0  # TCG on a loaded 2-core machine; a boot normally takes a few seconds
HOTPLUG_TIMEOUT_S = 60.0  # guest sees an attach / releases a detached disk
GIB = 1024**3
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


# --- volumes on RBD, plugged by the agent's VolumeKeeper (real Ceph, real libvirtd) ----------


class CephVolumes:
    """The RBD storage driver with this test's own libvirt secret usage; `cleanup` removes
    the test's images and its secret."""

    def __init__(self, info: ClusterInfo, scratch: Path, hypervisor: LibvirtDriver) -> None:
        self.names = Names()
        self.usage = f"vauban-it-{self.names.token}"
        self.key = info.key
        self.store = make_driver(info, scratch, secret_usage=self.usage)
        self.keeper = VolumeKeeper(self.store, hypervisor,
                                   lambda: hypervisor.ensure_ceph_secret(self.usage, self.key))

    def cleanup(self, admin: Any, conn: libvirt.virConnect) -> list[str]:
        self.store.close()
        try:
            conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, self.usage).undefine()
        except libvirt.libvirtError:
            pass  # never made: the test failed before the first plug
        return self.names.cleanup(admin)


@pytest.fixture
def ceph_volumes(ceph_cluster: ClusterInfo, ceph_admin: Any, driver: LibvirtDriver,
                 tmp_path: Path) -> Iterator[CephVolumes]:
    """Request it before `domains`: its images are removed after the test's VMs are gone."""
    vols = CephVolumes(ceph_cluster, tmp_path / "scratch", driver)
    yield vols
    assert vols.cleanup(ceph_admin, driver.host.connection()) == []


def desired(vm: VmSpec, vol_id: str, size_gib: int, generation: int, *,
            attached: bool) -> DesiredState:
    """The controller's view: `vm` running (with the volume as vdc when `attached`)."""
    image = ImageRef(id="img", name="blank", disk_format="qcow2", size_bytes=0, sha256="0" * 64)
    dvm = DesiredVm(id=vm.id, name=vm.name, vcpus=vm.vcpus, memory_mib=vm.memory_mib,
                    image=image, power=PowerState.RUNNING, power_seq=0,
                    seed=CloudInitSeed(instance_id=vm.id, hostname="blank"),
                    volumes=[VolumeAttachment(volume_id=vol_id, target="vdc")] if attached
                    else [])
    return DesiredState(node_id="n1", generation=generation, vms=[dvm], volumes=[
        DesiredVolume(id=vol_id, name="data", pool="vauban", size_gib=size_gib, present=True)])


def one_pass(keeper: VolumeKeeper, hypervisor: LibvirtDriver, state: DesiredState) -> None:
    """What the agent's reconcile pass does with volumes: plan, then run every task."""
    own = {vm.id: vm for vm in hypervisor.list_vms()}
    work, _waiting = keeper.plan(state, own)
    for _lock, task in work:
        task()


def test_growing_an_attached_volume_tells_the_running_guest(
        ceph_volumes: CephVolumes, driver: LibvirtDriver, domains: Domains,
        workdir: Path) -> None:
    spec = blank_spec(domains, workdir)
    driver.define(spec)
    driver.start(spec.id)
    vol = ceph_volumes.names("vol")
    keeper = ceph_volumes.keeper
    one_pass(keeper, driver, desired(spec, vol, 1, 1, attached=True))
    assert [d.target for d in driver.list_disks(spec.id)] == ["vda", "vdc"], \
        keeper.ledger.report()
    dom = driver.host.connection().lookupByUUIDString(spec.id)
    assert dom.blockInfo("vdc")[0] == 1 * GIB

    one_pass(keeper, driver, desired(spec, vol, 2, 2, attached=True))

    assert keeper.ledger.report() == []
    assert dom.blockInfo("vdc")[0] == 2 * GIB  # what the running guest sees
    [seen] = keeper.observe(desired(spec, vol, 2, 2, attached=True),
                            {vm.id: vm for vm in driver.list_vms()})
    assert (seen.size_bytes, seen.attached_to, seen.target) == (2 * GIB, spec.id, "vdc")


def test_resize_disk_refuses_to_shrink(ceph_volumes: CephVolumes, driver: LibvirtDriver,
                                       domains: Domains, workdir: Path) -> None:
    spec = blank_spec(domains, workdir)
    driver.define(spec)
    driver.start(spec.id)
    vol = ceph_volumes.names("vol")
    one_pass(ceph_volumes.keeper, driver, desired(spec, vol, 2, 1, attached=True))

    with pytest.raises(HypervisorError, match="would shrink it"):
        driver.resize_disk(spec.id, "vdc", 1 * GIB)
    with pytest.raises(HypervisorError, match="no disk vdq"):
        driver.resize_disk(spec.id, "vdq", 3 * GIB)

    assert driver.host.connection().lookupByUUIDString(spec.id).blockInfo("vdc")[0] == 2 * GIB
    assert ceph_volumes.store.list_volumes()[0].size_bytes == 2 * GIB


def test_volume_is_detached_from_a_stopped_vm(ceph_volumes: CephVolumes, driver: LibvirtDriver,
                                              domains: Domains, workdir: Path) -> None:
    """Regression: a stopped VM kept the volume in its definition, as the agent only
    unplugged volumes from running VMs."""
    spec = blank_spec(domains, workdir)
    vol = ceph_volumes.names("vol")
    ceph_volumes.store.create_volume(vol, 1)
    ceph_volumes.keeper.prepare()
    driver.define(replace(spec, disks=(*spec.disks,
                                       ceph_volumes.store.volume_disk(vol, "vdc"))))
    keeper = ceph_volumes.keeper
    state = desired(spec, vol, 1, 1, attached=False)
    [before] = keeper.observe(state, {vm.id: vm for vm in driver.list_vms()})
    assert before.attached_to == spec.id  # in the stopped VM's definition

    one_pass(keeper, driver, state)

    assert keeper.ledger.report() == []
    assert driver.list_disks(spec.id) == list(spec.disks)
    [after] = keeper.observe(state, {vm.id: vm for vm in driver.list_vms()})
    assert after.attached_to is None
