"""The reconcile pass on both ends of a live migration, against in-memory drivers."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.drivers.hypervisor.base import DiskSpec, HypervisorError, VmObservation
from agent.drivers.storage.base import StorageError
from agent.protocol import (
    DesiredState,
    DesiredVm,
    IncomingMigration,
    MigrationOrder,
    ObservedVmState,
    PowerState,
)
from agent.reconcile import OWNER_LABEL, Reconciler
from tests.unit.agent.test_reconcile import FakeHypervisor, FakeStorage, _image_source, vm

VM_ID = "aaaa-1"


class MovingHypervisor(FakeHypervisor):
    """Migrates by handing the VM to `target` (another fake), or fails as told."""

    def __init__(self) -> None:
        super().__init__()
        self.target: FakeHypervisor | None = None
        self.migrations: list[tuple[str, int, dict[str, str]]] = []
        self.downtime: int | None = None
        self.hold: threading.Event | None = None  # set: a migration waits until aborted
        self.started = threading.Event()
        self.aborted = threading.Event()
        self.aborts = 0

    def migrate(self, vm_id: str, order: MigrationOrder, labels: dict[str, str],
                on_progress: Callable[[int], None]) -> None:
        self.migrations.append((vm_id, order.seq, dict(labels)))
        on_progress(40)
        self.started.set()
        if self.hold is not None:
            self.hold.wait(10)
            if self.aborted.is_set():
                raise HypervisorError("migration job: canceled by client")
        if "migrate" in self.fail_on or self.target is None:
            raise HypervisorError("migration to 10.0.0.2 failed: connection refused")
        moved = self.vms.pop(vm_id)
        # moved cold: started paused here, left paused (running) there
        self.target.vms[vm_id] = dataclasses.replace(
            moved, labels={**moved.labels, **labels}, persistent=True,
            running=moved.running or order.cold)

    def migration_downtime_ms(self, vm_id: str) -> int | None:
        return self.downtime

    def abort_migration(self, vm_id: str) -> None:
        self.aborts += 1
        self.aborted.set()
        if self.hold is not None:
            self.hold.set()


def reconciler(tmp_path: Path, name: str, hv: FakeHypervisor) -> Reconciler:
    return Reconciler(hv, FakeStorage(tmp_path / "disks"), _image_source,
                      tmp_path / name / "instances", owner=name, stop_grace_s=1)


def disks(rec: Reconciler) -> set[str]:
    """The VM disks in the reconciler's (fake, shared) storage."""
    assert isinstance(rec.storage, FakeStorage)
    return rec.storage.disks


def order(seq: int = 1, cold: bool = False) -> MigrationOrder:
    return MigrationOrder(seq=seq, target_node_id="node-2", target_address="10.0.0.2",
                          bandwidth_mib_s=0, max_downtime_ms=300, timeout_s=600, cold=cold)


def leaving(seq: int = 1, cold: bool = False) -> DesiredVm:
    power = PowerState.STOPPED if cold else PowerState.RUNNING
    return vm(VM_ID, power=power).model_copy(update={"migrate_to": order(seq, cold)})


def arriving(seq: int = 1, cold: bool = False) -> DesiredVm:
    power = PowerState.STOPPED if cold else PowerState.RUNNING
    return vm(VM_ID, power=power).model_copy(update={
        "incoming_from": IncomingMigration(seq=seq, source_node_id="node-1", cold=cold)})


def state(generation: int, *vms: DesiredVm) -> DesiredState:
    return DesiredState(node_id="n", generation=generation, vms=list(vms))


@pytest.fixture
def source(tmp_path: Path) -> tuple[Reconciler, MovingHypervisor]:
    hv = MovingHypervisor()
    rec = reconciler(tmp_path, "node-1", hv)
    rec.apply(state(1, vm(VM_ID)))
    assert rec.wait_idle(10) and hv.vms[VM_ID].running
    hv.calls.clear()
    return rec, hv


def test_the_target_prepares_an_arriving_vm_but_never_makes_or_starts_it(
        tmp_path: Path) -> None:
    hv = FakeHypervisor()
    rec = reconciler(tmp_path, "node-2", hv)
    rec.apply(state(1, arriving()))
    assert rec.wait_idle(10)
    assert hv.calls == [] and hv.vms == {}
    assert (rec.vm_dir(VM_ID) / "seed.iso").is_file()
    assert rec.awaiting_arrival() and rec.arrivals() == frozenset()
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.INCOMING
    assert obs.migration is not None and obs.migration.state == "ready"
    # the domain arrives (transient while the memory copy runs): still only incoming
    hv.vms[VM_ID] = VmObservation(VM_ID, "vauban-vm", True, 1, None,
                                  {OWNER_LABEL: "node-2"}, persistent=False)
    rec.apply(state(2, arriving()))
    assert rec.wait_idle(10)
    assert hv.calls == [] and rec.observe()[0].state is ObservedVmState.INCOMING
    assert rec.arrivals() == frozenset()  # not yet: its memory is still being copied
    # defined here once it runs here: running, the migration completed
    hv.vms[VM_ID] = dataclasses.replace(hv.vms[VM_ID], persistent=True)
    assert rec.arrivals() == {VM_ID}  # to be reported at once
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.RUNNING
    assert obs.migration is not None and obs.migration.state == "completed"
    # the controller hands it over: adopted as it runs, nothing done to it
    rec.apply(state(3, vm(VM_ID)))
    assert rec.wait_idle(10)
    assert hv.calls == [] and rec.observe()[0].migration is None
    assert not rec.awaiting_arrival()


def test_a_cancelled_arrival_removes_the_preparation_and_keeps_the_disks(
        tmp_path: Path) -> None:
    hv = FakeHypervisor()
    rec = reconciler(tmp_path, "node-2", hv)
    disks(rec).add(VM_ID)  # the shared RBD disk
    rec.apply(state(1, arriving()))
    assert rec.wait_idle(10) and rec.vm_dir(VM_ID).is_dir()
    rec.apply(state(2))
    assert rec.wait_idle(10)
    assert not rec.vm_dir(VM_ID).exists()
    assert disks(rec) == {VM_ID}


def test_the_source_moves_the_vm_once_and_never_makes_it_again(
        source: tuple[Reconciler, MovingHypervisor]) -> None:
    rec, hv = source
    target = FakeHypervisor()
    hv.target = target
    rec.apply(state(2, leaving()))
    assert rec.wait_idle(10)
    assert hv.migrations == [(VM_ID, 1, {OWNER_LABEL: "node-2"})]
    assert VM_ID in target.vms and target.vms[VM_ID].labels[OWNER_LABEL] == "node-2"
    # until the controller hands it over, the order stands: nothing is made again here
    rec.apply(state(3, leaving()))
    assert rec.wait_idle(10)
    assert hv.calls == [] and hv.vms == {} and len(hv.migrations) == 1
    assert rec.observe() == []
    # handed over: its directory goes here, its shared disk stays
    rec.apply(state(4))
    assert rec.wait_idle(10)
    assert not rec.vm_dir(VM_ID).exists() and disks(rec) == {VM_ID}


def test_a_failed_migration_keeps_the_vm_running_here_and_is_not_retried(
        source: tuple[Reconciler, MovingHypervisor]) -> None:
    rec, hv = source
    hv.fail_on = {"migrate"}
    rec.apply(state(2, leaving()))
    assert rec.wait_idle(10)
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.RUNNING and obs.error is None
    assert obs.migration is not None and obs.migration.state == "failed"
    assert "connection refused" in (obs.migration.error or "")
    rec.apply(state(3, leaving()))
    assert rec.wait_idle(10)
    assert len(hv.migrations) == 1 and hv.vms[VM_ID].running
    # a new migration (seq 2) is tried afresh
    hv.fail_on, hv.target = set(), FakeHypervisor()
    rec.apply(state(4, leaving(seq=2)))
    assert rec.wait_idle(10)
    assert [m[1] for m in hv.migrations] == [1, 2] and hv.vms == {}


def test_a_stopped_vm_is_not_moved_live(tmp_path: Path) -> None:
    hv = MovingHypervisor()
    rec = reconciler(tmp_path, "node-1", hv)
    rec.apply(state(1, vm(VM_ID, power=PowerState.STOPPED)))
    assert rec.wait_idle(10)
    rec.apply(state(2, leaving()))
    assert rec.wait_idle(10)
    assert hv.migrations == [] and VM_ID in hv.vms


def stopped_source(tmp_path: Path) -> tuple[Reconciler, MovingHypervisor]:
    hv = MovingHypervisor()
    rec = reconciler(tmp_path, "node-1", hv)
    rec.apply(state(1, vm(VM_ID, power=PowerState.STOPPED)))
    assert rec.wait_idle(10) and not hv.vms[VM_ID].running
    hv.calls.clear()
    return rec, hv


def test_a_stopped_vm_moves_cold_once_and_arrives_stopped(tmp_path: Path) -> None:
    rec, hv = stopped_source(tmp_path)
    target_hv = FakeHypervisor()
    hv.target = target_hv
    target = reconciler(tmp_path, "node-2", target_hv)
    target.apply(state(1, arriving(cold=True)))
    assert target.wait_idle(10) and target.observe()[0].migration is not None
    rec.apply(state(2, leaving(cold=True)))
    assert rec.wait_idle(10)
    assert hv.migrations == [(VM_ID, 1, {OWNER_LABEL: "node-2"})] and hv.vms == {}
    # arrived paused: reported at once, but not as arrived until it is off
    assert target.arrivals() == {VM_ID}
    [obs] = target.observe()
    assert obs.state is ObservedVmState.INCOMING
    assert obs.migration is not None and obs.migration.state == "ready"
    target.apply(state(2, arriving(cold=True)))  # the pass the arrival asks for
    assert target.wait_idle(10)
    assert target_hv.calls == [f"force-off:{VM_ID[:4]}"] and not target_hv.vms[VM_ID].running
    [obs] = target.observe()
    assert obs.state is ObservedVmState.STOPPED
    assert obs.migration is not None and obs.migration.state == "completed"
    # the order stands until the controller hands it over: not moved again
    rec.apply(state(3, leaving(cold=True)))
    assert rec.wait_idle(10) and len(hv.migrations) == 1


def test_a_cold_arrival_found_running_after_a_restart_is_turned_off(tmp_path: Path) -> None:
    hv = FakeHypervisor()
    hv.vms[VM_ID] = VmObservation(VM_ID, "vauban-vm", True, 1, None,
                                  {OWNER_LABEL: "node-2"}, persistent=True)
    rec = reconciler(tmp_path, "node-2", hv)  # a new agent: nothing prepared in memory
    rec.apply(state(1, arriving(cold=True)))
    assert rec.wait_idle(10)
    assert hv.calls == [f"force-off:{VM_ID[:4]}"] and not hv.vms[VM_ID].running


def test_a_failed_cold_move_leaves_the_vm_stopped_here(tmp_path: Path) -> None:
    rec, hv = stopped_source(tmp_path)
    hv.fail_on = {"migrate"}
    rec.apply(state(2, leaving(cold=True)))
    assert rec.wait_idle(10)
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.STOPPED
    assert obs.migration is not None and obs.migration.state == "failed"
    assert not hv.vms[VM_ID].running and len(hv.migrations) == 1


def test_a_fenced_node_does_not_start_a_vm_paused_to_move_it(tmp_path: Path) -> None:
    hv = MovingHypervisor()
    hv.target = FakeHypervisor()
    refusal: list[str] = []
    rec = Reconciler(hv, FakeStorage(tmp_path / "disks"), _image_source,
                     tmp_path / "node-1" / "instances", owner="node-1", stop_grace_s=1,
                     start_refusal=lambda: refusal[0] if refusal else None)
    rec.apply(state(1, vm(VM_ID, power=PowerState.STOPPED)))
    assert rec.wait_idle(10)
    refusal.append("this node fenced itself")
    rec.apply(state(2, leaving(cold=True)))
    assert rec.wait_idle(10)
    assert hv.migrations == [] and VM_ID in hv.vms
    [obs] = rec.observe()
    assert obs.migration is not None and obs.migration.state == "failed"
    assert "this node fenced itself" in (obs.migration.error or "")


def test_a_migration_called_off_is_aborted_once_and_the_vm_stays(
        source: tuple[Reconciler, MovingHypervisor]) -> None:
    rec, hv = source
    hv.target, hv.hold = FakeHypervisor(), threading.Event()
    rec.apply(state(2, leaving()))
    assert hv.started.wait(10)
    rec.apply(state(3, vm(VM_ID)))  # the controller called it off: no order any more
    rec.apply(state(4, vm(VM_ID)))  # a pass meanwhile aborts nothing more
    assert rec.wait_idle(10)
    assert hv.aborts == 1 and VM_ID in hv.vms and hv.vms[VM_ID].running
    [obs] = rec.observe()
    assert obs.migration is None  # the failure of an order no longer standing is not told


def test_a_vm_that_moved_away_is_never_aborted(
        source: tuple[Reconciler, MovingHypervisor]) -> None:
    """No longer wanted here: it runs on the target (its report came first); aborting
    could only fail, or worse."""
    rec, hv = source
    hv.target, hv.hold = FakeHypervisor(), threading.Event()
    rec.apply(state(2, leaving()))
    assert hv.started.wait(10)
    rec.apply(state(3))
    hv.hold.set()
    assert rec.wait_idle(10)
    assert hv.aborts == 0 and VM_ID in hv.target.vms


class SharedStorage(FakeStorage):
    """Fake storage whose disks every node sees (as RBD's)."""

    def existing_root_disk(self, vm_id: str) -> DiskSpec:
        if vm_id not in self.disks:
            raise StorageError(f"the root disk of VM {vm_id} does not exist")
        return DiskSpec(self.root / vm_id, "raw", "vda")


def test_a_vm_taken_over_is_defined_on_its_existing_disk_which_a_failure_never_deletes(
        tmp_path: Path) -> None:
    hv, st = FakeHypervisor(), SharedStorage(tmp_path / "disks")
    rec = Reconciler(hv, st, _image_source, tmp_path / "instances", owner="node-2",
                     stop_grace_s=1)
    st.disks.add(VM_ID)
    adopted = vm(VM_ID).model_copy(update={"adopt_disk": True})
    hv.fail_on = {"start"}
    rec.apply(state(1, adopted))
    assert rec.wait_idle(10)
    assert hv.vms == {} and st.disks == {VM_ID} and st.images == {}
    hv.fail_on = set()
    rec.apply(state(2, adopted.model_copy(update={"power_seq": 2})))
    assert rec.wait_idle(10)
    assert hv.vms[VM_ID].running and hv.specs[VM_ID].disks[0].path == st.root / VM_ID
    assert st.images == {}  # nothing imported: the disk was there


def test_a_vm_to_take_over_whose_disk_is_gone_fails_in_words(tmp_path: Path) -> None:
    hv, st = FakeHypervisor(), SharedStorage(tmp_path / "disks")
    rec = Reconciler(hv, st, _image_source, tmp_path / "instances", owner="node-2",
                     stop_grace_s=1)
    rec.apply(state(1, vm(VM_ID).model_copy(update={"adopt_disk": True})))
    assert rec.wait_idle(10)
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.ERROR and "does not exist" in (obs.error or "")
