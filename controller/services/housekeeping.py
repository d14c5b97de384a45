"""Periodic upkeep: operations whose node stopped reporting do not wait forever, and
ended browser sessions do not pile up."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller import consoles as relay
from controller.db.models import Node, Operation, as_utc
from controller.services import audit, events, operations
from controller.services import consoles as console_service
from controller.services import nodes as node_service
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


@dataclass(frozen=True)
class EventUpkeep:
    """How the housekeeper keeps the event log: nodes' states told (a node silent
    `down_after_s` is down), events pruned past `keep_s` seconds or `keep_count` rows."""

    down_after_s: float = 30.0
    keep_s: float = 3600.0
    keep_count: int = 100_000


def housekeeper(sessions: sessionmaker[Session], silent_after: timedelta,
                started_at: datetime, interval: float = 5.0,
                event_upkeep: EventUpkeep | None = None) -> Periodic:
    """Fails, every `interval` seconds, the operations of nodes silent too long, deletes
    the browser sessions that ended, tells the nodes that went up or down, and prunes the
    event log (`event_upkeep`; default: EventUpkeep())."""
    keep = event_upkeep or EventUpkeep()

    def upkeep() -> None:
        with sessions() as db, db.begin():
            now = datetime.now(started_at.tzinfo)
            n = expire_operations(db, now, silent_after, started_at)
            browser_sessions.purge_ended(db, now)
            node_service.announce_states(db, now, keep.down_after_s)
            events.prune(db, now, keep.keep_s, keep.keep_count)
        if n:
            log.warning("%d operation(s) failed: their node stopped reporting", n)

    return Periodic("housekeeping", interval, upkeep)


def upkeep_consoles(sessions: sessionmaker[Session], data_dir: Path) -> None:
    """Close the console sessions, and remove the socket files, that a controller process
    which ended left behind (see consoles.close_abandoned)."""
    with sessions() as db, db.begin():
        closed = console_service.close_abandoned(db)
    swept = relay.sweep_rendezvous(data_dir, console_service.ABANDONED_AFTER_S)
    if closed or swept:
        log.warning("closed %d console session(s) and removed %d socket file(s) left by a "
                    "controller process that ended", closed, swept)
