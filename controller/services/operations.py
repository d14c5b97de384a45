"""Operations: long actions accepted with 202 and finished by what the node reports."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.models import Instance, Operation
from controller.errors import Conflict, NotFound

ACTIVE = ("pending", "running")


def start(db: Session, kind: str, instance: Instance, actor: str,
          expect_generation: int) -> Operation:
    """An operation on a VM, finished when its node shows the VM's current power_seq."""
    return start_on(db, kind, instance.id, instance.name, instance.node_id, actor,
                    expect_generation, instance.power_seq, project_id=instance.project_id)


def start_on(db: Session, kind: str, target_id: str, target_name: str, node_id: str,
             actor: str, expect_generation: int, expect_power_seq: int = 0, *,
             project_id: str | None = None) -> Operation:
    """An operation that `node_id` decides, from the desired generation `expect_generation`,
    on a target of `project_id` (None: the region's own)."""
    op = Operation(
        project_id=project_id,
        kind=kind,
        target_id=target_id,
        target_name=target_name,
        node_id=node_id,
        expect_power_seq=expect_power_seq,
        expect_generation=expect_generation,
        requested_by=actor,
        progress=10,
    )
    db.add(op)
    return op


def active_for(db: Session, target_id: str) -> list[Operation]:
    return list(
        db.scalars(
            select(Operation).where(Operation.target_id == target_id, Operation.state.in_(ACTIVE))
        )
    )


def refuse_if_busy(db: Session, target_id: str, what: str) -> None:
    """Conflict if an operation is still running on the object; `what` names it."""
    busy = active_for(db, target_id)
    if busy:
        op = busy[0]
        raise Conflict(
            f"{what} has operation {op.id} ({op.kind}) in progress; wait for it first",
            operation=op.id,
        )


def finish(op: Operation, *, error: str | None = None) -> None:
    op.state = "failed" if error else "succeeded"
    op.error = error
    op.progress = 100
    op.finished_at = datetime.now(UTC)


def get(db: Session, op_id: str) -> Operation:
    op = db.get(Operation, op_id)
    if op is None:
        raise NotFound(f"operation {op_id} does not exist")
    return op
