"""VolumeKeeper against in-memory drivers: a grown volume's VM is told, also on a retry."""

from __future__ import annotations

from pathlib import Path

from agent.drivers.hypervisor.base import DiskSpec, HypervisorError, RbdSource, VmObservation
from agent.drivers.storage.base import StorageError, StorageInfo, VolumeInfo
from agent.protocol import DesiredState, DesiredVolume, VolumeAttachment
from agent.retry import FailureLedger, RetryPolicy
from agent.volumes import GIB, VolumeKeeper, volume_request
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
        work, _waiting = keeper.plan(state, dict(hypervisor.vms))
        for _lock, task in work:
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


class FlakyVolumeStorage(VolumeStorage):
    """Creates volumes, except while Ceph is `away` (a retryable failure)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.away = False
        self.creates = 0

    def create_volume(self, volume_id: str, size_gib: int,
                      pool: str | None = None) -> VolumeInfo:
        self.creates += 1
        if self.away:
            raise StorageError("Ceph cluster unreachable", retryable=True)
        self.sizes[volume_id] = size_gib * GIB
        return VolumeInfo(volume_id, "p", size_gib * GIB, 0, ())


class PlugHypervisor(DiskHypervisor):
    """`attach_disk` fails while `refuse_attach` is set."""

    refuse_attach = False

    def attach_disk(self, vm_id: str, disk: DiskSpec) -> None:
        if self.refuse_attach:
            raise HypervisorError("QEMU did not answer", retryable=True)
        self.disks[vm_id].append(disk)


DATA = DesiredVolume(id="vol-1", name="data", pool="p", size_gib=2, present=True)


def _keeper(tmp_path: Path) -> tuple[VolumeKeeper, FlakyVolumeStorage, PlugHypervisor, Clock]:
    storage, hypervisor, clock = FlakyVolumeStorage(tmp_path), PlugHypervisor(), Clock()
    keeper = VolumeKeeper(storage, hypervisor,
                          ledger=FailureLedger(RetryPolicy(), clock=clock, rand=lambda: 0.0))
    return keeper, storage, hypervisor, clock


def _pass(keeper: VolumeKeeper, state: DesiredState) -> None:
    hypervisor = keeper.hypervisor
    assert isinstance(hypervisor, DiskHypervisor)
    work, _waiting = keeper.plan(state, dict(hypervisor.vms))
    for _lock, task in work:
        task()


def test_a_failure_of_a_volume_no_longer_on_this_node_is_forgotten(tmp_path: Path) -> None:
    keeper, storage, _hv, _clock = _keeper(tmp_path)
    storage.away = True
    _pass(keeper, DesiredState(node_id="n", generation=2, vms=[], volumes=[DATA]))
    assert [(f.object_id, f.action) for f in keeper.ledger.report()] == [("vol-1", "converge")]
    # deleted, or now looked after by another node: nothing of it is this node's failure
    _pass(keeper, DesiredState(node_id="n", generation=3, vms=[], volumes=[]))
    assert keeper.ledger.report() == []


def test_a_failed_notice_of_growth_is_forgotten_once_the_vm_stopped(tmp_path: Path) -> None:
    keeper, storage, hypervisor, clock = _keeper(tmp_path)
    storage.sizes["vol-1"] = GIB
    hypervisor.vms[VM] = VmObservation(VM, "vm", True, 1, None)
    hypervisor.disks[VM] = [storage.volume_disk("vol-1", "vdc")]
    wanted = vm(VM).model_copy(update={"volumes": [VolumeAttachment(volume_id="vol-1",
                                                                    target="vdc")]})
    state = DesiredState(node_id="n", generation=2, vms=[wanted], volumes=[DATA])
    hypervisor.refuse_resize = True
    _pass(keeper, state)
    assert [f.message for f in keeper.ledger.report()] == ["QEMU did not answer"]
    hypervisor.vms[VM] = VmObservation(VM, "vm", False, 1, None)  # it reads the size at start
    clock.now += 10
    _pass(keeper, state)
    assert keeper.ledger.report() == []
    assert keeper.observe(state, dict(hypervisor.vms))[0].error is None


def test_a_failed_attach_is_forgotten_once_the_vm_no_longer_wants_it(tmp_path: Path) -> None:
    keeper, storage, hypervisor, _clock = _keeper(tmp_path)
    storage.sizes["vol-1"] = 2 * GIB
    hypervisor.vms[VM] = VmObservation(VM, "vm", True, 1, None)
    hypervisor.disks[VM] = []
    wanted = vm(VM).model_copy(update={"volumes": [VolumeAttachment(volume_id="vol-1",
                                                                    target="vdc")]})
    hypervisor.refuse_attach = True
    _pass(keeper, DesiredState(node_id="n", generation=2, vms=[wanted], volumes=[DATA]))
    assert [(f.object_id, f.action) for f in keeper.ledger.report()] == [("vol-1", "attach")]
    _pass(keeper, DesiredState(node_id="n", generation=3, vms=[vm(VM)], volumes=[DATA]))
    assert keeper.ledger.report() == []


def test_an_unrelated_change_on_the_node_does_not_restart_a_volume_failure(
        tmp_path: Path) -> None:
    keeper, storage, _hv, clock = _keeper(tmp_path)
    storage.away = True
    _pass(keeper, DesiredState(node_id="n", generation=2, vms=[], volumes=[DATA]))
    clock.now += 10  # past the retry delay
    # a new generation for something else on the node: the same volume request, tried again
    _pass(keeper, DesiredState(node_id="n", generation=3, vms=[vm(VM)], volumes=[DATA]))
    [failure] = keeper.ledger.report()
    assert failure.attempts == 2 and not failure.final
    clock.now += 300  # lasted past the give-up point
    _pass(keeper, DesiredState(node_id="n", generation=4, vms=[], volumes=[DATA]))
    assert keeper.ledger.report()[0].final and storage.creates == 3
    state = DesiredState(node_id="n", generation=5, vms=[], volumes=[DATA])
    _pass(keeper, state)
    assert storage.creates == 3  # given up on: the same request is not tried again
    [shown] = keeper.observe(state, {})
    assert shown.error == "Ceph cluster unreachable" and shown.failed_generation == 2
    # what is asked of the volume changed: tried afresh
    _pass(keeper, DesiredState(node_id="n", generation=6, vms=[],
                               volumes=[DATA.model_copy(update={"size_gib": 3})]))
    assert storage.creates == 4 and keeper.ledger.report()[0].attempts == 1


def test_a_later_success_clears_the_error_the_volume_shows(tmp_path: Path) -> None:
    """The controller settles a request by what the node shows: an error given up on must
    not outlive the volume's next request that succeeds."""
    keeper, storage, _hv, _clock = _keeper(tmp_path)
    storage.away = True
    state = DesiredState(node_id="n", generation=2, vms=[], volumes=[DATA])
    _pass(keeper, state)
    keeper.ledger.failed("volume", DATA.id, "converge", volume_request(DATA), "given up",
                         retryable=False)  # as it ends once the give-up point is past
    assert keeper.observe(state, {})[0].failed_generation == 2
    storage.away = False
    grown = DesiredState(node_id="n", generation=3, vms=[],
                         volumes=[DATA.model_copy(update={"size_gib": 3})])
    _pass(keeper, grown)
    [shown] = keeper.observe(grown, {})
    assert shown.size_bytes == 3 * GIB and shown.error is None
    assert shown.failed_generation is None and keeper.ledger.report() == []


def test_a_failed_or_waiting_volume_action_says_its_pass_is_not_done(tmp_path: Path) -> None:
    keeper, storage, hypervisor, clock = _keeper(tmp_path)
    storage.sizes["vol-1"] = 2 * GIB
    hypervisor.vms[VM] = VmObservation(VM, "vm", True, 1, None)
    hypervisor.disks[VM] = []
    wanted = vm(VM).model_copy(update={"volumes": [VolumeAttachment(volume_id="vol-1",
                                                                    target="vdc")]})
    state = DesiredState(node_id="n", generation=2, vms=[wanted], volumes=[DATA])
    hypervisor.refuse_attach = True
    for _ in range(2):  # it fails, then waits for its retry
        work, waiting = keeper.plan(state, dict(hypervisor.vms))
        assert [task() for _lock, task in work] == [False] and not waiting
    hypervisor.refuse_attach, clock.now = False, clock.now + 10
    work, waiting = keeper.plan(state, dict(hypervisor.vms))
    assert [task() for _lock, task in work] == [True] and not waiting
    # a volume whose converge failed and waits: no task, but the pass is not done
    storage.away = True
    missing = DATA.model_copy(update={"id": "vol-2"})
    state = DesiredState(node_id="n", generation=3, vms=[], volumes=[missing])
    work, waiting = keeper.plan(state, {})
    assert [task() for _lock, task in work] == [False] and not waiting
    work, waiting = keeper.plan(state, {})
    assert work == [] and waiting
