"""The XCP-ng pool drivers against the XAPI simulator (its own process, real HTTPS on
loopback): define, start, stop, undefine, root disks as VDIs, tasks and their faults."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from agent.drivers.hypervisor.base import DiskSpec, HypervisorError, NicSpec, VdiSource, VmSpec
from agent.drivers.hypervisor.xapi import XapiHypervisor
from agent.drivers.registry import load_hypervisor
from agent.drivers.storage.base import StorageError
from agent.drivers.storage.xapi import XapiStorage
from agent.drivers.xapi.events import EventLoop, PoolCache
from agent.drivers.xapi.pool import PoolClient
from agent.drivers.xapi.tasks import PoolOps
from tests.xapi_sim.process import SimProcess

pytestmark = pytest.mark.integration

GiB = 1024**3
WAIT = 60.0  # an upper bound on waits for the event loop, never reached when it works
IMAGE = "img-1"


def _client(pool: SimProcess) -> PoolClient:
    return PoolClient(pool.url(), "root", "secret",
                      {m.address: m.fingerprint for m in pool.members}, label="sim")


@dataclass
class Pool:
    sim: SimProcess
    cache: PoolCache
    hv: XapiHypervisor
    storage: XapiStorage
    seed: Path
    image: str  # the image's VDI

    def spec(self, vm_id: str, root: DiskSpec, memory_mib: int = 512) -> VmSpec:
        seed = DiskSpec(source=self.seed, format="raw", target="vdb", readonly=True)
        nic = NicSpec(mac="52:54:00:12:34:56", bridge="Pool-wide network", mtu=1500,
                      device="tap0")
        return VmSpec(id=vm_id, name=f"vauban-{vm_id}", vcpus=2, memory_mib=memory_mib,
                      disks=(root, seed), console_log=self.seed.parent / "unused.log",
                      labels={"vauban.owner": "node-1"}, nics=(nic,))

    def create(self, vm_id: str, memory_mib: int = 512) -> DiskSpec:
        """Root disk and VM, as the reconciler makes them; the root disk."""
        root = self.storage.create_root_disk(vm_id, IMAGE, 2)
        self.hv.define(self.spec(vm_id, root, memory_mib))
        return root

    def vm(self, vm_id: str) -> str:
        (found,) = [o.hypervisor_uuid for o in self.hv.list_vms() if o.id == vm_id]
        assert found is not None
        return found

    def tasks_left(self) -> set[str]:
        return self.sim.store.live("task")


@pytest.fixture
def pool(sim_pool: SimProcess, tmp_path: Path) -> Iterator[Pool]:
    """Drivers on a simulated pool holding one image VDI; an event loop feeds their cache."""
    image = sim_pool.store.add("VDI", {"name_label": "vauban-image", "SR": sim_pool.sr,
                               "virtual_size": GiB, "other_config": {
                                   "vauban.image": IMAGE, "vauban.complete": "true"}})
    cache = PoolCache()
    loop = EventLoop(_client(sim_pool), cache)
    loop.start()
    client = _client(sim_pool)
    try:
        assert cache.wait_for(lambda c: c.valid, WAIT), cache.problem
        ops = PoolOps(client, cache)
        seed = tmp_path / "seed.iso"
        seed.write_bytes(b"seed" * 1024)
        storage = XapiStorage(ops, lambda: _client(sim_pool), tmp_path / "scratch")
        yield Pool(sim_pool, cache, XapiHypervisor(ops, storage.import_file), storage, seed,
                   image)
    finally:
        loop.stop()
        client.close()


def test_define_start_stop_undefine(pool: Pool) -> None:
    sim, store = pool.sim, pool.sim.store
    assert pool.storage.info().copy_on_write and pool.storage.info().remote
    root = pool.create("vm-1")
    assert isinstance(root.source, VdiSource) and root.target == "vda"
    root_vdi = root.source.vdi_uuid
    assert store.field("VDI", root_vdi, "virtual_size") == 2 * GiB
    assert store.field("VDI", root_vdi, "other_config") == {
        "vauban.instance": "vm-1", "vauban.disk": "root", "vauban.from-image": IMAGE}
    assert store.field("VDI", root_vdi, "sm_config")["vhd-parent"]  # a clone of the image
    assert pool.storage.root_disk_is_clone("vm-1") and pool.storage.vm_disk_exists("vm-1")
    (obs,) = pool.hv.list_vms()
    assert (obs.id, obs.name, obs.running, obs.labels) == (
        "vm-1", "vauban-vm-1", False, {"vauban.owner": "node-1"})
    vm = pool.vm("vm-1")
    calls = store.calls
    assert calls["Async.VM.clone"] == calls["Async.VM.provision"] == 1
    assert calls["Async.VDI.clone"] == calls["Async.VDI.resize"] == 1
    assert store.field("VM", vm, "is_a_template") is False
    assert store.field("VM", vm, "memory_static_max") == 512 * 1024**2
    assert store.field("VM", vm, "VCPUs_at_startup") == 2
    disks = pool.hv.list_disks("vm-1")
    assert [(d.target, d.readonly) for d in disks] == [("vda", False), ("vdb", True)]
    assert disks[0].source == root.source
    (vif,) = store.live("VIF")
    assert store.field("VIF", vif, "network") == sim.network
    assert store.field("VIF", vif, "MAC") == "52:54:00:12:34:56"

    pool.hv.start("vm-1")
    assert [o.running for o in pool.hv.list_vms()] == [True]
    assert store.field("VM", vm, "resident_on") in {m.host_uuid for m in sim.members}
    pool.hv.stop("vm-1", grace_seconds=600)
    assert [o.running for o in pool.hv.list_vms()] == [False]
    assert "Async.VM.hard_shutdown" not in store.calls

    assert len(store.live("VDI")) == 3  # image, root, seed
    pool.hv.undefine("vm-1")
    assert pool.hv.list_vms() == [] and store.live("VBD") == set() == store.live("VIF")
    # the seed is gone; the root disk is kept until the VM is listed as deleted (as on KVM)
    assert store.live("VDI") == {pool.image, root_vdi}
    pool.storage.delete_vm_disks("vm-1")
    assert store.live("VDI") == {pool.image}
    assert pool.tasks_left() == set()
    assert store.calls["task.destroy"] == store.calls["task.create"] + sum(
        n for m, n in store.calls.items() if m.startswith("Async."))


def test_secure_boot_is_added_to_the_templates_platform_flags(pool: Pool) -> None:
    store = pool.sim.store
    root = pool.storage.create_root_disk("vm-sb", IMAGE, 2)
    pool.hv.define(replace(pool.spec("vm-sb", root), firmware="uefi", secure_boot=True))
    vm = pool.vm("vm-sb")
    template = next(uuid for uuid in store.live("VM")
                    if store.field("VM", uuid, "is_a_template"))
    assert store.field("VM", vm, "platform") == {
        **store.field("VM", template, "platform"), "secureboot": "true"}
    assert store.field("VM", vm, "HVM_boot_params") == {"order": "c", "firmware": "uefi"}
    pool.hv.undefine("vm-sb")
    pool.storage.delete_vm_disks("vm-sb")


def test_vms_are_cloned_from_the_template_the_pool_was_enrolled_with(pool: Pool) -> None:
    store = pool.sim.store
    flags = {"device-model": "qemu-upstream-compat", "viridian": "false", "nx": "true"}
    store.add("VM", {"name_label": "Debian Bookworm 12", "is_a_template": True,
                     "platform": flags})
    hv = load_hypervisor("xapi", ops=pool.hv.ops, import_file=pool.storage.import_file,
                         template="Debian Bookworm 12")
    root = pool.storage.create_root_disk("vm-deb", IMAGE, 2)
    hv.define(pool.spec("vm-deb", root))
    assert store.field("VM", pool.vm("vm-deb"), "platform") == flags
    missing = load_hypervisor("xapi", ops=pool.hv.ops, import_file=pool.storage.import_file,
                              template="Windows 95")
    with pytest.raises(HypervisorError, match="no VM template 'Windows 95'"):
        missing.define(pool.spec("vm-win", root))
    hv.undefine("vm-deb")
    pool.storage.delete_vm_disks("vm-deb")


def test_a_guest_ignoring_clean_shutdown_is_forced_off_after_the_grace(pool: Pool) -> None:
    pool.create("vm-1")
    pool.hv.start("vm-1")
    pool.sim.guest_ignores_shutdown()
    pool.hv.stop("vm-1", grace_seconds=0.5)
    assert [o.running for o in pool.hv.list_vms()] == [False]
    calls = pool.sim.store.calls
    assert calls["Async.VM.clean_shutdown"] == 1 and calls["Async.VM.hard_shutdown"] == 1
    assert pool.tasks_left() == set()


def test_undefine_keeps_a_vdi_another_vm_uses(pool: Pool) -> None:
    store = pool.sim.store
    root = pool.create("vm-1")
    assert isinstance(root.source, VdiSource)
    other = store.add("VM", {"name_label": "someone else's"})
    store.add("VBD", {"VM": other, "VDI": root.source.vdi_uuid, "userdevice": "1"})
    assert pool.cache.wait_for(lambda c: c.count("VBD") == 3, WAIT)
    pool.hv.undefine("vm-1")
    assert pool.hv.list_vms() == []
    assert root.source.vdi_uuid in store.live("VDI")
    pool.storage.delete_vm_disks("vm-1")
    assert root.source.vdi_uuid in store.live("VDI")
    assert store.live("VDI") == {pool.image, root.source.vdi_uuid}  # the seed is gone
    assert pool.tasks_left() == set()


def test_a_copy_of_our_vm_made_in_the_pool_is_left_alone(pool: Pool) -> None:
    """Xen Orchestra's clone or replica of a VM of ours keeps its other_config (tags
    included) on the VM and its disks: it is not ours, and deleting ours keeps it."""
    store = pool.sim.store
    root = pool.create("vm-1")
    assert isinstance(root.source, VdiSource)
    vm = pool.vm("vm-1")
    assert store.field("VM", vm, "other_config")["vauban.uuid"] == vm
    copy = store.add("VM", {"name_label": "replica of vauban-vm-1",
                            "other_config": store.field("VM", vm, "other_config")})
    disk = store.add("VDI", {"name_label": "replica of the root", "SR": pool.sim.sr,
                             "virtual_size": 2 * GiB, "other_config": store.field(
                                 "VDI", root.source.vdi_uuid, "other_config")})
    store.add("VBD", {"VM": copy, "VDI": disk, "userdevice": "0"})
    assert pool.cache.wait_for(lambda c: c.get("VBD", next(iter(
        v for v in store.live("VBD") if store.field("VBD", v, "VM") == copy))) is not None,
        WAIT)
    assert [o.hypervisor_uuid for o in pool.hv.list_vms()] == [vm]
    assert pool.storage.existing_root_disk("vm-1") == root
    pool.hv.undefine("vm-1")
    pool.storage.delete_vm_disks("vm-1")
    assert pool.hv.list_vms() == []
    assert store.live("VM") >= {copy} and vm not in store.live("VM")
    assert store.live("VDI") == {pool.image, disk}


def test_a_failing_storage_task_is_reported_and_the_driver_goes_on(pool: Pool) -> None:
    sim = pool.sim
    before = sim.store.live("VDI")
    sim.fail_next("VDI.clone", "SR_BACKEND_FAILURE_44", "",
                  "There is insufficient space", "")
    with pytest.raises(StorageError) as failed:
        pool.storage.create_root_disk("vm-1", IMAGE, 2)
    assert "SM 44" in str(failed.value) and "insufficient space" in str(failed.value)
    assert failed.value.retryable
    assert sim.store.live("VDI") == before and pool.tasks_left() == set()
    pool.create("vm-1")
    assert [o.id for o in pool.hv.list_vms()] == ["vm-1"]


def test_no_host_with_enough_memory_is_a_clear_retryable_error(pool: Pool) -> None:
    pool.create("vm-1", memory_mib=32 * 1024)
    with pytest.raises(HypervisorError) as failed:
        pool.hv.start("vm-1")
    assert "no host has 32768 MiB free" in str(failed.value) and failed.value.retryable
    assert [o.running for o in pool.hv.list_vms()] == [False]
    assert pool.tasks_left() == set()


def test_start_of_a_vm_started_meanwhile_is_no_error(pool: Pool) -> None:
    """xapi answers VM_BAD_POWER_STATE (actual: running) to a start that lost a race."""
    sim = pool.sim
    pool.create("vm-1")
    vm = pool.vm("vm-1")
    sim.hold("VM.start")
    errors: list[BaseException] = []
    starting = threading.Thread(target=_catching(lambda: pool.hv.start("vm-1"), errors))
    starting.start()
    sim.wait_tasks("VM.start")
    other = _client(sim)  # someone else starts it, with a plain call (not held)
    try:
        other.call("VM.start", other.call("VM.get_by_uuid", vm), False, False)
    finally:
        other.close()
    sim.release("VM.start")
    starting.join()
    assert errors == []
    assert [o.running for o in pool.hv.list_vms()] == [True]
    assert pool.tasks_left() == set()


def test_a_toolstack_restart_loses_the_task_and_a_retry_succeeds(pool: Pool) -> None:
    sim = pool.sim
    pool.create("vm-1")
    sim.hold("VM.start")
    errors: list[BaseException] = []
    starting = threading.Thread(target=_catching(lambda: pool.hv.start("vm-1"), errors))
    starting.start()
    sim.wait_tasks("VM.start")
    sim.restart_toolstack()
    starting.join()
    (lost,) = errors
    assert isinstance(lost, HypervisorError) and lost.retryable
    assert "task lost: the pool's toolstack restarted" in str(lost)
    sim.release("VM.start")
    pool.hv.start("vm-1")
    assert [o.running for o in pool.hv.list_vms()] == [True]
    assert pool.tasks_left() == set()


def _catching(fn: Callable[[], None], errors: list[BaseException]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - the test reads it
            errors.append(e)
    return run


def test_an_sr_that_cannot_clone_gets_full_copies(pool: Pool) -> None:
    store = pool.sim.store
    (sm,) = store.live("SM")
    store.modify("SM", sm, capabilities=["VDI_CREATE", "VDI_DELETE"], features={})
    assert pool.cache.wait_for(lambda c: not pool.storage.info().copy_on_write, WAIT)
    root = pool.storage.create_root_disk("vm-1", IMAGE, None)
    assert isinstance(root.source, VdiSource)
    assert store.field("VDI", root.source.vdi_uuid, "virtual_size") == GiB
    assert store.calls["Async.VDI.copy"] == 1 and "Async.VDI.clone" not in store.calls
    assert not pool.storage.root_disk_is_clone("vm-1")
    assert pool.storage.free_bytes() == 5 * 1024**4  # the simulated SR: 8 TiB, 3 used
    pool.storage.delete_vm_disks("vm-1")
    assert store.live("VDI") == {pool.image} and pool.tasks_left() == set()


def test_a_new_disk_or_vm_whose_uuid_cannot_be_read_is_destroyed_again(pool: Pool) -> None:
    store = pool.sim.store
    vms, vdis = store.live("VM"), store.live("VDI")
    pool.sim.fail_next("VDI.get_uuid", "INTERNAL_ERROR", "connection lost")
    with pytest.raises(StorageError, match="connection lost"):
        pool.storage.create_root_disk("vm-1", IMAGE, 2)
    assert store.live("VDI") == vdis  # no clone of the image left looking like the image
    # the reconciler retries later: by then the events have told the cache
    assert pool.cache.wait_for(lambda c: c.count("VDI") == len(vdis), WAIT)
    root = pool.storage.create_root_disk("vm-1", IMAGE, 2)
    pool.sim.fail_next("VM.get_uuid", "INTERNAL_ERROR", "connection lost")
    with pytest.raises(HypervisorError, match="connection lost"):
        pool.hv.define(pool.spec("vm-1", root))
    assert store.live("VM") == vms and pool.tasks_left() == set()
    pool.hv.define(pool.spec("vm-1", root))  # a retry makes the one VM
    assert [o.id for o in pool.hv.list_vms()] == ["vm-1"]
