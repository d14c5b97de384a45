"""VM lifecycle as the operator sees it: create (schedule), start, stop, delete."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, case, exists, func, select
from sqlalchemy.orm import Session

from agent.protocol import PowerMode
from controller.authz import Perm
from controller.config import ControllerConfig
from controller.db.models import Image, Instance, Node, Operation, SecurityGroup
from controller.errors import Conflict, Forbidden, InvalidInput
from controller.schemas import InstanceCreate
from controller.services import (
    audit,
    desired,
    gpus,
    migrations,
    networks,
    nodes,
    operations,
    quotas,
    scheduler,
    tenancy,
    volumes,
)
from controller.services import security_groups as secgroups

GIB = 1024**3


def policy(config: ControllerConfig) -> scheduler.Policy:
    return scheduler.Policy(
        cpu_allocation_ratio=config.cpu_allocation_ratio,
        reserved_host_memory_mib=config.reserved_host_memory_mib,
        node_down_after_s=config.node_down_after_s,
        disk_allocation_ratio=config.disk_allocation_ratio,
        storage=config.storage,
        root_pool=config.ceph_pool,
    )


def find(db: Session, ref: str) -> Instance:
    """An instance by id or name among the caller's (see tenancy.find), or NotFound."""
    return tenancy.find(db, Instance, ref, "instance")


def create(db: Session, actor: str, body: InstanceCreate,
           config: ControllerConfig) -> tuple[Instance, Operation]:
    """Validate, place and record a new VM; the caller commits, then notifies the node.

    Raises before adding anything when the name is taken, the image or a network is
    unknown, the disk is too small or no node fits; a refusal of a port (its address)
    comes after, but before the caller commits: a refusal leaves nothing behind.
    """
    project = quotas.lock(db, tenancy.target_project(db, body.project).id)
    if db.scalar(select(Instance.id).where(Instance.project_id == project.id,
                                           Instance.name == body.name)) is not None:
        taken = f"an instance named '{body.name}' already exists in project '{project.name}'"
        raise Conflict(taken, errors=[{"field": "name", "message": taken}])
    image = tenancy.find_input(db, Image, body.image, "image", project.id, shared=True,
                               hint=" (see 'vauban image list')")
    _check_disk(body.root_disk_gib, image)
    if body.ha:
        _check_ha(config, bool(body.gpus or body.vgpu))
    _check_firmware(body, image)
    attachments = networks.resolve_attachments(db, body.networks, project.id)
    if body.security_groups is not None and not body.networks:
        raise InvalidInput("security_groups apply to the VM's NICs; give networks too")
    groups = secgroups.resolve(db, body.security_groups, project.id) if body.networks else []
    pinned = _pinned_node(db, body.node)
    if pinned is not None and scheduler.is_xapi_pool(db.get_one(Node, pinned)):
        _check_pool_vm(db.get_one(Node, pinned), body, attachments, groups)
    # lock the candidate rows so two concurrent creates cannot both take the last capacity
    candidates = list(db.scalars(select(Node).order_by(Node.name).with_for_update()))
    wants = tuple(gpus.GpuWant(g.model, g.count) for g in body.gpus)
    pol = policy(config)
    region = scheduler.snapshot(db, candidates, pol)
    if wants or body.vgpu:
        gpus.check_known([g for held in region.gpus.values() for g in held], wants, body.vgpu)
    request = scheduler.PlacementRequest(body.vcpus, body.memory_mib, pinned, wants, body.vgpu,
                                         disk_gib=root_disk_gib_of(body.root_disk_gib, image))
    placement = scheduler.place(region, request, pol, datetime.now(UTC))
    quotas.check(db, project, quotas.Ask(
        instances=1, vcpus=body.vcpus, memory_mib=body.memory_mib,
        vgpus=int(placement.vgpu is not None), storage_gib=request.disk_gib,
        public_addresses=sum(len(a.network.subnets) for a in attachments
                             if a.network.project_id is None),
        gpus=tuple(g.model for g in placement.gpus)))
    inst = Instance(
        name=body.name,
        project_id=project.id,
        node_id=placement.node_id,
        image_id=image.id,
        vcpus=body.vcpus,
        memory_mib=body.memory_mib,
        root_disk_gib=body.root_disk_gib,
        hostname=body.hostname or body.name,
        user_data=body.user_data,
        ssh_keys=body.ssh_keys,
        default_user=body.default_user,
        firmware=body.firmware,
        secure_boot=body.secure_boot,
        machine=body.machine,
        disk_bus=body.disk_bus,
        desired_power="running" if body.start else "stopped",
        ha=body.ha,
        power_seq=1,
    )
    db.add(inst)
    db.flush()
    ports = networks.attach_new_instance(db, actor, inst, attachments, groups)
    held = gpus.record(inst, placement.gpus, placement.vgpu)
    db.flush()  # the unique key on (node, address) refuses a GPU taken meanwhile
    generation = desired.bump(db.get_one(Node, placement.node_id))
    op = operations.start(db, "instance.create", inst, actor, generation)
    audit.record(db, actor, "instance.create", f"instance/{inst.id}", name=inst.name,
                 node=placement.node_name, image=image.name, vcpus=inst.vcpus,
                 memory_mib=inst.memory_mib, disk_gib=placement.disk.gib,
                 disk_pool=placement.disk.pool, ports=[p.id for p in ports], gpus=held)
    return inst, op


def _check_pool_vm(node: Node, body: InstanceCreate, attachments: list[networks.Attachment],
                   groups: list[SecurityGroup]) -> None:
    """Conflict naming what an XCP-ng pool cannot give the VM: HA (the pool's own HA
    applies), security groups (its agent runs no firewall: refused, never let through
    unfiltered), tenant networks, or a provider network not mapped to a pool network."""
    if body.ha:
        raise Conflict(f"node {node.name} is an XCP-ng pool: Vauban does not restart its "
                       "VMs elsewhere (the pool's own HA applies)")
    if groups:
        raise Conflict(f"node {node.name} is an XCP-ng pool: its agent filters no traffic, "
                       "so a VM there cannot have security groups; ask for none "
                       "(security_groups: [], vauban vm create --no-security-groups) to "
                       "accept that")
    for a in attachments:
        if a.network.kind != "provider" or not a.network.xapi_network:
            raise Conflict(f"node {node.name} is an XCP-ng pool: network {a.network.name} "
                           "is not a provider network mapped to one of its pool networks")


def _check_ha(config: ControllerConfig, gpu: bool) -> None:
    """Conflict naming why a VM cannot be restarted elsewhere when its node is lost."""
    if config.storage != "rbd":
        raise Conflict(f"HA needs shared storage: this region keeps VM disks on each node's "
                       f"local storage ({config.storage}), lost with the node")
    if gpu:
        raise Conflict("HA is not available for a VM holding a GPU: another node's GPU "
                       "is not the same device")


def set_ha(db: Session, actor: str, inst: Instance, enabled: bool,
           config: ControllerConfig) -> Instance:
    """Mark the VM (or not) for restart elsewhere when its node is lost; audited."""
    if enabled and scheduler.is_xapi_pool(inst.node):
        raise Conflict(f"instance '{inst.name}' runs in XCP-ng pool {inst.node.name}: Vauban "
                       "does not restart its VMs elsewhere (the pool's own HA applies)")
    if enabled:
        _check_ha(config, bool(inst.gpus or inst.vgpus))
    if inst.deleting:
        raise Conflict(f"instance '{inst.name}' is being deleted")
    inst.ha = enabled
    audit.record(db, actor, "instance.ha", f"instance/{inst.id}", name=inst.name,
                 enabled=enabled)
    return inst


def _pinned_node(db: Session, ref: str | None) -> str | None:
    """The node a VM is pinned to: only who runs the nodes chooses one (it names them)."""
    if ref is None:
        return None
    caller = tenancy.current()
    if caller is not None and not caller.has(Perm.NODES_WRITE):
        raise Forbidden(f"pinning a VM to a node needs the permission {Perm.NODES_WRITE} "
                        "(operator, region-admin)")
    return nodes.find(db, ref).id


def root_disk_gib_of(root_disk_gib: int | None, image: Image) -> int:
    """The root disk's size: as asked, else the image's virtual size (what the node makes)."""
    return root_disk_gib or math.ceil(image.virtual_size_bytes / GIB)


def _check_firmware(body: InstanceCreate, image: Image) -> None:
    """InvalidInput when the image cannot boot with the firmware asked for (as its
    importer said), or is not signed for Secure Boot when that is asked for."""
    boots = image.firmware.split(",")
    if body.firmware not in boots:
        why = (f"image '{image.name}' boots with {' or '.join(boots).upper()} only (as "
               f"imported); ask for firmware {boots[0]}, or import the image again with "
               f"firmware {body.firmware} if it can")
        raise InvalidInput(why, errors=[{"field": "firmware", "message": why}])
    if body.secure_boot and not image.secure_boot:
        why = (f"image '{image.name}' is not signed for Secure Boot (as imported): its "
               "firmware would refuse to boot it")
        raise InvalidInput(why, errors=[{"field": "secure_boot", "message": why}])


def _check_disk(root_disk_gib: int | None, image: Image) -> None:
    if root_disk_gib is None:
        return
    needed = max(image.min_disk_gib, math.ceil(image.virtual_size_bytes / GIB))
    if root_disk_gib < needed:
        small = (f"root_disk_gib {root_disk_gib} is smaller than image '{image.name}' needs "
                 f"({needed} GiB)")
        raise InvalidInput(small, errors=[{"field": "root_disk_gib", "message": small}])


def set_power(db: Session, actor: str, inst: Instance, power: str, *,
              force: bool = False) -> Operation:
    """Ask for the VM running or stopped; refused while another operation runs on it.

    A forced stop cuts the power at once (no ACPI grace period). After success the node's
    desired state carries the new power action (power_seq, power_mode) and an operation
    follows it; on refusal nothing changed.
    """
    _refuse_if_busy(db, inst)
    inst.desired_power = power
    mode = PowerMode.FORCE if force and power == "stopped" else PowerMode.NORMAL
    inst.power_mode = mode.value
    inst.power_seq += 1
    generation = desired.bump(inst.node)
    kind = "instance.start" if power == "running" else "instance.stop"
    op = operations.start(db, kind, inst, actor, generation)
    if mode is PowerMode.FORCE:
        audit.record(db, actor, kind, f"instance/{inst.id}", name=inst.name, force=True)
    else:
        audit.record(db, actor, kind, f"instance/{inst.id}", name=inst.name)
    return op


def reboot(db: Session, actor: str, inst: Instance, *, force: bool = False) -> Operation:
    """Restart a VM asked to run: an ACPI shutdown (forced after the grace period) and a
    start, or with `force` a hard reset. The node does it once (power_seq numbers it); a
    VM found stopped there is started. Refused for a VM asked to be stopped, and while
    another operation runs on it: then nothing changed."""
    _refuse_if_busy(db, inst)
    if inst.desired_power != "running":
        raise Conflict(f"instance '{inst.name}' is stopped; start it instead of rebooting it")
    inst.power_mode = (PowerMode.RESET if force else PowerMode.REBOOT).value
    inst.power_seq += 1
    op = operations.start(db, "instance.reboot", inst, actor, desired.bump(inst.node))
    audit.record(db, actor, "instance.reboot", f"instance/{inst.id}", name=inst.name,
                 force=force)
    return op


def _refuse_if_busy(db: Session, inst: Instance) -> None:
    if inst.deleting:
        raise Conflict(f"instance '{inst.name}' is being deleted")
    operations.refuse_if_busy(db, inst.id, f"instance '{inst.name}'")


def flatten(db: Session, actor: str, inst: Instance, storage_driver: str) -> Operation:
    """Make the VM's root disk independent of its image (Ceph copies the data live)."""
    if storage_driver != "rbd":
        raise Conflict(f"flattening needs rbd storage; this region uses {storage_driver}")
    if inst.deleting:
        raise Conflict(f"instance '{inst.name}' is being deleted")
    operations.refuse_if_busy(db, inst.id, f"instance '{inst.name}'")
    inst.flatten_root = True
    op = operations.start(db, "instance.flatten", inst, actor, desired.bump(inst.node))
    audit.record(db, actor, "instance.flatten", f"instance/{inst.id}", name=inst.name)
    return op


def delete(db: Session, actor: str, inst: Instance) -> Operation:
    """Remove the VM from its node's desired state; the record goes once the node confirms.

    Operations still running on it fail as superseded.
    """
    if inst.deleting:
        busy = [o for o in operations.active_for(db, inst.id) if o.kind == "instance.delete"]
        if busy:
            return busy[0]
    for op in operations.active_for(db, inst.id):
        operations.finish(op, error="superseded by a delete of the instance")
    inst.deleting = True
    migrations.abandon(db, inst)
    volumes.release_from_instance(db, inst)
    networks.release_instance(db, inst)
    generation = desired.bump(inst.node)
    op = operations.start(db, "instance.delete", inst, actor, generation)
    audit.record(db, actor, "instance.delete", f"instance/{inst.id}", name=inst.name)
    return op


# an active operation of these kinds names the VM's state, the first found winning
BUSY_WORDS = (("instance.create", "creating"), ("instance.start", "starting"),
              ("instance.stop", "stopping"), ("instance.reboot", "rebooting"),
              ("instance.migrate", "migrating"))


def display_state(inst: Instance, node_up: bool, active: list[Operation]) -> str:
    """One word for the operator, from the desired state, operations and observation."""
    if inst.deleting:
        return "deleting"
    kinds = {o.kind for o in active}
    for kind, word in BUSY_WORDS:
        if kind in kinds:
            return word
    if not node_up:
        return "unknown"
    return inst.observed_state or "creating"


def state_expr(now: datetime, down_after_s: float) -> ColumnElement[str]:
    """SQL: `display_state` of the VM row, for filtering a list by it (the same rules in
    the same order: a list filtered by a state shows only VMs shown in that state)."""
    def busy(kind: str) -> ColumnElement[bool]:
        return exists().where(Operation.target_id == Instance.id, Operation.kind == kind,
                              Operation.state.in_(operations.ACTIVE))
    node_up = exists().where(Node.id == Instance.node_id,
                             nodes.state_is("up", now, down_after_s))
    return case((Instance.deleting, "deleting"),
                *[(busy(kind), word) for kind, word in BUSY_WORDS],
                (~node_up, "unknown"),
                else_=func.coalesce(Instance.observed_state, "creating"))
