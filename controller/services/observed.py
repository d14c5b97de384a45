"""What agents report: node inventory, the observed state of VMs, and the operations it ends."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import NodeStatus, ObservedVm, ObservedVmState
from controller.db.models import Instance, InstanceTombstone, Node, Operation
from controller.services import (
    audit,
    desired,
    migrations,
    networks,
    operations,
    volume_observed,
)


def ingest(db: Session, node: Node, status: NodeStatus) -> bool:
    """Record a node's report and settle the operations it decides.

    Returns True if the node's desired state changed (the caller notifies).
    """
    inv = status.inventory
    node.cpus, node.memory_mib, node.kvm_usable = inv.cpus, inv.memory_mib, inv.kvm_usable
    node.inventory = inv.model_dump(mode="json")
    node.applied_generation = status.applied_generation
    node.last_seen_at = datetime.now(UTC)
    node.storage_status = status.storage.model_dump(mode="json") if status.storage else None
    node.failures = [f.model_dump(mode="json") for f in status.failures]
    if node.self_fenced_at != status.self_fenced_at:  # rarely changes: no write otherwise
        node.self_fenced_at = status.self_fenced_at
    seen = {vm.id: vm for vm in status.vms}
    instances = {
        i.id: i for i in db.scalars(select(Instance).where(Instance.node_id == node.id))
    }
    for inst in instances.values():
        vm = seen.get(inst.id)
        if vm is not None:
            _observe(inst, vm)
        if inst.migration_target_node_id is not None:
            migrations.observe_source(db, inst, vm)
    migrations.observe_target(db, node, seen)
    pending = db.scalars(
        select(Operation).where(
            Operation.node_id == node.id, Operation.state.in_(operations.ACTIVE)
        )
    )
    for op in pending:
        if not op.kind.startswith("instance.") or op.kind == migrations.KIND:
            continue  # a migration is settled by both its nodes' reports (above)
        _settle(db, op, instances.get(op.target_id), seen.get(op.target_id))
    if status.volumes is not None:  # unknown is not absent: nothing is settled on it
        volume_observed.ingest(db, node, status.volumes)
    return _adopt_guest_poweroffs(db, node, instances.values())


def _observe(inst: Instance, vm: ObservedVm) -> None:
    if vm.state in (ObservedVmState.RUNNING, ObservedVmState.STOPPED) and not inst.disk_made:
        inst.disk_made = True
    inst.observed_state = vm.state.value
    inst.observed_power_seq = vm.power_seq
    inst.observed_error = vm.error
    inst.console_log = vm.console_log
    if vm.hypervisor_uuid is not None and inst.hypervisor_uuid != vm.hypervisor_uuid:
        inst.hypervisor_uuid = vm.hypervisor_uuid  # an XCP-ng VM's uuid is XAPI's, not ours
    guest = vm.guest.model_dump(mode="json") if vm.guest is not None else None
    if inst.observed_guest != guest:  # most reports change nothing: no write then
        inst.observed_guest = guest


def _settle(db: Session, op: Operation, inst: Instance | None, vm: ObservedVm | None) -> None:
    if op.kind == "instance.delete":
        # gone from the node's report: nothing of it is left there
        if vm is None:
            operations.finish(op)
            if inst is not None:
                audit.record(db, op.requested_by, "instance.delete", f"instance/{inst.id}",
                             "succeeded", name=inst.name)
                networks.delete_instance_ports(db, inst)
                # its disks go with whatever of it the node still finds, even much later
                db.add(InstanceTombstone(id=inst.id, node_id=inst.node_id))
                db.delete(inst)
        return
    if inst is None or vm is None:
        return
    if vm.state is ObservedVmState.ERROR and (vm.failed_power_seq or 0) >= op.expect_power_seq:
        operations.finish(op, error=vm.error or "the node reported an error")
        return
    if op.kind == "instance.flatten":
        if vm.root_cloned is False:
            operations.finish(op)
        return
    if vm.state is ObservedVmState.PROVISIONING:
        op.state, op.progress = "running", max(op.progress, vm.progress)
        return
    if vm.power_seq < op.expect_power_seq:
        return
    wanted = ObservedVmState.RUNNING if inst.desired_power == "running" else ObservedVmState.STOPPED
    if vm.state is wanted:
        operations.finish(op)


def _adopt_guest_poweroffs(db: Session, node: Node, instances: Iterable[Instance]) -> bool:
    """A VM its guest powered off stays off: desired follows observed (like a power button).

    Only when the node applied the latest power action, so an operator's start in
    flight is never undone.
    """
    changed = False
    for inst in instances:
        if (
            inst.desired_power == "running"
            and not inst.deleting
            and inst.migration_target_node_id is None
            and inst.observed_state == ObservedVmState.STOPPED.value
            and inst.observed_power_seq == inst.power_seq
            and not operations.active_for(db, inst.id)
        ):
            inst.desired_power = "stopped"
            desired.bump(node)
            changed = True
            audit.record(db, "guest", "instance.powered-off", f"instance/{inst.id}",
                         "observed", name=inst.name)
    return changed
