"""Heartbeats: a node's report that says nothing new costs no transaction of its own.

Every agent reports its status every few seconds. At 10,000 nodes that is 2,000
reports a second, almost all identical to the one before but for the time they
were sent. Such a report changes nothing in the database except when the node
was last heard of, so those times are kept in memory and written together, once
a second, in one statement. A report that differs, the first one after the node's
desired state changed, and the first one after `full_every_s` are ingested in full.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session, sessionmaker

from agent.protocol import NodeStatus
from controller.db.models import Node

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1)


def digest(status: NodeStatus) -> str:
    """What the report says, apart from when it was sent."""
    return hashlib.sha256(
        status.model_copy(update={"sent_at": EPOCH}).model_dump_json().encode()).hexdigest()


class HeartbeatBook:
    """The last report ingested per node, and the nodes heard since the last flush."""

    def __init__(self, full_every_s: float = 60.0) -> None:
        self.full_every_s = full_every_s
        self._lock = threading.Lock()
        self._ingested: dict[str, tuple[str, datetime]] = {}  # node -> (digest, when)
        self._heard: dict[str, datetime] = {}

    def is_repeat(self, node_id: str, report: str, now: datetime) -> bool:
        """True if `report` (a digest) is the node's last one, ingested recently."""
        with self._lock:
            last = self._ingested.get(node_id)
        return (last is not None and last[0] == report
                and (now - last[1]).total_seconds() < self.full_every_s)

    def ingested(self, node_id: str, report: str, now: datetime) -> None:
        with self._lock:
            self._ingested[node_id] = (report, now)
            self._heard.pop(node_id, None)  # the ingest wrote last_seen_at itself

    def forget(self, node_ids: Iterable[str]) -> None:
        """The next reports of these nodes are ingested in full: their desired state changed,
        so the same report may now settle an operation or confirm a removal."""
        with self._lock:
            for node_id in node_ids:
                self._ingested.pop(node_id, None)

    def heard(self, node_id: str, now: datetime) -> None:
        with self._lock:
            self._heard[node_id] = now

    def flush(self, sessions: sessionmaker[Session]) -> int:
        """Write the times of the nodes heard since the last flush; returns how many.

        On failure the times are kept for the next flush (a later time wins)."""
        with self._lock:
            heard, self._heard = self._heard, {}
        if not heard:
            return 0
        try:
            with sessions() as db, db.begin():
                db.connection().execute(
                    update(Node).where(Node.id == bindparam("node_id"))
                    .values(last_seen_at=bindparam("seen")),
                    [{"node_id": n, "seen": t} for n, t in heard.items()])
        except Exception:
            with self._lock:
                self._heard = {**heard, **self._heard}
            raise
        return len(heard)


class HeartbeatFlusher(threading.Thread):
    """Flushes the book every `interval` seconds until the process ends."""

    def __init__(self, book: HeartbeatBook, sessions: sessionmaker[Session],
                 interval: float = 1.0) -> None:
        super().__init__(name="heartbeats", daemon=True)
        self.book = book
        self.sessions = sessions
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.book.flush(self.sessions)
            except Exception:
                log.exception("writing heartbeats failed; trying again")
