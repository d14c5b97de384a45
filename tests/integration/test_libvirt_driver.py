"""LibvirtDriver against the real libvirtd at qemu:///system, and the KVM probe on this host.

Every domain and file a test makes has a unique name, is recorded, and is removed
in teardown; domains the tests did not create are never touched.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import libvirt
import pytest

from agent.drivers.hypervisor.base import (
    DiskSpec,
    HostdevSpec,
    HypervisorError,
    RbdSource,
    VmSpec,
)
from agent.drivers.hypervisor.libvirt import LibvirtDriver
from agent.drivers.hypervisor.libvirt.guest import Guest
from hardware.kvmprobe import boot_marker, probe_kvm
from tests.integration.libvirt_fixtures import URI, Domains

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def started_daemons(libvirtd: list[int]) -> list[int]:
    """libvirtd up; the PIDs of the daemons this test session started."""
    return libvirtd


@pytest.fixture
def driver(started_daemons: list[int]) -> Iterator[LibvirtDriver]:
    drv = LibvirtDriver(URI, accelerated=False)
    yield drv
    drv.host.close()


def make_spec(domains: Domains, workdir: Path, **overrides: object) -> VmSpec:
    vm_id = domains.new_id()
    disk = workdir / f"{vm_id}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    values: dict[str, object] = dict(
        id=vm_id, name=f"vauban-it-{vm_id}", vcpus=1, memory_mib=64,
        disks=(DiskSpec(disk, "qcow2", "vda"),), console_log=workdir / f"{vm_id}.log",
        power_seq=1, labels={"test": "integration"})
    values.update(overrides)
    return VmSpec(**values)  # type: ignore[arg-type]


def observed(driver: LibvirtDriver, vm_id: str) -> dict[str, object] | None:
    for vm in driver.list_vms():
        if vm.id == vm_id:
            return {"name": vm.name, "running": vm.running, "power_seq": vm.power_seq,
                    "console_log": vm.console_log}
    return None


def test_define_start_stop_undefine(driver: LibvirtDriver, domains: Domains,
                                    workdir: Path) -> None:
    spec = make_spec(domains, workdir)

    driver.define(spec)
    assert observed(driver, spec.id) == {"name": spec.name, "running": False, "power_seq": 1,
                                         "console_log": spec.console_log}

    driver.start(spec.id)
    driver.start(spec.id)  # no-op when running
    assert observed(driver, spec.id)["running"] is True  # type: ignore[index]
    assert spec.console_log.exists()

    driver.set_power_seq(spec.id, 7)  # while running: live and persistent definition
    assert observed(driver, spec.id)["power_seq"] == 7  # type: ignore[index]

    # No OS in the disk, so nothing answers the ACPI button: the grace runs out, then force.
    grace = 1.0
    t0 = time.monotonic()
    driver.stop(spec.id, grace_seconds=grace)
    assert time.monotonic() - t0 >= grace
    assert observed(driver, spec.id) == {"name": spec.name, "running": False, "power_seq": 7,
                                         "console_log": spec.console_log}
    driver.stop(spec.id, grace_seconds=grace)  # no-op when stopped

    driver.undefine(spec.id)
    assert observed(driver, spec.id) is None
    assert not domains.exists(spec.id)
    assert spec.disks[0].path.exists()  # disks belong to the storage driver
    driver.undefine(spec.id)  # unknown id: no-op


def test_guest_shutdown_reports_forced_power_off(driver: LibvirtDriver, domains: Domains,
                                                 workdir: Path) -> None:
    spec = make_spec(domains, workdir)
    driver.define(spec)
    driver.start(spec.id)
    dom = driver.host.lookup(spec.id)
    assert dom is not None
    guest = Guest(driver.host, dom)

    assert guest.shutdown(0.3) is False
    assert not guest.is_running()


def test_reset_restarts_a_running_vm_in_place_and_refuses_a_stopped_one(
        driver: LibvirtDriver, domains: Domains, workdir: Path) -> None:
    spec = make_spec(domains, workdir)
    driver.define(spec)
    with pytest.raises(HypervisorError, match="not running"):
        driver.reset(spec.id)
    assert observed(driver, spec.id)["running"] is False  # type: ignore[index]
    driver.start(spec.id)
    dom = driver.host.lookup(spec.id)
    assert dom is not None
    before = dom.ID()
    driver.reset(spec.id)
    assert observed(driver, spec.id)["running"] is True  # type: ignore[index]
    assert dom.ID() == before  # the same QEMU process: a reset, not a stop and start
    driver.stop(spec.id, grace_seconds=0)  # a forced stop: no ACPI press, off at once
    assert observed(driver, spec.id)["running"] is False  # type: ignore[index]


def test_undefine_removes_a_running_vm(driver: LibvirtDriver, domains: Domains,
                                       workdir: Path) -> None:
    spec = make_spec(domains, workdir)
    driver.define(spec)
    driver.start(spec.id)

    driver.undefine(spec.id)

    assert not domains.exists(spec.id)


def test_list_ignores_foreign_domains_and_never_touches_them(
        driver: LibvirtDriver, domains: Domains, workdir: Path) -> None:
    foreign = domains.define_foreign(f"foreign-{uuid.uuid4()}")
    ours = make_spec(domains, workdir)
    driver.define(ours)

    ids = {vm.id for vm in driver.list_vms()}

    assert ours.id in ids and foreign not in ids
    for action in (lambda: driver.undefine(foreign), lambda: driver.start(foreign),
                   lambda: driver.set_power_seq(foreign, 1)):
        with pytest.raises(HypervisorError, match="not a Vauban VM"):
            action()
    assert domains.exists(foreign)


def test_define_of_an_existing_id_raises_and_keeps_the_first(
        driver: LibvirtDriver, domains: Domains, workdir: Path) -> None:
    spec = make_spec(domains, workdir)
    driver.define(spec)
    other = make_spec(domains, workdir)
    clash = replace(other, id=spec.id, name=f"other-{spec.id}")

    with pytest.raises(HypervisorError, match="already defined"):
        driver.define(spec)
    with pytest.raises(HypervisorError, match="already defined"):
        driver.define(clash)

    assert observed(driver, spec.id)["name"] == spec.name  # type: ignore[index]


def test_failed_define_leaves_nothing(driver: LibvirtDriver, domains: Domains,
                                      workdir: Path) -> None:
    taken = f"foreign-{uuid.uuid4()}"
    domains.define_foreign(taken)
    before = {d.UUIDString() for d in domains.conn.listAllDomains(0)}
    name_clash = make_spec(domains, workdir, name=taken)
    bad_target = make_spec(domains, workdir)
    bad_target = replace(bad_target, disks=(DiskSpec(bad_target.disks[0].path, "qcow2", ""),))

    for spec in (name_clash, bad_target):
        with pytest.raises(HypervisorError):
            driver.define(spec)
        assert not domains.exists(spec.id)
    with pytest.raises(HypervisorError, match="not a UUID"):
        driver.define(replace(name_clash, id="not-a-uuid", name="x"))

    assert {d.UUIDString() for d in domains.conn.listAllDomains(0)} == before


def test_reconnects_after_the_connection_drops(driver: LibvirtDriver, domains: Domains,
                                               workdir: Path) -> None:
    spec = make_spec(domains, workdir)
    driver.define(spec)
    # the connection dies under the driver, as when libvirtd restarts
    driver.host.connection().close()
    assert spec.id in {vm.id for vm in driver.list_vms()}


def test_kvm_probe_answers_within_its_timeout(tmp_path: Path) -> None:
    timeout = 10.0
    cache = tmp_path / "kvm-probe.json"

    t0 = time.monotonic()
    result = probe_kvm(timeout=timeout, cache=cache)
    took = time.monotonic() - t0

    assert result.detail
    assert took < timeout + 15  # QEMU start and kill overhead, never an unbounded hang
    assert result.device or not result.usable  # usable implies the device exists
    assert _no_probe_qemu_left()

    t0 = time.monotonic()
    assert probe_kvm(timeout=timeout, cache=cache) == result
    assert time.monotonic() - t0 < 5  # from the cache: no second boot


def _no_probe_qemu_left() -> bool:
    """No QEMU of this host (not a lab node's container) still runs with a probe initramfs
    (the probe kills its own on timeout)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            if os.readlink(cmdline.parent / "root") != "/":
                continue  # a container's: the lab's nodes run their own agents beside
        except OSError:
            continue
        if any(b"vauban-kvmprobe-" in a for a in args):
            return False
    return True


def test_probe_guest_boots_under_tcg(guest_kernel: Path) -> None:
    """The probe's kernel + initramfs do work, so a KVM failure is KVM's, not the probe's."""
    seen, took, err = boot_marker("tcg", guest_kernel, timeout=120.0)

    assert seen, f"TCG boot printed no marker in {took:.0f}s: {err}"


# ---------------------------------------------------------------- RBD disks


def test_rbd_disk_is_defined_as_a_network_disk_and_read_back(
        driver: LibvirtDriver, domains: Domains, workdir: Path) -> None:
    """Only the definition: booting from RBD needs a Ceph cluster (tested with one)."""
    rbd = RbdSource(pool="vms", image=f"vol-{uuid.uuid4()}", user="vauban",
                    monitors=(("127.0.0.1", 6789), ("::1", 3300)),
                    secret_usage=f"vauban-it-{uuid.uuid4()}")
    spec = make_spec(domains, workdir)
    spec = replace(spec, disks=(*spec.disks, DiskSpec(rbd, "raw", "vdb")))

    driver.define(spec)

    assert driver.list_disks(spec.id) == list(spec.disks)
    xml = domains.conn.lookupByUUIDString(spec.id).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    disk = ET.fromstring(xml).find("devices/disk[@type='network']")
    assert disk is not None
    assert disk.find("source[@protocol='rbd']") is not None
    assert disk.find(".//secret[@type='ceph']") is not None


def test_libvirt_accepts_a_gpu_domain_and_refuses_to_start_it_without_the_device(
        driver: LibvirtDriver, domains: Domains, workdir: Path) -> None:
    """The hostdev XML is what libvirtd accepts; starting needs the real device bound."""
    missing_gpu, vgpu = "0000:7f:1f.7", str(uuid.uuid4())
    spec = make_spec(domains, workdir, hostdevs=(HostdevSpec("pci", missing_gpu),
                                                 HostdevSpec("mdev", vgpu)))
    driver.define(spec)
    xml = ET.fromstring(libvirt.open(URI).lookupByUUIDString(spec.id).XMLDesc())
    hostdevs = xml.findall("devices/hostdev")
    assert [(h.get("type"), h.get("managed")) for h in hostdevs] == [("pci", "no"),
                                                                     ("mdev", "no")]
    address = hostdevs[0].find("source/address")
    assert address is not None and (address.get("bus"), address.get("slot"),
                                    address.get("function")) == ("0x7f", "0x1f", "0x7")
    with pytest.raises(HypervisorError):
        driver.start(spec.id)
    assert observed(driver, spec.id)["running"] is False  # type: ignore[index]
    driver.undefine(spec.id)
    assert not domains.exists(spec.id)


def test_a_vm_without_a_guest_agent_is_not_frozen(driver: LibvirtDriver, domains: Domains,
                                                  workdir: Path) -> None:
    """No OS in the disk, so no guest agent: its snapshots can only be crash-consistent,
    and that is no error. A stopped VM holds nothing frozen either."""
    spec = make_spec(domains, workdir)
    driver.define(spec)
    assert driver.freeze_filesystems(spec.id) is False
    driver.thaw_filesystems(spec.id)  # stopped: nothing to thaw
    driver.start(spec.id)
    assert driver.freeze_filesystems(spec.id) is False
    with pytest.raises(HypervisorError, match="no VM"):
        driver.freeze_filesystems(domains.new_id())
    driver.stop(spec.id, grace_seconds=0)
