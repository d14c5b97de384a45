"""What a steward node reports of its volumes, and the volume operations that settles."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import ObservedVolume
from controller.db.models import Node, Operation, Volume
from controller.services import audit, operations

GIB = 1024**3


def ingest(db: Session, node: Node, reported: list[ObservedVolume]) -> None:
    """Record the steward's view of its volumes and settle their operations."""
    seen = {v.id: v for v in reported}
    mine = {v.id: v for v in db.scalars(select(Volume).where(Volume.steward_node_id == node.id))}
    for vol_id, vol in mine.items():
        obs = seen.get(vol_id)
        if obs is not None:
            vol.observed_size_bytes, vol.observed_used_bytes = obs.size_bytes, obs.used_bytes
            vol.observed_snapshots = list(obs.snapshots)
            vol.observed_quiesced_snapshots = [s for s in obs.quiesced_snapshots
                                               if s in obs.snapshots]
            vol.observed_rollback_seq = obs.rollback_seq
            vol.observed_attached_to = obs.attached_to
            vol.observed_error = obs.error
    active = db.scalars(select(Operation).where(
        Operation.node_id == node.id, Operation.kind.startswith("volume."),
        Operation.state.in_(operations.ACTIVE)))
    for op in active:
        target = mine.get(op.target_id)
        if target is None:
            continue  # its steward changed: the new one settles it
        _settle(db, op, target, seen.get(target.id))


def _settle(db: Session, op: Operation, vol: Volume, obs: ObservedVolume | None) -> None:
    """Finish `op` once the node shows its outcome: failed with the node's error when that
    error is of this request or a later one (`failed_generation` at least the operation's
    generation), succeeded once the node shows what it asked for (an older request's error
    may still be shown beside it). Otherwise it stays active."""
    if op.kind == "volume.delete":
        if obs is None:
            operations.finish(op)
            audit.record(db, op.requested_by, "volume.delete", f"volume/{vol.id}", "succeeded",
                         name=vol.name)
            db.delete(vol)
        return
    if obs is None:
        return
    if obs.error and (obs.failed_generation or 0) >= op.expect_generation:
        operations.finish(op, error=obs.error)
        return
    # an older request's error alone says nothing of this one: what the node shows does
    if _done(op.kind, vol, obs):
        operations.finish(op)


def _done(kind: str, vol: Volume, obs: ObservedVolume) -> bool:
    """Whether the node shows what the operation asked for."""
    if kind in ("volume.create", "volume.resize"):
        # a volume is never empty: one reported for its error alone (size 0) was not made
        return obs.size_bytes >= vol.size_gib * GIB
    if kind in ("volume.snapshot", "volume.snapshot-delete"):
        return sorted(obs.snapshots) == sorted(vol.snapshots)
    if kind == "volume.rollback":
        return obs.rollback_seq >= vol.rollback_seq
    if kind == "volume.attach":
        return obs.attached_to == vol.instance_id and obs.target == vol.target
    if kind == "volume.detach":
        return obs.attached_to is None
    return False
