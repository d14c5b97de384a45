"""The node's storage heartbeat: a small object in Ceph, rewritten every few seconds.

Every `interval_s` the agent writes object `vauban.hb.<node id>` (JSON: a sequence number
and when it was sent) in the root-disk pool, namespace `vauban-ha`, through the storage
driver's own Ceph connection. The controller reads it (controller.ha.ceph) and judges
it stale by its own clock, when the sequence has not changed for its storage down delay;
`sent_at` is for people, never for that judgement.

A write that succeeds is storage contact for the self-fence watchdog (agent.fencing); a
write refused because this node's Ceph client is blocklisted fences the node at once. The
connection's client addresses (what a fence blocklists) are kept for the status report.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from agent.drivers.storage.base import StorageError
from agent.drivers.storage.rbd.conn import CephConnection, error_errno
from agent.fencing import Watchdog
from agent.protocol import STORAGE_HEARTBEAT_NAMESPACE, storage_heartbeat_object

log = logging.getLogger(__name__)

EBLOCKLISTED = errno.ESHUTDOWN  # librados answers a blocklisted client's I/O with -108


def blocklisted(e: BaseException) -> bool:
    """Whether a failed write says this client is blocklisted (librados: -EBLOCKLISTED)."""
    cause: BaseException | None = e
    while cause is not None:
        if error_errno(cause) == EBLOCKLISTED:
            return True
        cause = cause.__cause__
    return False


def client_addrs(cluster: Any) -> list[str]:
    """The client addresses ("ip:port/nonce") of a connected `rados.Rados`."""
    raw = cluster.get_addrs()
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return [str(raw)]
    found: list[str] = []
    if isinstance(parsed, dict):
        for a in parsed.get("addrvec", []):
            found.append(f"{a['addr']}/{a['nonce']}")
    elif isinstance(parsed, str):
        found.append(parsed)
    return found


class StorageHeartbeat:
    """Writes the heartbeat of `node_id` into `pool` every `interval_s` on its own thread."""

    def __init__(self, conn: CephConnection, pool: str, node_id: str, interval_s: float,
                 watchdog: Watchdog) -> None:
        self.conn = conn
        self.pool = pool
        self.node_id = node_id
        self.interval_s = interval_s
        self.watchdog = watchdog
        self.seq = 0
        self._addrs: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def client_addrs(self) -> list[str]:
        """The Ceph client addresses of the last successful write (empty before one)."""
        with self._lock:
            return list(self._addrs)

    def beat(self) -> None:
        """Write the next heartbeat once. On success the watchdog hears of it (after it has
        judged); a blocklisted client fences the node; other failures raise StorageError."""
        body = json.dumps({"seq": self.seq + 1, "sent_at": datetime.now(UTC).isoformat()})
        try:
            with self.conn.cluster(f"storage heartbeat to pool {self.pool}") as cluster:
                with cluster.open_ioctx(self.pool) as ioctx:
                    ioctx.set_namespace(STORAGE_HEARTBEAT_NAMESPACE)
                    ioctx.write_full(storage_heartbeat_object(self.node_id), body.encode())
                addrs = client_addrs(cluster)
        except StorageError as e:
            if blocklisted(e):
                self.watchdog.blocklisted(str(e))
            raise
        self.seq += 1
        with self._lock:
            self._addrs = addrs
        self.watchdog.storage_ok()

    def run(self) -> None:
        """Beat every interval until `stop()`; a failure is logged and the next beat comes."""
        failing = False
        while not self._stopping.is_set():
            try:
                self.beat()
            except Exception as e:
                if not failing:
                    log.warning("storage heartbeat not written: %s", e)
                failing = True
            else:
                if failing:
                    log.info("storage heartbeat written again (seq %d)", self.seq)
                failing = False
            self._stopping.wait(self.interval_s)

    def start(self) -> None:
        """Start the heartbeat and the watchdog's ticker, each on its own thread."""
        self._threads = [
            threading.Thread(target=self.run, name="storage-heartbeat", daemon=True),
            threading.Thread(target=self.watchdog.watch, args=(self._stopping, self.interval_s),
                             name="fence-watchdog", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """No beat starts after this call, and the watchdog stands down (a beat in flight
        that lands late cannot fence a stopping agent); returns at once (see `join`)."""
        self.watchdog.stand_down()
        self._stopping.set()

    def join(self) -> None:
        for t in self._threads:
            t.join()
