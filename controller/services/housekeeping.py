"""Periodic upkeep: operations whose node stopped reporting do not wait forever, and
ended browser sessions do not pile up."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import Node, Operation, as_utc
from controller.services import audit, operations
from controller.services import sessions as browser_sessions

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
        # several controller processes sweep at once: each operation is failed by one
        .with_for_update(of=Operation, skip_locked=True)
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


class Periodic(threading.Thread):
    """Calls `task()` every `interval` seconds until stopped; a failure is logged and the
    task runs again at the next tick."""

    def __init__(self, name: str, interval: float, task: Callable[[], object]) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.task = task
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.task()
            except Exception:
                log.exception("%s failed; trying again", self.name)


def housekeeper(sessions: sessionmaker[Session], silent_after: timedelta,
                started_at: datetime, interval: float = 5.0) -> Periodic:
    """Fails, every `interval` seconds, the operations of nodes silent too long, and
    deletes the browser sessions that ended."""

    def upkeep() -> None:
        with sessions() as db, db.begin():
            now = datetime.now(started_at.tzinfo)
            n = expire_operations(db, now, silent_after, started_at)
            browser_sessions.purge_ended(db, now)
        if n:
            log.warning("%d operation(s) failed: their node stopped reporting", n)

    return Periodic("housekeeping", interval, upkeep)
