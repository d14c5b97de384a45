"""What a pass reports: its generation applied only once all of it ended well, and only
the failures that still stand (those of objects no longer wanted leave)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from agent.drivers.hypervisor.base import HypervisorDriver, VmObservation
from agent.drivers.storage.base import StorageDriver, StorageError
from agent.protocol import DesiredState
from agent.reconcile import Reconciler
from tests.unit.agent.test_reconcile import (
    IMAGE,
    MINE,
    Clock,
    FakeHypervisor,
    FakeStorage,
    _image_source,
    _ledger,
    vm,
)
from tests.unit.agent.test_volume_keeper import DATA, FlakyVolumeStorage, PlugHypervisor


class FlakySource:
    """An image source that fails retryably while `down`."""

    def __init__(self) -> None:
        self.down = True

    def __call__(self, image_id: str) -> Iterator[bytes]:
        if self.down:
            raise StorageError("image service unreachable", retryable=True)
        yield IMAGE


def reconciler(tmp_path: Path, clock: Clock, hv: HypervisorDriver | None = None,
               st: StorageDriver | None = None,
               source: Callable[[str], Iterator[bytes]] = _image_source) -> Reconciler:
    """A reconciler on the fakes; its ledger retries after 30 s of `clock`."""
    return Reconciler(hv or FakeHypervisor(), st or FakeStorage(tmp_path / "disks"), source,
                      tmp_path / "instances", owner="node-1", stop_grace_s=1,
                      ledger=_ledger(clock))


def test_a_generation_is_applied_only_once_its_vm_tasks_ended_well(tmp_path: Path) -> None:
    """Regression: a VM task that failed (its failure recorded, not raised) still let its
    generation be marked applied."""
    hv, source, clock = FakeHypervisor(), FlakySource(), Clock()
    rec = reconciler(tmp_path, clock, hv, source=source)
    desired = DesiredState(node_id="n", generation=5, vms=[vm("aaaa-1")])
    rec.apply(desired)
    assert rec.wait_idle(10) and hv.vms == {}
    assert rec.applied_generation == -1
    rec.apply(desired)  # before its retry delay: waiting is not done either
    assert rec.wait_idle(10) and rec.applied_generation == -1
    source.down = False
    clock.now += 30
    rec.apply(desired)  # the retry of the same generation succeeds: now it is applied
    assert rec.wait_idle(10) and hv.vms["aaaa-1"].running
    assert rec.applied_generation == 5


def test_a_vm_given_up_on_keeps_its_generation_unapplied(tmp_path: Path) -> None:
    hv = FakeHypervisor()
    rec = reconciler(tmp_path, Clock(), hv)
    hv.fail_on = {"define"}  # not retryable: final at once
    desired = DesiredState(node_id="n", generation=2, vms=[vm("aaaa-1")])
    for _ in range(2):
        rec.apply(desired)
        assert rec.wait_idle(10)
    assert rec.applied_generation == -1
    hv.fail_on = set()
    rec.apply(DesiredState(node_id="n", generation=3, vms=[vm("aaaa-1", seq=2)]))
    assert rec.wait_idle(10) and rec.applied_generation == 3


class CloneStorage(FakeStorage):
    """Root disks cloned from their image; flattening fails while `broken`."""

    broken = True

    def root_disk_is_clone(self, vm_id: str) -> bool:
        return True

    def flatten_root_disk(self, vm_id: str) -> None:
        if self.broken:
            raise StorageError("rbd: flatten failed", retryable=True)


def test_a_failed_flatten_keeps_its_generation_unapplied(tmp_path: Path) -> None:
    hv, st, clock = FakeHypervisor(), CloneStorage(tmp_path / "disks"), Clock()
    rec = reconciler(tmp_path, clock, hv, st)
    hv.vms["aaaa-1"] = VmObservation("aaaa-1", "vauban-x", True, 1, None, MINE)
    desired = DesiredState(node_id="n", generation=4,
                           vms=[vm("aaaa-1").model_copy(update={"flatten_root": True})])
    for _ in range(2):  # failed, then waiting for its retry
        rec.apply(desired)
        assert rec.wait_idle(10) and rec.applied_generation == -1
    st.broken = False
    clock.now += 30
    rec.apply(desired)
    assert rec.wait_idle(10) and rec.applied_generation == 4


def test_a_failed_image_delete_keeps_its_generation_unapplied(tmp_path: Path) -> None:
    class FailingDelete(FakeStorage):
        broken = True

        def delete_image(self, image_id: str) -> None:
            if self.broken:
                raise StorageError("rbd: I/O error", retryable=True)
            super().delete_image(image_id)

    st, clock = FailingDelete(tmp_path / "disks"), Clock()
    rec = reconciler(tmp_path, clock, st=st)
    st.images = {"old": b"x"}
    desired = DesiredState(node_id="n", generation=6, vms=[], retired_images=["old"])
    for _ in range(2):  # failed, then waiting for its retry
        rec.apply(desired)
        assert rec.wait_idle(10) and rec.applied_generation == -1
    st.broken = False
    clock.now += 30
    rec.apply(desired)
    assert rec.wait_idle(10) and st.images == {} and rec.applied_generation == 6


def test_a_failed_volume_action_keeps_its_generation_unapplied(tmp_path: Path) -> None:
    st, clock = FlakyVolumeStorage(tmp_path / "disks"), Clock()
    rec = reconciler(tmp_path, clock, PlugHypervisor(), st)
    st.away = True
    desired = DesiredState(node_id="n", generation=8, vms=[], volumes=[DATA])
    for _ in range(2):  # failed, then waiting for its retry
        rec.apply(desired)
        assert rec.wait_idle(10) and rec.applied_generation == -1
    st.away = False
    clock.now += 30
    rec.apply(desired)
    assert rec.wait_idle(10) and "vol-1" in st.sizes and rec.applied_generation == 8
