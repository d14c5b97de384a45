"""The reconcile pass against in-memory drivers: ordering, revert, adoption, power rules."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pycdlib
import pytest

from agent.drivers.hypervisor.base import (
    DiskSpec,
    HypervisorDriver,
    HypervisorError,
    HypervisorInfo,
    VmObservation,
    VmSpec,
)
from agent.drivers.network.base import NetworkError, bridge_name
from agent.drivers.network.secgroups import FirewallError, PortFilter
from agent.drivers.storage.base import ImageInUse, StorageDriver, StorageError, StorageInfo
from agent.networks import NetworkKeeper, tap_name
from agent.protocol import (
    CloudInitSeed,
    DesiredNetwork,
    DesiredPort,
    DesiredSecurityGroup,
    DesiredState,
    DesiredVm,
    DesiredVolume,
    ImageRef,
    NetworkKind,
    ObservedVmState,
    PowerMode,
    PowerState,
    SecurityRule,
)
from agent.reconcile import OWNER_LABEL, Reconciler
from agent.retry import FailureLedger, RetryPolicy

IMAGE = b"image-bytes"
MINE = {OWNER_LABEL: "node-1"}


class FakeHypervisor(HypervisorDriver):
    def __init__(self) -> None:
        self.vms: dict[str, VmObservation] = {}
        self.specs: dict[str, VmSpec] = {}
        self.calls: list[str] = []
        self.fail_on: set[str] = set()

    def info(self) -> HypervisorInfo:
        return HypervisorInfo("fake", False, False, False)

    def list_vms(self) -> list[VmObservation]:
        return list(self.vms.values())

    def _call(self, what: str, vm_id: str) -> None:
        self.calls.append(f"{what}:{vm_id[:4]}")
        if what in self.fail_on:
            raise HypervisorError(f"{what} failed")

    def define(self, spec: VmSpec) -> None:
        self._call("define", spec.id)
        self.specs[spec.id] = spec
        self.vms[spec.id] = VmObservation(spec.id, spec.name, False, 0, spec.console_log,
                                          dict(spec.labels))

    def start(self, vm_id: str) -> None:
        self._call("start", vm_id)
        self.vms[vm_id] = self._with(vm_id, running=True)

    def stop(self, vm_id: str, *, grace_seconds: float) -> None:
        self._call("stop" if grace_seconds else "force-off", vm_id)
        self.vms[vm_id] = self._with(vm_id, running=False)

    def reset(self, vm_id: str) -> None:
        self._call("reset", vm_id)

    def undefine(self, vm_id: str) -> None:
        self._call("undefine", vm_id)
        self.vms.pop(vm_id, None)

    def set_power_seq(self, vm_id: str, power_seq: int) -> None:
        self.vms[vm_id] = self._with(vm_id, power_seq=power_seq)

    def _with(self, vm_id: str, **changes: object) -> VmObservation:
        o = self.vms[vm_id]
        values = {**o.__dict__, **changes}
        return VmObservation(**values)  # type: ignore[arg-type]


class FakeStorage(StorageDriver):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.images: dict[str, bytes] = {}
        self.disks: set[str] = set()
        self.in_use: set[str] = set()

    def info(self) -> StorageInfo:
        return StorageInfo("fake", False, True)

    def has_image(self, image_id: str) -> bool:
        return image_id in self.images

    def import_image(self, image: ImageRef, chunks: Iterable[bytes]) -> None:
        data = b"".join(chunks)
        if hashlib.sha256(data).hexdigest() != image.sha256:
            raise StorageError("checksum mismatch")
        self.images[image.id] = data

    def delete_image(self, image_id: str) -> None:
        if image_id in self.in_use:
            raise ImageInUse(f"image {image_id} is in use")
        self.images.pop(image_id, None)

    def image_virtual_size(self, image_id: str) -> int:
        return len(self.images[image_id])

    def create_root_disk(self, vm_id: str, image_id: str, size_gib: int | None) -> DiskSpec:
        self.disks.add(vm_id)
        return DiskSpec(self.root / vm_id, "qcow2", "vda")

    def delete_vm_disks(self, vm_id: str) -> None:
        self.disks.discard(vm_id)

    def vm_disk_exists(self, vm_id: str) -> bool:
        return vm_id in self.disks

    def free_bytes(self) -> int:
        return 10**12


def _image_source(image_id: str) -> Iterator[bytes]:
    yield IMAGE


def vm(vm_id: str, power: PowerState = PowerState.RUNNING, seq: int = 1) -> DesiredVm:
    return DesiredVm(
        id=vm_id, name=f"vm-{vm_id[:4]}", vcpus=1, memory_mib=128,
        image=ImageRef(id="img", name="img", disk_format="raw", size_bytes=len(IMAGE),
                       sha256=hashlib.sha256(IMAGE).hexdigest()),
        power=power, power_seq=seq,
        seed=CloudInitSeed(instance_id=vm_id, hostname="h"),
    )


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Reconciler, FakeHypervisor, FakeStorage]:
    hv, st = FakeHypervisor(), FakeStorage(tmp_path / "disks")
    rec = Reconciler(hv, st, _image_source, tmp_path / "instances", owner="node-1",
                     stop_grace_s=1)
    return rec, hv, st


def test_create_builds_everything_and_reports_running(parts: tuple[Reconciler, FakeHypervisor,
                                                                  FakeStorage]) -> None:
    rec, hv, st = parts
    rec.apply(DesiredState(node_id="n", generation=3, vms=[vm("aaaa-1")]))
    assert rec.wait_idle(10)
    assert hv.calls == ["define:aaaa", "start:aaaa"]
    assert st.disks == {"aaaa-1"} and "img" in st.images
    assert (rec.vm_dir("aaaa-1") / "seed.iso").exists()
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.RUNNING and obs.power_seq == 1
    assert rec.applied_generation == 3


def test_failed_start_reverts_every_step(parts: tuple[Reconciler, FakeHypervisor,
                                                      FakeStorage]) -> None:
    rec, hv, st = parts
    hv.fail_on = {"start"}
    rec.apply(DesiredState(node_id="n", generation=1, vms=[vm("aaaa-1")]))
    assert rec.wait_idle(10)
    assert hv.vms == {} and st.disks == set()
    assert not rec.vm_dir("aaaa-1").exists()
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.ERROR and obs.error == "start failed"
    # the same request is not hammered again; a new power action is tried afresh
    hv.calls.clear()
    rec.apply(DesiredState(node_id="n", generation=1, vms=[vm("aaaa-1")]))
    assert rec.wait_idle(10)
    assert hv.calls == []
    hv.fail_on = set()
    rec.apply(DesiredState(node_id="n", generation=2, vms=[vm("aaaa-1", seq=2)]))
    assert rec.wait_idle(10)
    assert hv.vms["aaaa-1"].running and rec.observe()[0].state is ObservedVmState.RUNNING


def test_a_create_half_undone_is_started_with_its_folder_and_seed_made_again(
        parts: tuple[Reconciler, FakeHypervisor, FakeStorage]) -> None:
    """libvirtd restarting mid-create (as when the node's TLS listener comes up): the
    start fails and so does the undefine, so the domain stays while its folder went with
    the rest of the revert. The next try starts it: its console log's folder and its seed
    must be there again (libvirt refused the start for the missing console log)."""
    rec, hv, _st = parts

    class Restarting(FakeHypervisor):
        def start(self, vm_id: str) -> None:
            if not (rec.vm_dir(vm_id) / "seed.iso").exists():
                raise HypervisorError(f"Unable to open file: {rec.console_log(vm_id)}")
            super().start(vm_id)

    restarting = Restarting()
    rec.hypervisor = restarting
    restarting.fail_on = {"start", "undefine"}
    rec.apply(DesiredState(node_id="n", generation=1, vms=[vm("aaaa-1")]))
    assert rec.wait_idle(10)
    assert "aaaa-1" in restarting.vms and not rec.vm_dir("aaaa-1").exists()
    restarting.fail_on = set()
    rec.apply(DesiredState(node_id="n", generation=2, vms=[vm("aaaa-1", seq=2)]))
    assert rec.wait_idle(10)
    assert restarting.vms["aaaa-1"].running, rec.observe()
    assert (rec.vm_dir("aaaa-1") / "seed.iso").exists()


def test_remove_before_add(parts: tuple[Reconciler, FakeHypervisor, FakeStorage]) -> None:
    rec, hv, _st = parts
    rec.apply(DesiredState(node_id="n", generation=1, vms=[vm("aaaa-1")]))
    assert rec.wait_idle(10)
    hv.calls.clear()
    rec.apply(DesiredState(node_id="n", generation=2, vms=[vm("bbbb-2")]))
    assert rec.wait_idle(10)
    assert hv.calls == ["undefine:aaaa", "define:bbbb", "start:bbbb"]
    assert not rec.vm_dir("aaaa-1").exists()


def test_nothing_is_removed_for_an_unknown_desired_state(parts: tuple[Reconciler, FakeHypervisor,
                                                                      FakeStorage]) -> None:
    rec, hv, _st = parts
    hv.vms["cccc-3"] = VmObservation("cccc-3", "vauban-x", True, 4, None, MINE)
    [obs] = rec.observe()  # adopted as it is, before any desired state arrived
    assert obs.state is ObservedVmState.RUNNING and obs.power_seq == 4
    assert hv.calls == []


def test_running_vm_is_adopted_without_restart(parts: tuple[Reconciler, FakeHypervisor,
                                                             FakeStorage]) -> None:
    rec, hv, _st = parts
    hv.vms["cccc-3"] = VmObservation("cccc-3", "vauban-x", True, 1, None, MINE)
    rec.apply(DesiredState(node_id="n", generation=5, vms=[vm("cccc-3")]))
    assert rec.wait_idle(10)
    assert hv.calls == []


def test_guest_poweroff_is_not_undone_but_a_new_start_is_applied(
        parts: tuple[Reconciler, FakeHypervisor, FakeStorage]) -> None:
    rec, hv, _st = parts
    hv.vms["cccc-3"] = VmObservation("cccc-3", "vauban-x", False, 1, None, MINE)
    rec.apply(DesiredState(node_id="n", generation=5, vms=[vm("cccc-3", seq=1)]))
    assert rec.wait_idle(10)
    assert hv.calls == []
    rec.apply(DesiredState(node_id="n", generation=6, vms=[vm("cccc-3", seq=2)]))
    assert rec.wait_idle(10)
    assert hv.calls == ["start:cccc"] and hv.vms["cccc-3"].power_seq == 2


def test_stop(parts: tuple[Reconciler, FakeHypervisor, FakeStorage]) -> None:
    rec, hv, _st = parts
    hv.vms["cccc-3"] = VmObservation("cccc-3", "vauban-x", True, 1, None, MINE)
    rec.apply(DesiredState(node_id="n", generation=5,
                           vms=[vm("cccc-3", PowerState.STOPPED, seq=2)]))
    assert rec.wait_idle(10)
    assert hv.calls == ["stop:cccc"]
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.STOPPED and obs.power_seq == 2


def test_forced_stop_cuts_the_power(parts: tuple[Reconciler, FakeHypervisor,
                                                   FakeStorage]) -> None:
    rec, hv, _st = parts
    hv.vms["cccc-3"] = VmObservation("cccc-3", "vauban-x", True, 1, None, MINE)
    forced = vm("cccc-3", PowerState.STOPPED, seq=2).model_copy(
        update={"power_mode": PowerMode.FORCE})
    rec.apply(DesiredState(node_id="n", generation=5, vms=[forced]))
    assert rec.wait_idle(10)
    assert hv.calls == ["force-off:cccc"]
    assert rec.observe()[0].power_seq == 2


@pytest.mark.parametrize("mode, calls", [(PowerMode.REBOOT, ["stop:cccc", "start:cccc"]),
                                         (PowerMode.RESET, ["reset:cccc"])])
def test_a_reboot_is_done_once_per_power_action(
        parts: tuple[Reconciler, FakeHypervisor, FakeStorage], mode: PowerMode,
        calls: list[str]) -> None:
    rec, hv, _st = parts
    hv.vms["cccc-3"] = VmObservation("cccc-3", "vauban-x", True, 1, None, MINE)
    again = vm("cccc-3", seq=2).model_copy(update={"power_mode": mode})
    rec.apply(DesiredState(node_id="n", generation=5, vms=[again]))
    assert rec.wait_idle(10)
    assert hv.calls == calls
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.RUNNING and obs.power_seq == 2
    # the same desired state again (a later generation, another change): no second reboot
    rec.apply(DesiredState(node_id="n", generation=6, vms=[again]))
    assert rec.wait_idle(10)
    assert hv.calls == calls


def test_a_reboot_of_a_vm_found_stopped_starts_it(
        parts: tuple[Reconciler, FakeHypervisor, FakeStorage]) -> None:
    rec, hv, _st = parts
    hv.vms["cccc-3"] = VmObservation("cccc-3", "vauban-x", False, 1, None, MINE)
    again = vm("cccc-3", seq=2).model_copy(update={"power_mode": PowerMode.REBOOT})
    rec.apply(DesiredState(node_id="n", generation=5, vms=[again]))
    assert rec.wait_idle(10)
    assert hv.calls == ["start:cccc"]


def test_image_checksum_mismatch_is_an_error_and_leaves_nothing(
        parts: tuple[Reconciler, FakeHypervisor, FakeStorage]) -> None:
    rec, hv, st = parts
    bad = vm("dddd-4").model_copy(update={"image": vm("dddd-4").image.model_copy(
        update={"sha256": "0" * 64})})
    rec.apply(DesiredState(node_id="n", generation=1, vms=[bad]))
    assert rec.wait_idle(10)
    assert st.images == {} and hv.vms == {}
    assert rec.observe()[0].error == "checksum mismatch"


def test_orphan_directory_from_a_crash_is_removed_with_disks_of_a_deleted_vm(
        parts: tuple[Reconciler, FakeHypervisor, FakeStorage]) -> None:
    rec, _hv, st = parts
    rec.vm_dir("eeee-5").mkdir(parents=True)
    st.disks.add("eeee-5")
    rec.apply(DesiredState(node_id="n", generation=1, vms=[], delete_vm_disks=["eeee-5"]))
    assert rec.wait_idle(10)
    assert not rec.vm_dir("eeee-5").exists() and st.disks == set()


def test_an_unwanted_vm_not_listed_as_deleted_keeps_its_disks(
        parts: tuple[Reconciler, FakeHypervisor, FakeStorage]) -> None:
    """A VM that left (migrated, or restarted elsewhere by HA while this node was fenced)
    runs from the same shared disks: its domain and files go here, never its disks."""
    rec, hv, st = parts
    rec.apply(DesiredState(node_id="n", generation=1, vms=[vm("aaaa-1")]))
    assert rec.wait_idle(10)
    rec.vm_dir("eeee-5").mkdir(parents=True)
    st.disks.add("eeee-5")
    rec.apply(DesiredState(node_id="n", generation=2, vms=[]))
    assert rec.wait_idle(10)
    assert hv.vms == {} and "undefine:aaaa" in hv.calls
    assert not rec.vm_dir("aaaa-1").exists() and not rec.vm_dir("eeee-5").exists()
    assert st.disks == {"aaaa-1", "eeee-5"}


def test_vms_of_other_nodes_are_never_touched(parts: tuple[Reconciler, FakeHypervisor,
                                                          FakeStorage]) -> None:
    rec, hv, _st = parts
    hv.vms["ffff-6"] = VmObservation("ffff-6", "vauban-other", True, 1, None,
                                     {OWNER_LABEL: "node-2"})
    rec.apply(DesiredState(node_id="n", generation=1, vms=[]))
    assert rec.wait_idle(10)
    assert hv.calls == [] and "ffff-6" in hv.vms
    assert rec.observe() == []


def test_a_slow_create_does_not_hold_up_other_vms(tmp_path: Path) -> None:
    release = threading.Event()
    hv, st = FakeHypervisor(), FakeStorage(tmp_path / "disks")

    def slow_source(image_id: str) -> Iterator[bytes]:
        if image_id == "slow":
            assert release.wait(10)
        yield IMAGE

    settled: list[int] = []
    rec = Reconciler(hv, st, slow_source, tmp_path / "instances", owner="node-1",
                     stop_grace_s=1, on_settled=lambda: settled.append(1))
    slow = vm("aaaa-1").model_copy(update={"image": vm("aaaa-1").image.model_copy(
        update={"id": "slow"})})
    rec.apply(DesiredState(node_id="n", generation=1, vms=[slow]))
    rec.apply(DesiredState(node_id="n", generation=2, vms=[slow, vm("bbbb-2")]))
    # B is built while A still downloads
    assert _wait(lambda: "bbbb-2" in hv.vms and hv.vms["bbbb-2"].running)
    assert "aaaa-1" not in hv.vms and rec.applied_generation == -1
    [a] = [o for o in rec.observe() if o.id == "aaaa-1"]
    assert a.state is ObservedVmState.PROVISIONING
    release.set()
    assert rec.wait_idle(10) and hv.vms["aaaa-1"].running
    assert rec.applied_generation == 1 and settled  # the next pass is asked for
    rec.apply(DesiredState(node_id="n", generation=2, vms=[slow, vm("bbbb-2")]))
    assert rec.wait_idle(10) and rec.applied_generation == 2


def _wait(cond: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)  # polling another thread's progress
    return False


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_retryable_failure_is_retried_before_it_fails_the_request(tmp_path: Path) -> None:
    hv, st = FakeHypervisor(), FakeStorage(tmp_path / "disks")
    tries: list[str] = []

    def unreachable(image_id: str) -> Iterator[bytes]:
        tries.append(image_id)
        raise StorageError("Ceph cluster unreachable", retryable=True)
        yield b""  # pragma: no cover - makes this a generator

    clock = Clock()
    ledger = FailureLedger(RetryPolicy(base_s=30, cap_s=30, give_up_after_s=300),
                           clock=clock, rand=lambda: 0.0)
    rec = Reconciler(hv, st, unreachable, tmp_path / "instances", owner="node-1",
                     stop_grace_s=1, ledger=ledger)
    desired = DesiredState(node_id="n", generation=1, vms=[vm("aaaa-1")])
    rec.apply(desired)
    assert rec.wait_idle(10)
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.PROVISIONING and obs.failed_power_seq is None
    assert obs.error == "retrying: Ceph cluster unreachable"
    rec.apply(desired)  # before the retry delay: not tried again
    assert rec.wait_idle(10) and len(tries) == 1
    clock.now += 30
    rec.apply(desired)
    assert rec.wait_idle(10) and len(tries) == 2
    assert rec.observe()[0].state is ObservedVmState.PROVISIONING
    # given up once the failure lasted past the give-up point
    clock.now += 300
    rec.apply(desired)
    assert rec.wait_idle(10) and len(tries) == 3
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.ERROR and obs.failed_power_seq == 1
    assert hv.vms == {} and st.disks == set()
    [vm_failure, image_failure] = sorted(rec.report_failures(), key=lambda f: f.kind,
                                         reverse=True)
    assert (vm_failure.kind, vm_failure.object_id, vm_failure.final) == ("vm", "aaaa-1", True)
    assert (image_failure.kind, image_failure.object_id) == ("image", "img")
    assert image_failure.message == "Ceph cluster unreachable" and image_failure.attempts == 3


def test_deleted_images_leave_node_storage_once_unused(
        parts: tuple[Reconciler, FakeHypervisor, FakeStorage]) -> None:
    rec, _hv, st = parts
    st.images = {"old": b"x", "busy": b"y", "kept": b"z"}
    st.in_use = {"busy"}
    rec.apply(DesiredState(node_id="n", generation=1, vms=[], retired_images=["old", "busy"]))
    assert rec.wait_idle(10)
    assert set(st.images) == {"busy", "kept"}
    assert rec.report_failures() == []  # kept while a disk is made from it: no failure
    st.in_use = set()
    rec.apply(DesiredState(node_id="n", generation=2, vms=[], retired_images=["old", "busy"]))
    assert rec.wait_idle(10)
    assert set(st.images) == {"kept"}


class FakeNetwork:
    """Records what the keeper asks of a network driver."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def ensure_network(self, net: DesiredNetwork, underlay_ip: str | None) -> None:
        self.calls.append(f"ensure:{net.id}:{underlay_ip}")

    def remove_network(self, network_id: str) -> None:
        self.calls.append(f"remove:{network_id}")


def test_vm_ports_become_nics_and_network_config(tmp_path: Path) -> None:
    hv, st, net = FakeHypervisor(), FakeStorage(tmp_path / "disks"), FakeNetwork()
    keeper = NetworkKeeper(net, "198.18.0.1", tmp_path / "networks.json",  # type: ignore[arg-type]
                           FakeFirewall())  # type: ignore[arg-type]
    rec = Reconciler(hv, st, _image_source, tmp_path / "instances", owner="node-1",
                     stop_grace_s=1, networks=keeper, ledger=keeper.ledger)
    network = DesiredNetwork(id="net-1", name="t", kind=NetworkKind.TENANT, mtu=1450, vni=1000)
    port = DesiredPort(id="port-1", network_id="net-1", mac="52:54:00:00:00:01",
                       addresses=["10.0.0.5/24"], gateways=["10.0.0.1"], mtu=1450)
    with_port = vm("aaaa-1").model_copy(update={"ports": [port]})
    rec.apply(DesiredState(node_id="n", generation=1, vms=[with_port], networks=[network]))
    assert rec.wait_idle(10)
    assert net.calls == ["ensure:net-1:198.18.0.1"]
    [nic] = hv.specs["aaaa-1"].nics
    assert nic.mac == port.mac and nic.bridge == bridge_name("net-1") and nic.mtu == 1450
    assert len(nic.device) <= 15
    iso = pycdlib.PyCdlib()
    iso.open(str(rec.vm_dir("aaaa-1") / "seed.iso"))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path="/network-config")
        assert json.loads(out.getvalue())["ethernets"]["eth0"]["addresses"] == ["10.0.0.5/24"]
    finally:
        iso.close()
    # the network goes once no VM needs it; a network this agent never made is left alone
    net.calls.clear()
    rec.apply(DesiredState(node_id="n", generation=2, vms=[]))
    assert rec.wait_idle(10)
    assert net.calls == ["remove:net-1"]
    net.calls.clear()
    rec.apply(DesiredState(node_id="n", generation=3, vms=[]))
    assert net.calls == []


class FakeFirewall:
    def __init__(self) -> None:
        self.applied: list[tuple[list[str], list[str]]] = []
        self.removed = 0

    def apply(self, ports: list[PortFilter], groups: dict[str, DesiredSecurityGroup]) -> None:
        self.applied.append(([p.tap for p in ports], sorted(groups)))

    def remove(self) -> None:
        self.removed += 1


def test_security_groups_are_applied_once_per_change(tmp_path: Path) -> None:
    fw = FakeFirewall()
    keeper = NetworkKeeper(FakeNetwork(), None, tmp_path / "n.json", fw)  # type: ignore[arg-type]
    group = DesiredSecurityGroup(id="g1", name="default", rules=[
        SecurityRule(direction="ingress", remote_group="g1")], member_addresses=["10.0.0.5"])
    port = DesiredPort(id="port-1", network_id="net-1", mac="52:54:00:00:00:01",
                       addresses=["10.0.0.5/24"], mtu=1450, security_groups=["g1"])
    desired = DesiredState(node_id="n", generation=1,
                           vms=[vm("aaaa-1").model_copy(update={"ports": [port]})],
                           security_groups=[group])
    keeper.apply_security_groups(desired)
    keeper.apply_security_groups(desired)  # unchanged: nothing sent again
    assert fw.applied == [([tap_name("port-1")], ["g1"])]
    wider = group.model_copy(update={"rules": [*group.rules, SecurityRule(
        direction="ingress", protocol="tcp", port_min=80, port_max=80,
        remote_cidr="0.0.0.0/0")]})
    keeper.apply_security_groups(desired.model_copy(update={"security_groups": [wider]}))
    assert len(fw.applied) == 2
    keeper.apply_security_groups(DesiredState(node_id="n", generation=2, vms=[]))
    assert fw.removed == 1


class BrokenFirewall(FakeFirewall):
    """A firewall whose rules the kernel refuses; isolating ports still works."""

    def __init__(self) -> None:
        super().__init__()
        self.isolated: list[list[str]] = []

    def apply(self, ports: list[PortFilter], groups: dict[str, DesiredSecurityGroup]) -> None:
        raise FirewallError("bridged traffic does not reach nftables' inet hooks: load "
                            "br_netfilter")

    def isolate(self, taps: list[str]) -> None:
        self.isolated.append(taps)


def filtered_vm(vm_id: str, port_id: str = "port-1") -> DesiredVm:
    port = DesiredPort(id=port_id, network_id="net-1", mac="52:54:00:00:00:01",
                       addresses=["10.0.0.5/24"], mtu=1450, security_groups=["g1"])
    return vm(vm_id).model_copy(update={"ports": [port]})


GROUP = DesiredSecurityGroup(id="g1", name="default", rules=[
    SecurityRule(direction="ingress", remote_group="g1")], member_addresses=["10.0.0.5"])
NET = DesiredNetwork(id="net-1", name="lan", kind=NetworkKind.TENANT, mtu=1450, vni=1000)


def test_security_groups_that_cannot_be_applied_fail_closed_and_are_reported(
        tmp_path: Path) -> None:
    hv, st, fw = FakeHypervisor(), FakeStorage(tmp_path / "disks"), BrokenFirewall()
    keeper = NetworkKeeper(FakeNetwork(), "198.18.0.1", tmp_path / "n.json", fw)  # type: ignore[arg-type]
    rec = Reconciler(hv, st, _image_source, tmp_path / "instances", owner="node-1",
                     stop_grace_s=1, networks=keeper, ledger=keeper.ledger)
    rec.apply(DesiredState(node_id="n", generation=4, vms=[filtered_vm("aaaa-1")],
                           networks=[NET], security_groups=[GROUP]))
    assert rec.wait_idle(10)
    # the VM is not started unfiltered, its port passes nothing, the generation is not applied
    assert "start:aaaa" not in hv.calls and not any(o.running for o in hv.vms.values())
    assert fw.isolated == [[tap_name("port-1")]]
    assert rec.applied_generation == -1
    # the firewall gave up (not retryable): so does the start asked for, with its cause
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.ERROR and obs.failed_power_seq == 1
    assert "the firewall of its ports (security groups, anti-spoofing) is not in force" \
        in (obs.error or "")
    assert "br_netfilter" in (obs.error or "")
    [firewall] = rec.report_failures()  # the firewall's failure, none of the VM's own
    assert (firewall.kind, firewall.object_id) == ("firewall", "security-groups")
    assert "br_netfilter" in firewall.message and "isolated" in firewall.message
    assert not firewall.retryable and firewall.final


def test_a_port_without_groups_is_not_started_unguarded_either(tmp_path: Path) -> None:
    # the anti-spoofing guard is a security control too: an unfiltered port once started
    # whatever the firewall did
    hv, st, fw = FakeHypervisor(), FakeStorage(tmp_path / "disks"), BrokenFirewall()
    keeper = NetworkKeeper(FakeNetwork(), "198.18.0.1", tmp_path / "n.json", fw)  # type: ignore[arg-type]
    rec = Reconciler(hv, st, _image_source, tmp_path / "instances", owner="node-1",
                     stop_grace_s=1, networks=keeper, ledger=keeper.ledger)
    unfiltered = vm("aaaa-1").model_copy(update={"ports": [DesiredPort(
        id="port-1", network_id="net-1", mac="52:54:00:00:00:01", addresses=["10.0.0.5/24"],
        mtu=1450)]})
    rec.apply(DesiredState(node_id="n", generation=1, vms=[unfiltered], networks=[NET]))
    assert rec.wait_idle(10)
    assert "start:aaaa" not in hv.calls and fw.isolated == [[tap_name("port-1")]]
    [obs] = rec.observe()
    assert "anti-spoofing) is not in force" in (obs.error or "")


def test_a_vm_on_a_failed_network_shows_the_network_error_and_starts_once_it_is_fixed(
        tmp_path: Path) -> None:
    class TakenVni(FakeNetwork):
        def ensure_network(self, net: DesiredNetwork, underlay_ip: str | None) -> None:
            super().ensure_network(net, underlay_ip)
            if net.vni == 1000:
                raise NetworkError(f"tenant network {net.id}: VNI 1000 is already used by "
                                   "device vx-other on this node")

    hv, st, clock = FakeHypervisor(), FakeStorage(tmp_path / "disks"), Clock()
    ledger = FailureLedger(RetryPolicy(base_s=30, cap_s=30, give_up_after_s=300),
                           clock=clock, rand=lambda: 0.0)
    keeper = NetworkKeeper(TakenVni(), "198.18.0.1", tmp_path / "n.json",  # type: ignore[arg-type]
                           FakeFirewall(), ledger=ledger)  # type: ignore[arg-type]
    rec = Reconciler(hv, st, _image_source, tmp_path / "instances", owner="node-1",
                     stop_grace_s=1, networks=keeper, ledger=ledger)
    on_net = vm("aaaa-1").model_copy(update={"ports": [DesiredPort(
        id="port-1", network_id="net-1", mac="52:54:00:00:00:01",
        addresses=["10.0.0.5/24"], mtu=1450)]})
    for _ in range(12):  # six minutes of passes, one every 30 s
        rec.apply(DesiredState(node_id="n", generation=2, vms=[on_net], networks=[NET]))
        assert rec.wait_idle(10)
        clock.now += 30
    assert hv.vms == {} and rec.applied_generation == -1
    # the network gave up (not retryable): so does the start asked for, with its cause
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.ERROR and obs.failed_power_seq == 1
    assert obs.error == ("not started: network lan (net-1) is not ready on this node: "
                         "tenant network net-1: VNI 1000 is already used by device vx-other "
                         "on this node")
    [net_failure] = rec.report_failures()  # the network's, none of the VM's own
    assert (net_failure.kind, net_failure.object_id, net_failure.action) == (
        "network", "net-1", "ensure")
    assert net_failure.final and not net_failure.retryable
    # the operator gives the network another VNI: the VM starts, no new power action needed
    fixed = NET.model_copy(update={"vni": 1001})
    rec.apply(DesiredState(node_id="n", generation=3, vms=[on_net], networks=[fixed]))
    assert rec.wait_idle(10)
    assert hv.vms["aaaa-1"].running and rec.report_failures() == []
    assert rec.observe()[0].state is ObservedVmState.RUNNING


def test_failed_flatten_image_delete_and_volume_actions_are_reported(tmp_path: Path) -> None:
    class CloneStorage(FakeStorage):
        def root_disk_is_clone(self, vm_id: str) -> bool:
            return True  # and the base class cannot flatten it

    hv, st = FakeHypervisor(), CloneStorage(tmp_path / "disks")
    rec = Reconciler(hv, st, _image_source, tmp_path / "instances", owner="node-1",
                     stop_grace_s=1)
    hv.vms["aaaa-1"] = VmObservation("aaaa-1", "vauban-x", True, 1, None, MINE)
    st.images, st.in_use = {"old": b"x"}, {"old"}
    volume = DesiredVolume(id="vol-1", name="data", pool="p", size_gib=1, present=True)
    rec.apply(DesiredState(
        node_id="n", generation=3, retired_images=["old"], volumes=[volume],
        vms=[vm("aaaa-1").model_copy(update={"flatten_root": True})]))
    assert rec.wait_idle(10)
    first = rec.report_failures()
    failures = {(f.kind, f.object_id, f.action): f.message for f in first}
    assert failures == {
        ("vm", "aaaa-1", "flatten"): "fake storage cannot flatten root disks",
        ("volume", "vol-1", "converge"): "this node's storage has no volumes",
    }
    rec.apply(DesiredState(
        node_id="n", generation=4, retired_images=["old"], volumes=[volume],
        vms=[vm("aaaa-1").model_copy(update={"flatten_root": True})]))
    assert rec.wait_idle(10)
    assert rec.report_failures() == first  # given up on, nothing new: the same report
    [obs] = rec.observe()
    assert obs.error == "fake storage cannot flatten root disks" and obs.root_cloned


def _ledger(clock: Clock) -> FailureLedger:
    return FailureLedger(RetryPolicy(base_s=30, cap_s=30, give_up_after_s=300),
                         clock=clock, rand=lambda: 0.0)


class BusyFirewall(FakeFirewall):
    """nftables busy (retryable) while `busy`; isolating ports still works."""

    def __init__(self) -> None:
        super().__init__()
        self.busy = True
        self.isolated: list[list[str]] = []

    def apply(self, ports: list[PortFilter], groups: dict[str, DesiredSecurityGroup]) -> None:
        if self.busy:
            raise FirewallError("nftables: resource busy", retryable=True)
        super().apply(ports, groups)

    def isolate(self, taps: list[str]) -> None:
        self.isolated.append(taps)


def test_a_vm_waiting_for_its_security_groups_is_not_given_up_on(tmp_path: Path) -> None:
    hv, st, fw, clock = FakeHypervisor(), FakeStorage(tmp_path / "disks"), BusyFirewall(), Clock()
    ledger = _ledger(clock)
    keeper = NetworkKeeper(FakeNetwork(), None, tmp_path / "n.json", fw,  # type: ignore[arg-type]
                           ledger=ledger)
    rec = Reconciler(hv, st, _image_source, tmp_path / "instances", owner="node-1",
                     stop_grace_s=1, networks=keeper, ledger=ledger)
    group = GROUP
    for step in range(13):  # six and a half minutes of passes, one every 30 s
        if step == 7:  # a rule added meanwhile: the firewall's request starts afresh
            group = GROUP.model_copy(update={"rules": [*GROUP.rules, SecurityRule(
                direction="ingress", protocol="tcp", port_min=22, port_max=22,
                remote_cidr="0.0.0.0/0")]})
        rec.apply(DesiredState(node_id="n", generation=4, vms=[filtered_vm("aaaa-1")],
                               networks=[NET], security_groups=[group]))
        assert rec.wait_idle(10)
        clock.now += 30
    assert hv.vms == {}  # never started unfiltered
    [obs] = rec.observe()
    assert obs.state is ObservedVmState.PROVISIONING and obs.failed_power_seq is None
    assert obs.error == ("waiting: the firewall of its ports (security groups, anti-spoofing) "
                         "is not in force on this node: security groups and anti-spoofing not "
                         "applied: nftables: resource busy; their ports are isolated (no "
                         "traffic) until they are")
    assert [(f.kind, f.final) for f in rec.report_failures()] == [("firewall", False)]
    fw.busy = False  # the first pass after the rules apply starts it
    rec.apply(DesiredState(node_id="n", generation=4, vms=[filtered_vm("aaaa-1")],
                           networks=[NET], security_groups=[group]))
    assert rec.wait_idle(10)
    assert fw.applied and hv.vms["aaaa-1"].running and rec.report_failures() == []
    assert rec.applied_generation == 4


def test_a_failed_image_delete_is_retried_by_the_policy(tmp_path: Path) -> None:
    class FailingDelete(FakeStorage):
        tries = 0

        def delete_image(self, image_id: str) -> None:
            self.tries += 1
            raise StorageError("rbd: I/O error", retryable=True)

    st, clock = FailingDelete(tmp_path / "disks"), Clock()
    rec = Reconciler(FakeHypervisor(), st, _image_source, tmp_path / "instances",
                     owner="node-1", stop_grace_s=1, ledger=_ledger(clock))
    desired = DesiredState(node_id="n", generation=1, vms=[], retired_images=["old"])
    rec.apply(desired)
    assert rec.wait_idle(10)
    [failure] = rec.report_failures()
    assert (failure.kind, failure.action, failure.final) == ("image", "delete", False)
    rec.apply(desired)  # before its retry delay: not tried again, reported the same
    assert rec.wait_idle(10)
    assert st.tries == 1 and rec.report_failures() == [failure]
    clock.now += 30
    rec.apply(desired)
    assert rec.wait_idle(10)
    assert st.tries == 2 and rec.report_failures()[0].attempts == 2
    # no longer a deleted image this node must drop: not its failure any more
    rec.apply(DesiredState(node_id="n", generation=2, vms=[]))
    assert rec.wait_idle(10)
    assert rec.report_failures() == []


def test_a_failed_removal_is_not_retried_once_final(
        parts: tuple[Reconciler, FakeHypervisor, FakeStorage]) -> None:
    rec, hv, _st = parts
    hv.vms["cccc-3"] = VmObservation("cccc-3", "vauban-x", True, 1, None, MINE)
    hv.fail_on = {"undefine"}
    for generation in (1, 2):
        rec.apply(DesiredState(node_id="n", generation=generation, vms=[]))
        assert rec.wait_idle(10)
    assert hv.calls == ["undefine:cccc"]  # not retryable: tried once
    [failure] = rec.report_failures()
    assert (failure.kind, failure.action, failure.message) == ("vm", "remove", "undefine failed")
    assert failure.final and failure.next_retry_at is None
    assert rec.applied_generation == -1


def test_a_failed_network_removal_is_retried_by_the_policy(tmp_path: Path) -> None:
    class StuckNetwork(FakeNetwork):
        def remove_network(self, network_id: str) -> None:
            super().remove_network(network_id)
            raise NetworkError("bridge busy", retryable=True)

    net, clock = StuckNetwork(), Clock()
    ledger = _ledger(clock)
    keeper = NetworkKeeper(net, None, tmp_path / "n.json", ledger=ledger)  # type: ignore[arg-type]
    (tmp_path / "n.json").write_text(json.dumps(["net-1"]))  # made by this agent before
    desired = DesiredState(node_id="n", generation=1, vms=[])
    assert not keeper.apply(desired.networks)
    [failure] = ledger.report()
    assert (failure.kind, failure.action, failure.final) == ("network", "remove", False)
    assert not keeper.apply(desired.networks)  # before its retry delay: not tried again
    assert net.calls == ["remove:net-1"] and ledger.report() == [failure]
    clock.now += 30
    keeper.apply(desired.networks)
    assert net.calls == ["remove:net-1"] * 2
    # wanted again: the removal that failed no longer applies
    assert keeper.apply([NET]) and ledger.report() == []


def test_the_network_keeper_must_share_the_reconcilers_ledger(tmp_path: Path) -> None:
    theirs = FailureLedger()
    keeper = NetworkKeeper(FakeNetwork(), None, tmp_path / "n.json",  # type: ignore[arg-type]
                           ledger=theirs)
    with pytest.raises(ValueError, match="one ledger"):
        Reconciler(FakeHypervisor(), FakeStorage(tmp_path / "d"), _image_source,
                   tmp_path / "instances", owner="node-1", stop_grace_s=1, networks=keeper,
                   ledger=FailureLedger())
    assert keeper.ledger is theirs


def test_the_failure_of_a_vm_no_longer_wanted_is_forgotten(
        parts: tuple[Reconciler, FakeHypervisor, FakeStorage]) -> None:
    rec, hv, _st = parts
    hv.fail_on = {"define"}
    rec.apply(DesiredState(node_id="n", generation=1, vms=[vm("aaaa-1")]))
    assert rec.wait_idle(10)
    assert [(f.object_id, f.final) for f in rec.report_failures()] == [("aaaa-1", True)]
    rec.apply(DesiredState(node_id="n", generation=2, vms=[]))  # the operator deleted it
    assert rec.wait_idle(10)
    assert rec.report_failures() == [] and rec.observe() == []
