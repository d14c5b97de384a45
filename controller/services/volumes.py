"""Block volumes on the region's shared storage: what operators ask for.

A volume is looked after by one node, its steward: the node of the VM it is
attached to, or any node that is up. The steward's desired state carries the
volume; what it reports settles the operations (see volume_observed.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ColumnElement, case, exists, func, select
from sqlalchemy.orm import Session

from agent.protocol import StorageSettings
from controller.config import ControllerConfig
from controller.db.models import Instance, Node, Operation, Volume
from controller.errors import Conflict, InvalidInput, NotFound, NoValidHost
from controller.schemas import VolumeAttach, VolumeCreate
from controller.services import audit, desired, operations, quotas, tenancy
from controller.services.nodes import is_xapi_pool, node_state

ROOT_TARGETS = ("vda", "vdb")  # the root disk and the cloud-init seed
TARGETS = tuple(f"vd{c}" for c in "cdefghijklmnopqrstuvwxyz")


def find(db: Session, ref: str) -> Volume:
    """A volume by id or name among the caller's (see tenancy.find), or NotFound."""
    return tenancy.find(db, Volume, ref, "volume")


def _rbd(storage: StorageSettings) -> tuple[str, list[str]]:
    if storage.driver != "rbd" or storage.rbd is None:
        raise Conflict(f"volumes need shared storage (rbd); this region uses {storage.driver}")
    return storage.rbd.pool, storage.rbd.volume_pools


def _pick_steward(db: Session, config: ControllerConfig) -> Node:
    """The up node looking after the fewest volumes (never an XCP-ng pool: its agent
    drives no RBD volumes)."""
    now = datetime.now(UTC)
    up = [n for n in db.scalars(select(Node).order_by(Node.name))
          if node_state(n, now, config.node_down_after_s) == "up" and not is_xapi_pool(n)]
    if not up:
        raise NoValidHost("no node is up to look after the volume", reasons={})
    load = {node_id: int(n) for node_id, n in db.execute(
        select(Volume.steward_node_id, func.count(Volume.id)).group_by(Volume.steward_node_id))}
    return min(up, key=lambda n: (load.get(n.id, 0), n.name))


def create(db: Session, actor: str, body: VolumeCreate, storage: StorageSettings,
           config: ControllerConfig) -> tuple[Volume, Operation]:
    """Validate and record a new volume; refusals change nothing."""
    _, pools = _rbd(storage)
    pool = body.pool or pools[0]
    if pool not in pools:
        raise InvalidInput(f"unknown pool '{pool}'; volumes may use: {', '.join(pools)}")
    project = quotas.lock(db, tenancy.target_project(db, body.project).id)
    quotas.check(db, project, quotas.Ask(volumes=1, storage_gib=body.size_gib))
    if db.scalar(select(Volume.id).where(Volume.project_id == project.id,
                                         Volume.name == body.name)) is not None:
        raise Conflict(f"a volume named '{body.name}' already exists in project "
                       f"'{project.name}'")
    clone_vol, clone_snap = None, None
    if body.source:
        src_name, clone_snap = body.source.split("@", 1)
        src = tenancy.find_input(db, Volume, src_name, "volume", project.id)
        if clone_snap not in src.snapshots or clone_snap not in (src.observed_snapshots or []):
            raise InvalidInput(f"volume '{src.name}' has no snapshot '{clone_snap}'")
        if body.size_gib < src.size_gib:
            raise InvalidInput(f"size_gib {body.size_gib} is smaller than the source volume "
                               f"'{src.name}' ({src.size_gib} GiB)")
        clone_vol = src.id
        pool = src.pool  # a clone lives beside its parent
    steward = _pick_steward(db, config)
    vol = Volume(name=body.name, project_id=project.id, pool=pool, size_gib=body.size_gib,
                 steward_node_id=steward.id, snapshots=[], clone_of_volume_id=clone_vol,
                 clone_of_snapshot=clone_snap)
    db.add(vol)
    db.flush()
    op = _op(db, "volume.create", vol, actor, steward)
    audit.record(db, actor, "volume.create", f"volume/{vol.id}", name=vol.name, pool=pool,
                 size_gib=vol.size_gib, source=body.source)
    return vol, op


def _op(db: Session, kind: str, vol: Volume, actor: str, node: Node | None = None) -> Operation:
    node = node or vol.steward
    generation = desired.bump(node)
    return operations.start_on(db, kind, vol.id, vol.name, node.id, actor, generation,
                               project_id=vol.project_id)


def _idle(db: Session, vol: Volume) -> None:
    if vol.deleting:
        raise Conflict(f"volume '{vol.name}' is being deleted")
    operations.refuse_if_busy(db, vol.id, f"volume '{vol.name}'")


def resize(db: Session, actor: str, vol: Volume, size_gib: int) -> Operation:
    _idle(db, vol)
    if size_gib <= vol.size_gib:
        raise InvalidInput(f"volumes only grow: '{vol.name}' is {vol.size_gib} GiB, "
                           f"{size_gib} asked")
    quotas.check(db, quotas.lock(db, vol.project_id),
                 quotas.Ask(storage_gib=size_gib - vol.size_gib))
    before, vol.size_gib = vol.size_gib, size_gib
    audit.record(db, actor, "volume.resize", f"volume/{vol.id}", name=vol.name,
                 from_gib=before, to_gib=size_gib)
    return _op(db, "volume.resize", vol, actor)


def _clones_of(db: Session, vol: Volume, snapshot: str | None = None) -> list[str]:
    stmt = select(Volume.name).where(Volume.clone_of_volume_id == vol.id)
    if snapshot is not None:
        stmt = stmt.where(Volume.clone_of_snapshot == snapshot)
    return list(db.scalars(stmt))


def snapshot(db: Session, actor: str, vol: Volume, name: str) -> Operation:
    _idle(db, vol)
    if name in vol.snapshots:
        raise Conflict(f"volume '{vol.name}' already has a snapshot '{name}'")
    vol.snapshots = [*vol.snapshots, name]
    audit.record(db, actor, "volume.snapshot", f"volume/{vol.id}", name=vol.name, snapshot=name)
    return _op(db, "volume.snapshot", vol, actor)


def delete_snapshot(db: Session, actor: str, vol: Volume, name: str) -> Operation:
    _idle(db, vol)
    if name not in vol.snapshots:
        raise NotFound(f"volume '{vol.name}' has no snapshot '{name}'")
    clones = _clones_of(db, vol, name)
    if clones:
        raise Conflict(f"snapshot '{name}' of '{vol.name}' has clones: {', '.join(clones)}")
    vol.snapshots = [s for s in vol.snapshots if s != name]
    audit.record(db, actor, "volume.snapshot-delete", f"volume/{vol.id}", name=vol.name,
                 snapshot=name)
    return _op(db, "volume.snapshot-delete", vol, actor)


def rollback(db: Session, actor: str, vol: Volume, name: str) -> Operation:
    _idle(db, vol)
    if name not in vol.snapshots:
        raise NotFound(f"volume '{vol.name}' has no snapshot '{name}'")
    if vol.instance_id is not None:
        raise Conflict(f"volume '{vol.name}' is attached; detach it before a rollback")
    vol.rollback_snapshot, vol.rollback_seq = name, vol.rollback_seq + 1
    audit.record(db, actor, "volume.rollback", f"volume/{vol.id}", name=vol.name, snapshot=name)
    return _op(db, "volume.rollback", vol, actor)


def attach(db: Session, actor: str, vol: Volume, body: VolumeAttach,
           inst: Instance) -> Operation:
    """Plug the volume into a running VM; its node becomes the volume's steward."""
    if is_xapi_pool(inst.node):
        raise Conflict(f"'{inst.name}' runs in XCP-ng pool {inst.node.name}: XCP-ng has no "
                       "supported Ceph RBD storage repository, so Vauban attaches no volume "
                       "to its VMs; their disks live on the pool's storage repositories")
    _idle(db, vol)
    if vol.instance is not None:
        raise Conflict(f"volume '{vol.name}' is already attached to '{vol.instance.name}'")
    if inst.deleting or inst.observed_state != "running" or inst.desired_power != "running":
        raise Conflict(f"volumes attach to running VMs; '{inst.name}' is "
                       f"{'being deleted' if inst.deleting else inst.observed_state or 'not up'}")
    taken = set(db.scalars(select(Volume.target).where(Volume.instance_id == inst.id)))
    if body.target is not None:
        if body.target in ROOT_TARGETS:
            raise InvalidInput(f"target {body.target} is the VM's "
                               f"{'root disk' if body.target == 'vda' else 'cloud-init seed'}")
        if body.target in taken:
            raise Conflict(f"target {body.target} of '{inst.name}' is in use")
        target = body.target
    else:
        free = [t for t in TARGETS if t not in taken]
        if not free:
            raise Conflict(f"'{inst.name}' has no free disk target left")
        target = free[0]
    old = vol.steward
    vol.instance_id, vol.target, vol.steward_node_id = inst.id, target, inst.node_id
    db.flush()
    if old.id != inst.node_id:
        desired.bump(old)  # the old steward lets go of it
    audit.record(db, actor, "volume.attach", f"volume/{vol.id}", name=vol.name,
                 instance=inst.name, disk=target)
    return _op(db, "volume.attach", vol, actor, inst.node)


DETACHABLE_FROM = ("running", "stopped")


def detach(db: Session, actor: str, vol: Volume) -> Operation:
    """Unplug the volume from its VM: live from a running VM, from the definition of a
    stopped one. Refused (changing nothing) while the VM is in any other state."""
    _idle(db, vol)
    if vol.instance_id is None:
        raise Conflict(f"volume '{vol.name}' is not attached")
    inst = vol.instance
    assert inst is not None
    if inst.observed_state not in DETACHABLE_FROM:
        raise Conflict(f"volumes detach from running or stopped VMs; '{inst.name}' is "
                       f"{inst.observed_state or 'not up'}")
    vol.instance_id, vol.target = None, None
    audit.record(db, actor, "volume.detach", f"volume/{vol.id}", name=vol.name,
                 instance=inst.name)
    return _op(db, "volume.detach", vol, actor)


def delete(db: Session, actor: str, vol: Volume) -> Operation:
    """Delete a detached volume without clones; operations still running on it fail."""
    if vol.deleting:
        busy = [o for o in operations.active_for(db, vol.id) if o.kind == "volume.delete"]
        if busy:
            return busy[0]
    if vol.instance is not None:
        raise Conflict(f"volume '{vol.name}' is attached to '{vol.instance.name}'; "
                       "detach it first")
    clones = _clones_of(db, vol)
    if clones:
        raise Conflict(f"volume '{vol.name}' has clones: {', '.join(clones)}; delete them first")
    for op in operations.active_for(db, vol.id):
        operations.finish(op, error="superseded by a delete of the volume")
    vol.deleting = True
    audit.record(db, actor, "volume.delete", f"volume/{vol.id}", name=vol.name)
    return _op(db, "volume.delete", vol, actor)


def release_from_instance(db: Session, inst: Instance) -> None:
    """A deleted VM lets go of its volumes: they stay, detached, with the same steward."""
    for vol in db.scalars(select(Volume).where(Volume.instance_id == inst.id)):
        vol.instance_id, vol.target = None, None


# an active operation of these kinds names the volume's state
BUSY_WORDS = {"volume.create": "creating", "volume.attach": "attaching",
              "volume.detach": "detaching", "volume.resize": "resizing",
              "volume.snapshot": "snapshotting", "volume.snapshot-delete": "snapshotting",
              "volume.rollback": "rolling-back"}


def display_state(vol: Volume, active: list[Operation]) -> str:
    if vol.deleting:
        return "deleting"
    for op in active:
        if op.kind in BUSY_WORDS:
            return BUSY_WORDS[op.kind]
    if vol.observed_error:
        return "error"
    if vol.observed_size_bytes is None:
        return "creating"
    return "in-use" if vol.instance_id else "available"


def state_expr() -> ColumnElement[str]:
    """SQL: `display_state` of the volume row, for filtering a list by it (one operation
    at a time runs on a volume, so which active one names the state does not arise)."""
    def busy(kinds: list[str]) -> ColumnElement[bool]:
        return exists().where(Operation.target_id == Volume.id, Operation.kind.in_(kinds),
                              Operation.state.in_(operations.ACTIVE))
    words: dict[str, list[str]] = {}
    for kind, word in BUSY_WORDS.items():
        words.setdefault(word, []).append(kind)
    return case((Volume.deleting, "deleting"),
                *[(busy(kinds), word) for word, kinds in words.items()],
                (func.coalesce(Volume.observed_error, "") != "", "error"),
                (Volume.observed_size_bytes.is_(None), "creating"),
                (Volume.instance_id.is_not(None), "in-use"),
                else_="available")
