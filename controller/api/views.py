"""Turn database rows into API read models."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller import schemas
from controller.db.models import Instance, Node, Operation, Volume
from controller.services import operations, scheduler
from controller.services.instances import display_state
from controller.services.nodes import node_state
from controller.services.volumes import display_state as volume_state


def node_view(n: Node, usage: scheduler.Usage, down_after_s: float) -> schemas.Node:
    return schemas.Node(
        id=n.id, name=n.name, state=node_state(n, datetime.now(UTC), down_after_s),  # type: ignore[arg-type]
        cpus=n.cpus, memory_mib=n.memory_mib, kvm_usable=n.kvm_usable,
        vcpus_used=usage.vcpus, memory_mib_used=usage.memory_mib, instances=usage.instances,
        generation=n.generation, applied_generation=n.applied_generation,
        last_seen_at=n.last_seen_at, inventory=n.inventory, created_at=n.created_at,
    )


def instance_view(db: Session, i: Instance, down_after_s: float) -> schemas.Instance:
    up = node_state(i.node, datetime.now(UTC), down_after_s) == "up"
    return schemas.Instance(
        id=i.id, name=i.name,
        state=display_state(i, up, operations.active_for(db, i.id)),
        desired_power=i.desired_power, node_id=i.node_id, node_name=i.node.name,
        image_id=i.image_id, image_name=i.image.name, vcpus=i.vcpus, memory_mib=i.memory_mib,
        root_disk_gib=i.root_disk_gib, hostname=i.hostname, error=i.observed_error,
        console_log=i.console_log, created_at=i.created_at, updated_at=i.updated_at,
    )


def operation_view(op: Operation) -> schemas.Operation:
    return schemas.Operation.model_validate(op)


def all_instances(db: Session) -> list[Instance]:
    return list(db.scalars(select(Instance).order_by(Instance.name)))


def volume_view(db: Session, v: Volume) -> schemas.Volume:
    return schemas.Volume(
        id=v.id, name=v.name, state=volume_state(v, operations.active_for(db, v.id)),
        pool=v.pool, size_gib=v.size_gib, size_bytes=v.observed_size_bytes,
        used_bytes=v.observed_used_bytes, snapshots=list(v.snapshots),
        source=_source_name(db, v),
        attached_to=v.instance.name if v.instance else None, target=v.target,
        steward=v.steward.name, error=v.observed_error, created_at=v.created_at,
        updated_at=v.updated_at,
    )


def _source_name(db: Session, v: Volume) -> str | None:
    if not v.clone_of_volume_id:
        return None
    parent = db.get(Volume, v.clone_of_volume_id)  # kept while it has clones
    return f"{parent.name if parent else v.clone_of_volume_id}@{v.clone_of_snapshot}"
