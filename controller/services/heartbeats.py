"""Heartbeats: a node's report that says nothing new costs no transaction of its own.

Every agent reports its status every few seconds. At 10,000 nodes that is 2,000
reports a second, nearly all saying what the one before said: the same VMs in the
same states, the same failures; only when they were sent and their measurements
(free space, pool usage, GPU telemetry) move. Such a report is not ingested: only
the time the node was heard is kept, in memory, and those times are written
together, once a second, in one statement. A report that says something new, the
first one after the node's desired state changed, and the first one after
`full_every_s` (which also refreshes the measurements) are ingested in full.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session, sessionmaker

from agent.protocol import NodeStatus
from controller.db.models import Node

# Measurements that move on every report without anything having happened: they are
# refreshed by the full ingest that comes at least every `full_every_s`.
MEASUREMENTS: dict[str, Any] = {
    "sent_at": True,
    "inventory": {"storage_free_bytes": True,
                  "gpus": {"__all__": {"nvml": {"telemetry": True}}}},
    "storage": {"pools": {"__all__": {"used_bytes", "max_avail_bytes"}}},
    "failures": {"__all__": {"next_retry_at"}},
}


def digest(status: NodeStatus) -> str:
    """What the report says has happened: its content but for the measurements."""
    return hashlib.sha256(
        status.model_dump_json(exclude=MEASUREMENTS).encode()).hexdigest()


class HeartbeatBook:
    """The last report ingested per node, and the nodes heard since the last flush."""

    def __init__(self, full_every_s: float = 30.0) -> None:
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
        """The node proved alive (a repeated report, or a long-poll) at `now`."""
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
                    # a node that never reported stays "new" however often it long-polls;
                    # another process may have written a later time already
                    update(Node).where(Node.id == bindparam("node_id"),
                                       Node.last_seen_at.is_not(None),
                                       Node.last_seen_at < bindparam("seen"))
                    .values(last_seen_at=bindparam("seen")),
                    # in one order in every process: concurrent flushes cannot deadlock
                    [{"node_id": n, "seen": heard[n]} for n in sorted(heard)])
        except Exception:
            with self._lock:
                self._heard = {**heard, **self._heard}
            raise
        return len(heard)

