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
    op = Operation(
        kind=kind,
        target_id=instance.id,
        target_name=instance.name,
        node_id=instance.node_id,
        expect_power_seq=instance.power_seq,
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


def refuse_if_busy(db: Session, instance: Instance) -> None:
    busy = active_for(db, instance.id)
    if busy:
        op = busy[0]
        raise Conflict(
            f"instance '{instance.name}' has operation {op.id} ({op.kind}) in progress; "
            "wait for it or delete the instance",
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
