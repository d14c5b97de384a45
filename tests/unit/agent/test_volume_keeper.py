"""VolumeKeeper against in-memory drivers: a grown volume's VM is told, also on a retry."""

from __future__ import annotations

from pathlib import Path

from agent.drivers.hypervisor.base import DiskSpec, HypervisorError, RbdSource, VmObservation
from agent.drivers.storage.base import StorageInfo, VolumeInfo
from agent.protocol import DesiredState, DesiredVolume, VolumeAttachment
from agent.retry import FailureLedger, RetryPolicy
from agent.volumes import GIB, VolumeKeeper
from tests.unit.agent.test_reconcile import FakeHypervisor, FakeStorage, vm

VM = "7d0c1a5e-4b1e-4f0a-9d55-8a8a3b7c9e01"


class VolumeStorage(FakeStorage):
    """Volumes as RBD images of pool "p", sizes in memory."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.sizes: dict[str, int] = {}

    def info(self) -> StorageInfo:
        return StorageInfo("fake", True, True, volumes=True)

    def list_volumes(self) -> list[VolumeInfo]:
        return [VolumeInfo(v, "p", size, 0, ()) for v, size in self.sizes.items()]

    def resize_volume(self, volume_id: str, size_gib: int) -> None:
        self.sizes[volume_id] = size_gib * GIB

    def volume_disk(self, volume_id: str, target: str) -> DiskSpec:
        return DiskSpec(RbdSource("p", volume_id, (("127.0.0.1", 6789),), "u", "s"), "raw",
                        target)

    def volume_of(self, disk: DiskSpec) -> str | None:
        return disk.source.image if isinstance(disk.source, RbdSource) else None


class DiskHypervisor(FakeHypervisor):
    """Running VMs with disks whose size the guest sees; `resize_disk` fails while told to."""

    def __init__(self) -> None:
        super().__init__()
        self.disks: dict[str, list[DiskSpec]] = {}
        self.guest_sizes: dict[tuple[str, str], int] = {}
        self.refuse_resize = False

    def list_disks(self, vm_id: str) -> list[DiskSpec]:
        return self.disks[vm_id]

    def resize_disk(self, vm_id: str, target: str, size_bytes: int) -> None:
        if self.refuse_resize:
            raise HypervisorError("QEMU did not answer", retryable=True)
        self.guest_sizes[(vm_id, target)] = size_bytes


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_notice_of_growth_is_retried_until_the_guest_has_it(tmp_path: Path) -> None:
    storage, hypervisor, clock = VolumeStorage(tmp_path), DiskHypervisor(), Clock()
    keeper = VolumeKeeper(storage, hypervisor,
                          ledger=FailureLedger(RetryPolicy(), clock=clock, rand=lambda: 0.0))
    storage.sizes["vol-1"] = GIB
    hypervisor.vms[VM] = VmObservation(VM, "vm", True, 1, None)
    hypervisor.disks[VM] = [storage.volume_disk("vol-1", "vdc")]
    hypervisor.guest_sizes[(VM, "vdc")] = GIB
    wanted = vm(VM).model_copy(update={"volumes": [VolumeAttachment(volume_id="vol-1",
                                                                    target="vdc")]})
    state = DesiredState(node_id="n", generation=2, vms=[wanted], volumes=[
        DesiredVolume(id="vol-1", name="data", pool="p", size_gib=2, present=True)])

    def one_pass() -> None:
        for _lock, task in keeper.plan(state, dict(hypervisor.vms)):
            task()

    hypervisor.refuse_resize = True
    one_pass()
    assert storage.sizes["vol-1"] == 2 * GIB  # the image grew; the guest was not told
    assert [f.message for f in keeper.ledger.report()] == ["QEMU did not answer"]

    hypervisor.refuse_resize = False
    clock.now += 10  # past the retry delay
    one_pass()

    assert hypervisor.guest_sizes[(VM, "vdc")] == 2 * GIB
    assert keeper.ledger.report() == []
