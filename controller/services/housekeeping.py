"""Periodic upkeep: operations whose node stopped reporting do not wait forever."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import Node, Operation, as_utc
from controller.services import audit, operations

log = logging.getLogger(__name__)


def expire_operations(db: Session, now: datetime, silent_after: timedelta,
                      started_at: datetime) -> int:
    """Fail active operations on nodes silent for longer than `silent_after`.

    Silence is counted from the later of the node's last report and this
    controller's start, so a controller that was down itself gives nodes time to
    report again before blaming them. Returns how many operations failed.
    """
    failed = 0
    rows = db.execute(
        select(Operation, Node).join(Node, Node.id == Operation.node_id)
        .where(Operation.state.in_(operations.ACTIVE))
    )
    for op, node in rows:
        heard = max(as_utc(node.last_seen_at) if node.last_seen_at else started_at, started_at)
        if now - heard > silent_after:
            operations.finish(op, error=f"node {node.name} stopped reporting; the outcome is "
                                        "unknown, look at the instance once the node is back")
            audit.record(db, "controller", op.kind, f"instance/{op.target_id}", "failed",
                         operation=op.id, reason="node silent")
            failed += 1
    return failed


class Housekeeper(threading.Thread):
    """Runs the upkeep every `interval` seconds until stopped."""

    def __init__(self, sessions: sessionmaker[Session], silent_after: timedelta,
                 started_at: datetime, interval: float = 5.0) -> None:
        super().__init__(name="housekeeping", daemon=True)
        self.sessions = sessions
        self.silent_after = silent_after
        self.started_at = started_at
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                with self.sessions() as db, db.begin():
                    n = expire_operations(db, datetime.now(self.started_at.tzinfo),
                                          self.silent_after, self.started_at)
                if n:
                    log.warning("%d operation(s) failed: their node stopped reporting", n)
            except Exception:
                log.exception("housekeeping failed; trying again")
