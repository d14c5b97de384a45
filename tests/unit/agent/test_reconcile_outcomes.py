"""What a pass reports: its generation applied only once all of it ended well, and only
the failures that still stand (those of objects no longer wanted leave)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from agent.drivers.hypervisor.base import HypervisorDriver, VmObservation
from agent.drivers.network.secgroups import FirewallError, PortFilter
from agent.drivers.storage.base import StorageDriver, StorageError
from agent.networks import NetworkKeeper
from agent.protocol import DesiredSecurityGroup, DesiredState, SecurityRule
from agent.reconcile import Reconciler
from agent.retry import FailureLedger
from tests.unit.agent.test_reconcile import (
    GROUP,
    IMAGE,
    MINE,
    NET,
    Clock,
    FakeFirewall,
    FakeHypervisor,
    FakeNetwork,
    FakeStorage,
    _image_source,
    _ledger,
    filtered_vm,
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


def unapplied_until_healed(rec: Reconciler, desired: DesiredState, clock: Clock,
                           heal: Callable[[], None]) -> None:
    """Apply `desired` while its failure stands (failed, then waiting for its retry): never
    applied; then heal the failure, let the retry come due, and apply once more."""
    for _ in range(2):
        rec.apply(desired)
        assert rec.wait_idle(10) and rec.applied_generation == -1
    heal()
    clock.now += 30
    rec.apply(desired)
    assert rec.wait_idle(10)


def test_a_failed_flatten_keeps_its_generation_unapplied(tmp_path: Path) -> None:
    hv, st, clock = FakeHypervisor(), CloneStorage(tmp_path / "disks"), Clock()
    rec = reconciler(tmp_path, clock, hv, st)
    hv.vms["aaaa-1"] = VmObservation("aaaa-1", "vauban-x", True, 1, None, MINE)
    desired = DesiredState(node_id="n", generation=4,
                           vms=[vm("aaaa-1").model_copy(update={"flatten_root": True})])
    unapplied_until_healed(rec, desired, clock, lambda: setattr(st, "broken", False))
    assert rec.applied_generation == 4


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
    unapplied_until_healed(rec, desired, clock, lambda: setattr(st, "broken", False))
    assert st.images == {} and rec.applied_generation == 6


def test_a_failed_volume_action_keeps_its_generation_unapplied(tmp_path: Path) -> None:
    st, clock = FlakyVolumeStorage(tmp_path / "disks"), Clock()
    rec = reconciler(tmp_path, clock, PlugHypervisor(), st)
    st.away = True
    desired = DesiredState(node_id="n", generation=8, vms=[], volumes=[DATA])
    unapplied_until_healed(rec, desired, clock, lambda: setattr(st, "away", False))
    assert "vol-1" in st.sizes and rec.applied_generation == 8


def _kinds(rec: Reconciler) -> list[tuple[str, str, str]]:
    return sorted((f.kind, f.object_id, f.action) for f in rec.report_failures())


def test_an_image_import_failure_is_forgotten_once_no_vm_here_needs_the_image(
        tmp_path: Path) -> None:
    """Regression: an image's failed import stayed in the node's failures for good."""
    rec = reconciler(tmp_path, Clock(), source=FlakySource())
    rec.apply(DesiredState(node_id="n", generation=1, vms=[vm("aaaa-1")]))
    assert rec.wait_idle(10)
    assert _kinds(rec) == [("image", "img", "import"), ("vm", "aaaa-1", "converge")]
    rec.apply(DesiredState(node_id="n", generation=2, vms=[]))  # the VM was deleted
    assert rec.wait_idle(10) and rec.report_failures() == []


def test_an_image_import_failure_is_forgotten_once_the_image_is_deleted(
        tmp_path: Path) -> None:
    st = FakeStorage(tmp_path / "disks")
    rec = reconciler(tmp_path, Clock(), st=st, source=FlakySource())
    rec.apply(DesiredState(node_id="n", generation=1, vms=[vm("aaaa-1")]))
    assert rec.wait_idle(10)
    st.in_use = {"img"}  # its stored copy, if any, is kept: no failure of its own either
    rec.apply(DesiredState(node_id="n", generation=2, vms=[vm("aaaa-1")],
                           retired_images=["img"]))
    assert rec.wait_idle(10)
    assert _kinds(rec) == [("vm", "aaaa-1", "converge")]  # the VM's own failure stands


def test_an_image_import_failure_is_forgotten_once_the_image_is_there(tmp_path: Path) -> None:
    hv, st, clock = FakeHypervisor(), FakeStorage(tmp_path / "disks"), Clock()
    rec = reconciler(tmp_path, clock, hv, st, FlakySource())
    rec.apply(DesiredState(node_id="n", generation=1, vms=[vm("aaaa-1")]))
    assert rec.wait_idle(10)
    st.images["img"] = IMAGE  # imported meanwhile by another node of the shared storage
    clock.now += 30
    rec.apply(DesiredState(node_id="n", generation=1, vms=[vm("aaaa-1")]))
    assert rec.wait_idle(10) and hv.vms["aaaa-1"].running
    assert rec.report_failures() == []


def test_failures_of_a_vm_no_longer_wanted_leave_but_its_failed_removal(
        tmp_path: Path) -> None:
    hv = FakeHypervisor()
    rec = reconciler(tmp_path, Clock(), hv)
    hv.vms["cccc-3"] = VmObservation("cccc-3", "vauban-x", False, 1, None, MINE)
    hv.fail_on = {"start"}
    rec.apply(DesiredState(node_id="n", generation=1, vms=[vm("cccc-3", seq=2)]))
    assert rec.wait_idle(10)
    assert _kinds(rec) == [("vm", "cccc-3", "converge")]
    hv.fail_on = {"undefine"}  # deleted, but its removal fails: that failure alone is its
    rec.apply(DesiredState(node_id="n", generation=2, vms=[]))
    assert rec.wait_idle(10)
    assert _kinds(rec) == [("vm", "cccc-3", "remove")]


def test_a_failed_flatten_is_forgotten_once_no_longer_asked(tmp_path: Path) -> None:
    hv = FakeHypervisor()
    rec = reconciler(tmp_path, Clock(), hv, CloneStorage(tmp_path / "disks"))
    hv.vms["aaaa-1"] = VmObservation("aaaa-1", "vauban-x", True, 1, None, MINE)
    rec.apply(DesiredState(node_id="n", generation=1,
                           vms=[vm("aaaa-1").model_copy(update={"flatten_root": True})]))
    assert rec.wait_idle(10) and _kinds(rec) == [("vm", "aaaa-1", "flatten")]
    rec.apply(DesiredState(node_id="n", generation=2, vms=[vm("aaaa-1")]))
    assert rec.wait_idle(10) and rec.report_failures() == []
    assert rec.applied_generation == 2


def test_a_network_failure_is_forgotten_once_the_network_is_neither_wanted_nor_here(
        tmp_path: Path) -> None:
    ledger = FailureLedger()
    keeper = NetworkKeeper(FakeNetwork(), None, tmp_path / "n.json",  # type: ignore[arg-type]
                           ledger=ledger)
    ledger.failed("network", "net-9", "ensure", "{}", "left from before")  # not carried
    assert keeper.apply([NET]) and ledger.report() == []


def test_a_firewall_failure_is_forgotten_once_the_rules_in_force_are_wanted_again(
        tmp_path: Path) -> None:
    class PickyFirewall(FakeFirewall):
        """Refuses rules for port 22, and cannot isolate ports either."""

        def apply(self, ports: list[PortFilter], groups: dict[str, DesiredSecurityGroup]) -> None:
            if any(r.port_min == 22 for g in groups.values() for r in g.rules):
                raise FirewallError("nftables: rule refused")
            super().apply(ports, groups)

        def isolate(self, taps: list[str]) -> None:
            raise FirewallError("nftables: isolation refused")

    keeper = NetworkKeeper(FakeNetwork(), None, tmp_path / "n.json",  # type: ignore[arg-type]
                           firewall=PickyFirewall())
    state = DesiredState(node_id="n", generation=1, vms=[filtered_vm("aaaa-1")],
                         networks=[NET], security_groups=[GROUP])
    assert keeper.apply_security_groups(state)
    ssh = GROUP.model_copy(update={"rules": [*GROUP.rules, SecurityRule(
        direction="ingress", protocol="tcp", port_min=22, port_max=22,
        remote_cidr="0.0.0.0/0")]})
    assert not keeper.apply_security_groups(state.model_copy(
        update={"security_groups": [ssh]}))
    assert [f.kind for f in keeper.ledger.report()] == ["firewall"]
    # the rule is withdrawn: what is in force is what is wanted, nothing failed any more
    assert keeper.apply_security_groups(state) and keeper.ledger.report() == []
