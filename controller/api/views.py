"""Turn database rows into API read models."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller import schemas
from controller.db.models import Instance, Node, Operation
from controller.services import operations, scheduler
from controller.services.instances import display_state
from controller.services.nodes import node_state


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
