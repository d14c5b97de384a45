"""Snapshots of a volume plugged into a running VM are taken inside one freeze of the
guest's filesystems, thawed right after, also when a snapshot or the thaw fails; each is
reported quiesced or crash-consistent. In-memory drivers that log every call in order."""

from __future__ import annotations

from pathlib import Path

from agent.drivers.hypervisor.base import DiskSpec, HypervisorError, VmObservation
from agent.drivers.storage.base import StorageError, VolumeInfo
from agent.protocol import DesiredState, DesiredVolume, VolumeAttachment
from agent.retry import FailureLedger, RetryPolicy
from agent.volumes import GIB, VolumeKeeper
from tests.unit.agent.test_reconcile import vm
from tests.unit.agent.test_volume_keeper import VM, Clock, DiskHypervisor, VolumeStorage


class SnapStorage(VolumeStorage):
    """Volumes with snapshots (name -> quiesced); `refuse_snapshot` names one that fails."""

    def __init__(self, root: Path, events: list[str]) -> None:
        super().__init__(root)
        self.events = events
        self.snaps: dict[str, dict[str, bool]] = {}
        self.refuse_snapshot: str | None = None

    def list_volumes(self) -> list[VolumeInfo]:
        return [VolumeInfo(v, "p", size, 0, tuple(self.snaps.get(v, {})),
                           quiesced_snapshots=tuple(s for s, q in self.snaps.get(v, {}).items()
                                                    if q))
                for v, size in self.sizes.items()]

    def snapshot_volume(self, volume_id: str, snap: str, *, quiesced: bool = False) -> None:
        self.events.append(f"snapshot {snap}" + (" quiesced" if quiesced else ""))
        if snap == self.refuse_snapshot:
            raise StorageError("rbd: snapshot refused", retryable=True)
        self.snaps.setdefault(volume_id, {})[snap] = quiesced


class FreezeHypervisor(DiskHypervisor):
    """A guest agent that freezes while `agent` (else: not quiesced, as the contract says)
    and thaws unless `refuse_thaw`; `frozen` is what the guest would be."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events
        self.agent = True
        self.refuse_thaw = False
        self.frozen = False

    def freeze_filesystems(self, vm_id: str) -> bool:
        self.events.append(f"freeze {vm_id}")
        if not self.agent:
            return False
        self.frozen = True
        return True

    def thaw_filesystems(self, vm_id: str) -> None:
        self.events.append(f"thaw {vm_id}")
        if self.refuse_thaw:
            raise HypervisorError(f"VM {vm_id}: thawing its filesystems failed, they may "
                                  "still be frozen: agent timed out", retryable=True)
        self.frozen = False


class Setup:
    def __init__(self, tmp_path: Path, *, running: bool = True, plugged: bool = True) -> None:
        self.events: list[str] = []
        self.storage = SnapStorage(tmp_path, self.events)
        self.hypervisor = FreezeHypervisor(self.events)
        self.clock = Clock()
        self.keeper = VolumeKeeper(self.storage, self.hypervisor, ledger=FailureLedger(
            RetryPolicy(), clock=self.clock, rand=lambda: 0.0))
        self.storage.sizes["vol-1"] = GIB
        self.hypervisor.vms[VM] = VmObservation(VM, "vm", running, 1, None)
        disks: list[DiskSpec] = [self.storage.volume_disk("vol-1", "vdc")] if plugged else []
        self.hypervisor.disks[VM] = disks
        self.attachments = [VolumeAttachment(volume_id="vol-1", target="vdc")] if plugged else []
        self.one_pass(self.state())  # the first pass's thaw (see test_the_first_pass_thaws)
        self.events.clear()

    def state(self, *snaps: str, generation: int = 2) -> DesiredState:
        wanted = vm(VM).model_copy(update={"volumes": self.attachments})
        return DesiredState(node_id="n", generation=generation, vms=[wanted], volumes=[
            DesiredVolume(id="vol-1", name="data", pool="p", size_gib=1, present=True,
                          snapshots=list(snaps))])

    def one_pass(self, state: DesiredState) -> list[bool]:
        work, _waiting = self.keeper.plan(state, dict(self.hypervisor.vms))
        return [task() for _lock, task in work]

    def failures(self) -> list[str]:
        return [f.message for f in self.keeper.ledger.report()]


def test_new_snapshots_of_a_plugged_volume_are_taken_in_one_freeze(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    state = s.state("s1", "s2")
    assert s.one_pass(state) == [True]
    assert s.events == [f"freeze {VM}", "snapshot s1 quiesced", "snapshot s2 quiesced",
                        f"thaw {VM}"]
    assert not s.hypervisor.frozen
    [shown] = s.keeper.observe(state, dict(s.hypervisor.vms))
    assert shown.snapshots == ["s1", "s2"] and shown.quiesced_snapshots == ["s1", "s2"]
    s.events.clear()
    assert s.one_pass(s.state("s1", "s2", "s3", generation=3)) == [True]
    assert s.events == [f"freeze {VM}", "snapshot s3 quiesced", f"thaw {VM}"]  # only the new


def test_a_failed_snapshot_still_thaws_the_guest(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.storage.refuse_snapshot = "s2"
    assert s.one_pass(s.state("s1", "s2", "s3")) == [False]
    assert s.events == [f"freeze {VM}", "snapshot s1 quiesced", "snapshot s2 quiesced",
                        f"thaw {VM}"]
    assert not s.hypervisor.frozen
    assert s.failures() == ["rbd: snapshot refused"]


def test_a_guest_without_an_agent_gets_crash_consistent_snapshots(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.hypervisor.agent = False
    state = s.state("s1")
    assert s.one_pass(state) == [True]
    assert s.events == [f"freeze {VM}", "snapshot s1"]  # nothing frozen: nothing to thaw
    assert s.failures() == []
    [shown] = s.keeper.observe(state, dict(s.hypervisor.vms))
    assert shown.snapshots == ["s1"] and shown.quiesced_snapshots == []


def test_no_freeze_for_a_volume_not_plugged_into_a_running_vm(tmp_path: Path) -> None:
    for running, plugged in ((True, False), (False, True)):
        s = Setup(tmp_path, running=running, plugged=plugged)
        s.one_pass(s.state("s1"))
        assert s.events == ["snapshot s1"], (running, plugged)
        assert s.storage.snaps["vol-1"] == {"s1": False}


def test_a_failed_thaw_is_reported_and_its_retry_thaws_first(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.hypervisor.refuse_thaw = True
    state = s.state("s1")
    assert s.one_pass(state) == [False]
    assert s.events == [f"freeze {VM}", "snapshot s1 quiesced", f"thaw {VM}"]
    assert s.hypervisor.frozen and "may still be frozen" in s.failures()[0]
    s.events.clear()
    s.hypervisor.refuse_thaw = False
    s.clock.now += 10  # past the retry delay
    assert s.one_pass(state) == [True]
    assert s.events == [f"thaw {VM}"]  # the snapshot is there: only the thaw was owed
    assert not s.hypervisor.frozen and s.failures() == []


def test_a_failed_thaw_after_a_failed_snapshot_names_both(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.storage.refuse_snapshot, s.hypervisor.refuse_thaw = "s1", True
    assert s.one_pass(s.state("s1")) == [False]
    [message] = s.failures()
    assert "may still be frozen" in message and "rbd: snapshot refused" in message


def test_the_first_pass_thaws_running_vms_with_volumes(tmp_path: Path) -> None:
    """An agent stopped between a freeze and its thaw left the guest frozen: the next
    agent's first pass thaws every running VM with a volume, once; a VM without a guest
    agent (its thaw fails) is no failure."""
    for refuse in (False, True):
        s = Setup(tmp_path)
        keeper = VolumeKeeper(s.storage, s.hypervisor)  # as a restarted agent makes it
        s.hypervisor.frozen, s.hypervisor.refuse_thaw = True, refuse
        work, _waiting = keeper.plan(s.state(), dict(s.hypervisor.vms))
        assert [lock for lock, _task in work] == [f"thaw:{VM}"]
        assert [task() for _lock, task in work] == [True]
        assert s.events == [f"thaw {VM}"] and s.hypervisor.frozen is refuse
        assert keeper.ledger.report() == []
        assert keeper.plan(s.state(), dict(s.hypervisor.vms))[0] == []  # once
    for running, plugged in ((True, False), (False, True)):
        s = Setup(tmp_path, running=running, plugged=plugged)
        keeper = VolumeKeeper(s.storage, s.hypervisor)
        assert keeper.plan(s.state(), dict(s.hypervisor.vms))[0] == []
