"""Each node's desired state, numbered by a generation that grows with every change."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import (
    CloudInitSeed,
    DesiredState,
    DesiredVm,
    ImageRef,
    PowerState,
)
from controller.db.models import Instance, Node


def bump(node: Node) -> int:
    """Mark the node's desired state changed; the caller commits, then notifies waiters."""
    node.generation += 1
    return node.generation


def build(db: Session, node: Node) -> DesiredState:
    """Every VM the node should have: all its instances that are not being deleted."""
    instances = db.scalars(
        select(Instance)
        .where(Instance.node_id == node.id, Instance.deleting.is_(False))
        .order_by(Instance.created_at)
    )
    return DesiredState(
        node_id=node.id,
        generation=node.generation,
        vms=[_vm(i) for i in instances],
    )


def _vm(i: Instance) -> DesiredVm:
    return DesiredVm(
        id=i.id,
        name=i.name,
        vcpus=i.vcpus,
        memory_mib=i.memory_mib,
        root_disk_gib=i.root_disk_gib,
        image=ImageRef(
            id=i.image.id,
            name=i.image.name,
            disk_format=i.image.disk_format,  # type: ignore[arg-type]
            size_bytes=i.image.size_bytes,
            sha256=i.image.sha256,
        ),
        power=PowerState(i.desired_power),
        power_seq=i.power_seq,
        seed=CloudInitSeed(instance_id=i.id, hostname=i.hostname, user_data=i.user_data),
    )
