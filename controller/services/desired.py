"""Each node's desired state, numbered by a generation that grows with every change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import (
    CloudInitSeed,
    DesiredState,
    DesiredVm,
    DesiredVolume,
    ImageRef,
    PowerState,
    VolumeAttachment,
    VolumeClone,
    VolumeRollback,
)
from controller.db.models import ImageTombstone, Instance, Node, Volume

TOMBSTONE_DAYS = timedelta(days=30)  # a node down longer keeps a deleted image's copy


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
    attached: dict[str, list[VolumeAttachment]] = {}
    stewarded = list(db.scalars(
        select(Volume).where(Volume.steward_node_id == node.id).order_by(Volume.created_at)))
    for vol in stewarded:
        if vol.instance_id and vol.target and not vol.deleting:
            attached.setdefault(vol.instance_id, []).append(
                VolumeAttachment(volume_id=vol.id, target=vol.target))
    since = datetime.now(UTC) - TOMBSTONE_DAYS
    retired = db.scalars(select(ImageTombstone.id).where(ImageTombstone.deleted_at >= since)
                         .order_by(ImageTombstone.deleted_at))
    return DesiredState(
        node_id=node.id,
        generation=node.generation,
        vms=[_vm(i, attached.get(i.id, [])) for i in instances],
        volumes=[_volume(v) for v in stewarded],
        retired_images=list(retired),
    )


def _volume(v: Volume) -> DesiredVolume:
    return DesiredVolume(
        id=v.id, name=v.name, pool=v.pool, size_gib=v.size_gib, present=not v.deleting,
        snapshots=list(v.snapshots),
        clone_of=VolumeClone(volume_id=v.clone_of_volume_id, snapshot=v.clone_of_snapshot)
        if v.clone_of_volume_id and v.clone_of_snapshot else None,
        rollback=VolumeRollback(snapshot=v.rollback_snapshot, seq=v.rollback_seq)
        if v.rollback_snapshot and v.rollback_seq else None,
    )


def _vm(i: Instance, volumes: list[VolumeAttachment]) -> DesiredVm:
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
        volumes=volumes,
        flatten_root=i.flatten_root,
    )
