"""The audit trail: every mutating action, who asked, and how it ended."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from controller.db.models import AuditEvent


def record(
    db: Session, actor: str, action: str, target: str, outcome: str = "accepted", **detail: Any
) -> None:
    """Add an audit event to the caller's transaction: it commits or rolls back with the action."""
    db.add(AuditEvent(actor=actor, action=action, target=target, outcome=outcome, detail=detail))


def record_now(sessions: Any, actor: str, action: str, target: str, outcome: str,
               **detail: Any) -> None:
    """Record a refused or failed action in its own transaction (the action's was rolled back)."""
    with sessions() as db, db.begin():
        record(db, actor, action, target, outcome, **detail)
