"""Both ends of a live migration that copies the root disk (local storage), against in-memory
drivers: each node has its own fake storage, as localfs nodes do."""

from __future__ import annotations

from pathlib import Path

from agent.drivers.hypervisor.base import DiskSpec, VmObservation
from agent.protocol import DesiredVm, IncomingMigration, ObservedVmState
from agent.reconcile import OWNER_LABEL, Reconciler
from tests.unit.agent.test_reconcile import FakeHypervisor, FakeStorage, _image_source, vm
from tests.unit.agent.test_reconcile_migration import (
    VM_ID,
    MovingHypervisor,
    order,
    state,
)


class LocalStorage(FakeStorage):
    """One node's own disks, with the disks made and deleted in order."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.made: list[str] = []
        self.deleted: list[str] = []

    def create_root_disk(self, vm_id: str, image_id: str, size_gib: int | None) -> DiskSpec:
        self.made.append(vm_id)
        return super().create_root_disk(vm_id, image_id, size_gib)

    def delete_vm_disks(self, vm_id: str) -> None:
        self.deleted.append(vm_id)
        super().delete_vm_disks(vm_id)


def node(tmp_path: Path, name: str, hv: FakeHypervisor) -> tuple[Reconciler, LocalStorage]:
    st = LocalStorage(tmp_path / name / "disks")
    return Reconciler(hv, st, _image_source, tmp_path / name / "instances", owner=name,
                      stop_grace_s=1), st


def arriving(seq: int = 1) -> DesiredVm:
    return vm(VM_ID).model_copy(update={"incoming_from": IncomingMigration(
        seq=seq, source_node_id="node-1", copy_disks=True)})


def settle(rec: Reconciler, generation: int, *vms: DesiredVm) -> None:
    rec.apply(state(generation, *vms))
    assert rec.wait_idle(10)


def ready(rec: Reconciler) -> bool:
    [obs] = rec.observe()
    return obs.migration is not None and obs.migration.state == "ready"


def test_the_target_fetches_the_image_and_makes_the_root_disk_before_it_is_ready(
        tmp_path: Path) -> None:
    hv = FakeHypervisor()
    rec, st = node(tmp_path, "node-2", hv)
    settle(rec, 1, arriving())
    assert st.images.keys() == {"img"} and st.made == [VM_ID] and st.disks == {VM_ID}
    assert hv.calls == [] and hv.vms == {}  # neither defined nor started here
    assert ready(rec) and (rec.vm_dir(VM_ID) / "seed.iso").is_file()


def test_a_move_called_off_deletes_exactly_the_disk_made_for_it(tmp_path: Path) -> None:
    hv = FakeHypervisor()
    rec, st = node(tmp_path, "node-2", hv)
    st.disks.add("other-vm")  # another VM's disk of this node
    settle(rec, 1, arriving())
    settle(rec, 2)  # the move failed: the controller lets go of it here
    assert st.deleted == [VM_ID] and st.disks == {"other-vm"}
    assert not rec.vm_dir(VM_ID).exists()


def test_a_removal_while_the_domain_is_here_keeps_the_disk(tmp_path: Path) -> None:
    hv = FakeHypervisor()
    rec, st = node(tmp_path, "node-2", hv)
    settle(rec, 1, arriving())
    # mid-copy the domain is here, transient: the disk is being written
    hv.vms[VM_ID] = VmObservation(VM_ID, "vauban-vm", True, 1, None,
                                  {OWNER_LABEL: "node-2"}, persistent=False)
    settle(rec, 2)
    assert st.deleted == [] and st.disks == {VM_ID}


def test_a_vm_that_arrived_keeps_its_disk_for_good(tmp_path: Path) -> None:
    hv = FakeHypervisor()
    rec, st = node(tmp_path, "node-2", hv)
    settle(rec, 1, arriving())
    # it arrived, defined here: handed over, its disk is its own
    hv.vms[VM_ID] = VmObservation(VM_ID, "vauban-vm", True, 1, None,
                                  {OWNER_LABEL: "node-2"}, persistent=True)
    settle(rec, 2, vm(VM_ID))
    assert rec.observe()[0].state is ObservedVmState.RUNNING and hv.calls == []
    # even once its domain is gone (lost, not deleted), its disk stays: it ran here
    del hv.vms[VM_ID]
    settle(rec, 3)
    assert st.deleted == [] and st.disks == {VM_ID}


def test_a_disk_made_for_an_earlier_move_is_made_afresh_one_of_this_move_kept(
        tmp_path: Path) -> None:
    hv = FakeHypervisor()
    rec, st = node(tmp_path, "node-2", hv)
    settle(rec, 1, arriving(seq=1))
    # the agent restarts (forgets it prepared) while this move stands: the source may be
    # copying into the disk already, which stays
    again, _ = node(tmp_path, "node-2", hv)
    again.storage = st
    settle(again, 2, arriving(seq=1))
    assert st.made == [VM_ID] and st.deleted == [] and ready(again)
    # a later move (not let go of in between): the old disk may be half-written
    settle(again, 3, arriving(seq=2))
    assert st.made == [VM_ID, VM_ID] and st.deleted == [VM_ID] and st.disks == {VM_ID}


def test_a_disk_here_that_no_move_made_is_never_overwritten_nor_deleted(
        tmp_path: Path) -> None:
    hv = FakeHypervisor()
    rec, st = node(tmp_path, "node-2", hv)
    st.disks.add(VM_ID)
    settle(rec, 1, arriving())
    [obs] = rec.observe()
    assert obs.migration is None and "already has a root disk" in (obs.error or "")
    assert st.made == [] and st.disks == {VM_ID}
    settle(rec, 2)
    assert st.deleted == [] and st.disks == {VM_ID}


def test_the_source_copies_the_disk_and_drops_its_stale_copy_once_handed_over(
        tmp_path: Path) -> None:
    hv = MovingHypervisor()
    rec, st = node(tmp_path, "node-1", hv)
    settle(rec, 1, vm(VM_ID))
    hv.target = FakeHypervisor()
    settle(rec, 2, vm(VM_ID).model_copy(update={
        "migrate_to": order().model_copy(update={"copy_disks": True})}))
    assert VM_ID in hv.target.vms and st.deleted == []
    settle(rec, 3)
    assert st.deleted == [VM_ID] and st.disks == set()


def test_a_failed_copy_keeps_the_vm_and_its_disk_on_the_source(tmp_path: Path) -> None:
    hv = MovingHypervisor()
    rec, st = node(tmp_path, "node-1", hv)
    settle(rec, 1, vm(VM_ID))
    hv.fail_on = {"migrate"}
    settle(rec, 2, vm(VM_ID).model_copy(update={
        "migrate_to": order().model_copy(update={"copy_disks": True})}))
    settle(rec, 3, vm(VM_ID))
    assert hv.vms[VM_ID].running and st.disks == {VM_ID} and st.deleted == []


def test_a_vm_coming_back_gets_a_fresh_disk_not_the_stale_one_it_left(tmp_path: Path) -> None:
    hv = MovingHypervisor()
    rec, st = node(tmp_path, "node-1", hv)
    settle(rec, 1, vm(VM_ID))
    hv.target = FakeHypervisor()
    settle(rec, 2, vm(VM_ID).model_copy(update={
        "migrate_to": order().model_copy(update={"copy_disks": True})}))
    # moved back before this node let go of it: the copy it left is out of date
    settle(rec, 3, arriving(seq=2))
    assert st.made == [VM_ID, VM_ID] and st.deleted == [VM_ID] and ready(rec)
    settle(rec, 4)  # that move is called off: the fresh disk goes too
    assert st.deleted == [VM_ID, VM_ID] and st.disks == set()
