"""What a migration asks of libvirt (flags, parameters) and how its progress is read: pure
parts of agent/drivers/hypervisor/libvirt/migrate.py. (Real migrations: the lab tests.)"""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from agent.drivers.hypervisor.base import HypervisorError, RbdSource
from agent.drivers.hypervisor.libvirt.config import DiskConfig, InstanceMetadata
from agent.drivers.hypervisor.libvirt.migrate import (
    MIGRATE_FLAGS,
    disks_to_copy,
    migrate,
    migration_flags,
    migration_params,
    progress_of,
)
from agent.protocol import IncomingMigration, MigrationOrder

GIB = 2**30


def order(copy_disks: bool = False, bandwidth: int = 0) -> MigrationOrder:
    return MigrationOrder(seq=1, target_node_id="node-2", target_address="10.0.0.2",
                          bandwidth_mib_s=bandwidth, max_downtime_ms=300, timeout_s=600,
                          copy_disks=copy_disks)


def domain(*disks: DiskConfig) -> str:
    return f"<domain><devices>{''.join(d.to_xml() for d in disks)}</devices></domain>"


ROOT = DiskConfig(Path("/var/lib/vauban/disks/vm/root.qcow2"), "qcow2", "vda")
SEED = DiskConfig(Path("/var/lib/vauban/instances/vm/seed.iso"), "raw", "vdb", readonly=True)


def test_shared_disks_move_with_the_flags_and_parameters_as_before() -> None:
    xml = domain(ROOT, SEED)
    assert migration_flags(order()) == MIGRATE_FLAGS
    assert not MIGRATE_FLAGS & (libvirt.VIR_MIGRATE_NON_SHARED_INC
                                | libvirt.VIR_MIGRATE_NON_SHARED_DISK)
    params = migration_params(order(), xml, xml)
    assert libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS not in params
    assert params[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://10.0.0.2"


def test_copied_disks_are_the_overlays_own_data_encrypted_like_the_memory() -> None:
    flags = migration_flags(order(copy_disks=True))
    assert flags & libvirt.VIR_MIGRATE_NON_SHARED_INC  # the backing image is on both nodes
    assert not flags & libvirt.VIR_MIGRATE_NON_SHARED_DISK  # never the whole chain
    assert flags & libvirt.VIR_MIGRATE_TLS and flags & libvirt.VIR_MIGRATE_LIVE


def test_only_the_writable_root_disk_is_copied_not_the_read_only_seed() -> None:
    xml = domain(ROOT, SEED)
    params = migration_params(order(copy_disks=True), xml, xml)
    assert params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] == ["vda"]
    scsi = domain(DiskConfig(ROOT.source, "qcow2", "sda", bus="scsi"),
                  DiskConfig(SEED.source, "raw", "sdb", readonly=True, bus="scsi"))
    assert disks_to_copy(scsi) == ["sda"]


def test_a_shared_storage_disk_is_never_copied() -> None:
    rbd = DiskConfig(RbdSource(pool="vauban", image="vol", monitors=(("10.0.0.9", 6789),),
                               user="vauban", secret_usage="vauban-ceph"), "raw", "vdc")
    assert disks_to_copy(domain(ROOT, SEED, rbd)) == ["vda"]


def test_a_disk_of_a_kind_not_ours_fails_in_words() -> None:
    odd = ("<domain><devices><disk type='block' device='disk'><driver name='qemu' "
           "type='raw'/><source dev='/dev/sdz'/><target dev='vdz'/></disk></devices></domain>")
    with pytest.raises(HypervisorError, match="cannot be copied"):
        disks_to_copy(odd)


def test_memory_progress_is_read_as_before() -> None:
    assert progress_of({}) is None
    assert progress_of({"data_total": 200, "data_processed": 50}) == 25
    assert progress_of({"memory_total": 100, "memory_processed": 300}) == 99  # re-sent pages


@pytest.mark.parametrize(("stats", "percent"), [
    # the disk is mirrored first: the memory to come counts as the guest's size
    ({"disk_total": 3 * GIB, "disk_processed": 0, "data_total": 3 * GIB}, 0),
    ({"disk_total": 3 * GIB, "disk_processed": 3 * GIB // 2, "data_total": 3 * GIB,
      "data_processed": 3 * GIB // 2}, 37),
    ({"disk_total": 3 * GIB, "disk_processed": 3 * GIB, "data_total": 3 * GIB,
      "data_processed": 3 * GIB}, 75),
    # then the memory, its own total known
    ({"disk_total": 3 * GIB, "disk_processed": 3 * GIB, "memory_total": GIB,
      "memory_processed": GIB // 2}, 87),
    ({"disk_total": 3 * GIB, "disk_processed": 3 * GIB, "memory_total": GIB,
      "memory_processed": 2 * GIB}, 99),
])
def test_progress_with_disks_counts_disk_and_memory_and_never_falls_back(
        stats: dict[str, object], percent: int) -> None:
    assert progress_of(stats, memory_bytes=GIB) == percent


def test_copy_disks_is_on_the_wire_only_when_set() -> None:
    """An agent of protocol 7 built before copy_disks reads an order for shared disks as
    ever (it refuses unknown fields); the field reads back as sent."""
    before = {"seq": 1, "target_node_id": "node-2", "target_address": "10.0.0.2",
              "bandwidth_mib_s": 0, "max_downtime_ms": 300, "timeout_s": 600}
    assert order().model_dump(mode="json") == before
    assert MigrationOrder.model_validate(before) == order()
    copied = order(copy_disks=True)
    assert copied.model_dump(mode="json") == {**before, "copy_disks": True}
    assert MigrationOrder.model_validate_json(copied.model_dump_json()) == copied
    incoming = IncomingMigration(seq=1, source_node_id="node-1")
    assert incoming.model_dump_json() == '{"seq":1,"source_node_id":"node-1"}'
    assert IncomingMigration(seq=1, source_node_id="node-1", copy_disks=True) \
        .model_dump()["copy_disks"] is True


def test_a_cold_move_is_not_live_and_leaves_the_guest_paused_there() -> None:
    cold = MigrationOrder(seq=1, target_node_id="node-2", target_address="10.0.0.2",
                          bandwidth_mib_s=0, max_downtime_ms=300, timeout_s=600,
                          copy_disks=True, cold=True)
    flags = migration_flags(cold)
    assert not flags & libvirt.VIR_MIGRATE_LIVE and flags & libvirt.VIR_MIGRATE_PAUSED
    assert flags & libvirt.VIR_MIGRATE_NON_SHARED_INC and flags & libvirt.VIR_MIGRATE_TLS
    assert not migration_flags(order()) & libvirt.VIR_MIGRATE_PAUSED
    assert "cold" not in order().model_dump(mode="json")  # older agents read it as ever


class StoppedDomain:
    """A stopped domain whose migration fails: records what is done to it."""

    def __init__(self) -> None:
        self.active = False
        self.calls: list[str] = []

    def isActive(self) -> bool:  # noqa: N802 (libvirt's names)
        return self.active

    def createWithFlags(self, flags: int) -> None:  # noqa: N802
        self.calls.append(f"start paused={bool(flags & libvirt.VIR_DOMAIN_START_PAUSED)}")
        self.active = True

    def destroy(self) -> None:
        self.calls.append("destroy")
        self.active = False

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802
        ours = InstanceMetadata("aaaa-1", 1, {"vauban.owner": "node-1"}).to_xml()
        return domain(ROOT, SEED).replace("<devices>", f"<metadata>{ours}</metadata><devices>")

    def migrateSetMaxDowntime(self, ms: int, flags: int) -> None:  # noqa: N802
        pass

    def maxMemory(self) -> int:  # noqa: N802
        return 262144

    def migrateToURI3(self, uri: str, params: dict[str, object], flags: int) -> None:  # noqa: N802
        self.calls.append(f"migrate live={bool(flags & libvirt.VIR_MIGRATE_LIVE)}")
        raise libvirt.libvirtError("Unable to connect to server")

    def jobStats(self, flags: int = 0) -> dict[str, object]:  # noqa: N802
        return {}

    def UUIDString(self) -> str:  # noqa: N802
        return "aaaa-1"

    def name(self) -> str:
        return "vauban-vm"


def test_a_failed_cold_move_turns_the_vm_off_again_and_says_it_stays_stopped() -> None:
    dom = StoppedDomain()
    cold = order(copy_disks=True).model_copy(update={"cold": True})
    with pytest.raises(HypervisorError, match="the VM stays stopped here"):
        migrate(dom, cold, {}, lambda _p: None)  # type: ignore[arg-type]
    assert dom.calls == ["start paused=True", "migrate live=False", "destroy"]
    assert not dom.active
    with pytest.raises(HypervisorError, match="only a running VM moves live"):
        migrate(dom, order(), {}, lambda _p: None)  # type: ignore[arg-type]
