"""Each controller process reads every node's storage heartbeat on a timer and keeps what
it concludes (controller.ha.ceph.HeartbeatJudge) for `vauban node show` and the failover.

The views live in memory, judged by this process's clock: a restarted controller calls
no heartbeat stale before it has watched it unchanged for the whole storage down delay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import Node
from controller.ha.ceph import (
    CephAccess,
    CephHaError,
    Heartbeat,
    HeartbeatJudge,
    HeartbeatReader,
    HeartbeatView,
)

log = logging.getLogger(__name__)

Reader = Callable[[list[str]], dict[str, Heartbeat | None]]


class StorageWatch:
    """The latest view of every node's storage heartbeat in `pool`, read as `access`."""

    def __init__(self, access: CephAccess, pool: str, down_after_s: float,
                 judge: HeartbeatJudge | None = None, read: Reader | None = None) -> None:
        self.access = access
        self.pool = pool
        self.judge = judge or HeartbeatJudge(down_after_s)
        self._read = read or HeartbeatReader(access, pool).read
        self._lock = threading.Lock()
        self._views: dict[str, HeartbeatView] = {}
        self.error: str | None = None  # why the last round could not read Ceph
        self.read_at: datetime | None = None  # when the last round read it

    def refresh(self, sessions: sessionmaker[Session]) -> None:
        """Read every node's heartbeat once and judge it. When Ceph cannot be read nothing
        is judged (no heartbeat turns stale for the controller's own trouble): the views
        stay as they were and `error` says why."""
        with sessions() as db:
            node_ids = list(db.scalars(select(Node.id)))
        try:
            beats = self._read(node_ids)
        except CephHaError as e:
            if self.error != str(e):
                log.warning("storage heartbeats not read: %s", e)
            self.error = str(e)
            return
        views = {node_id: self.judge.observe(node_id, beat) for node_id, beat in beats.items()}
        for gone in set(self._views) - set(views):
            self.judge.forget(gone)
        with self._lock:
            self._views = views
        self.error, self.read_at = None, datetime.now(UTC)

    def view(self, node_id: str) -> HeartbeatView | None:
        """What this process last concluded about the node's heartbeat (None: not yet read)."""
        with self._lock:
            return self._views.get(node_id)
