"""One `event.from` loop per pool, feeding a cache of the pool's objects by UUID.

As Xen Orchestra's client does it: `event.inject` on the pool gives the token to start
from, then `get_all_records` of each watched class fills the cache (so nothing changed
between the two is missed), then `event.from(classes, token, 30.0)` returns what changed.
`EVENTS_LOST`, `SESSION_INVALID`, a new session (refs are per session), or a
`valid_ref_counts` that disagrees with the cache → everything is read again, and cached
objects not returned are dropped. No object is ever polled one by one.

The cache hands out records by UUID with every ref field turned into the UUID it names
(None for `OpaqueRef:NULL` or an object not watched): Vauban keeps UUIDs, never refs.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from agent.drivers.xapi.errors import CertificateMismatch, EventsLost, SessionInvalid, XapiError
from agent.drivers.xapi.pool import PoolClient

log = logging.getLogger(__name__)

WATCHED = ("pool", "host", "host_metrics", "SR", "SM", "network", "VM", "VDI", "VBD", "VIF",
           "task")
EVENT_TIMEOUT = 30.0  # seconds event.from waits for a change (float: XML-RPC <double>)
RETRY_AFTER = 10.0  # seconds between tries while the pool is unreachable
_REF = "OpaqueRef:"


class PoolCache:
    """The watched objects of one pool, as of the last event read.

    `valid` is False until the first full read and after a failure to reach the pool
    (`problem` says why); `refetches` counts full reads. Readers wait on `changed`.
    """

    def __init__(self, classes: Iterable[str] = WATCHED) -> None:
        self.classes = tuple(classes)
        self.changed = threading.Condition()
        self._records: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in self.classes}
        self._refs: dict[str, tuple[str, str]] = {}  # ref (this session's) -> (class, uuid)
        self.valid = False
        self.problem = "not read yet"
        self.refetches = 0
        self.events = 0
        # full reads numbered as they begin; the number of the last one applied: an object
        # that existed before a read began and is not in it was destroyed (or vanished)
        self.reads_begun = 0
        self.reads_complete_from = 0
        self.deleted_tasks: deque[str] = deque(maxlen=1024)  # task uuids of `del` events

    def _uuids(self, value: Any) -> Any:
        """`value` with refs replaced by the UUIDs they name."""
        if isinstance(value, str) and value.startswith(_REF):
            key = self._refs.get(value)
            return key[1] if key is not None else None
        if isinstance(value, list):
            return [self._uuids(v) for v in value]
        return value

    def _out(self, record: dict[str, Any]) -> dict[str, Any]:
        return {k: self._uuids(v) for k, v in record.items()}

    def get(self, cls: str, uuid: str) -> dict[str, Any] | None:
        """The record of `cls` object `uuid` (refs as UUIDs), or None."""
        with self.changed:
            record = self._records[cls].get(uuid)
            return self._out(record) if record is not None else None

    def all(self, cls: str) -> dict[str, dict[str, Any]]:
        """Every cached `cls` object: UUID -> record (refs as UUIDs)."""
        with self.changed:
            return {u: self._out(r) for u, r in self._records[cls].items()}

    def count(self, cls: str) -> int:
        with self.changed:
            return len(self._records[cls])

    def wait_for(self, predicate: Callable[[PoolCache], bool], timeout: float) -> bool:
        """Wait until `predicate(self)` holds (checked at each change); whether it did."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout)

    def begin_read(self) -> int:
        """The number of a full read that begins now (give it to `replace`)."""
        with self.changed:
            self.reads_begun += 1
            return self.reads_begun

    def replace(self, snapshot: dict[str, dict[str, dict[str, Any]]], read: int = 0) -> None:
        """Everything at once, from `get_all_records` per class (ref -> record): objects
        not in `snapshot` are dropped, refs of earlier sessions forgotten. `read`: the
        number `begin_read` gave before the snapshot was taken."""
        with self.changed:
            self.reads_complete_from = max(self.reads_complete_from, read)
            self._refs = {ref: (cls, rec["uuid"]) for cls, records in snapshot.items()
                          for ref, rec in records.items()}
            self._records = {cls: {rec["uuid"]: rec for rec in snapshot.get(cls, {}).values()}
                             for cls in self.classes}
            self.valid, self.problem = True, ""
            self.refetches += 1
            self.changed.notify_all()

    def apply(self, events: list[dict[str, Any]]) -> None:
        """Events from `event.from`, in order: add/mod store the snapshot, del drops."""
        by_lower = {c.lower(): c for c in self.classes}
        with self.changed:
            for event in events:
                cls = by_lower.get(str(event.get("class", "")).lower())
                ref = str(event.get("ref", ""))
                if cls is None:
                    continue
                if event.get("operation") == "del":
                    key = self._refs.pop(ref, None)
                    if key is not None:
                        self._records[key[0]].pop(key[1], None)
                        if key[0] == "task":
                            self.deleted_tasks.append(key[1])
                    continue
                snapshot = event.get("snapshot")
                if isinstance(snapshot, dict) and "uuid" in snapshot:
                    self._refs[ref] = (cls, snapshot["uuid"])
                    self._records[cls][snapshot["uuid"]] = snapshot
            self.events += len(events)
            self.changed.notify_all()

    def counts_agree(self, counts: dict[str, Any]) -> bool:
        """Whether `valid_ref_counts` (class lower-case -> int) match the cache."""
        with self.changed:
            return all(int(counts.get(c.lower(), len(r))) == len(r)
                       for c, r in self._records.items())

    def invalidate(self, problem: str) -> None:
        with self.changed:
            self.valid, self.problem = False, problem
            self.changed.notify_all()


class EventLoop:
    """Keeps a PoolCache current from its own PoolClient (own session), in a thread."""

    def __init__(self, client: PoolClient, cache: PoolCache,
                 timeout: float = EVENT_TIMEOUT, retry_after: float = RETRY_AFTER,
                 on_certificate_refused: Callable[[], bool] | None = None) -> None:
        self.client, self.cache = client, cache
        # asked for pins anew when a host presents another certificate (a re-pin)
        self.on_certificate_refused = on_certificate_refused
        self.timeout, self.retry_after = timeout, retry_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token = ""

    def refetch(self) -> None:
        """Inject a token on the pool, then read every watched class whole. A session
        replaced meanwhile (refs from two sessions) → SessionInvalid, read again."""
        pools = self.client.call("pool.get_all")
        if not isinstance(pools, list) or len(pools) != 1:
            raise XapiError(f"pool {self.client.label}: {len(pools)} pool objects, not one",
                            retryable=True)
        pool_ref = pools[0]
        read = self.cache.begin_read()
        logins = self.client.logins  # after the call that may have logged in again
        token = self.client.call("event.inject", "pool", pool_ref)
        snapshot = {c: self.client.call(f"{c}.get_all_records") for c in self.cache.classes}
        if self.client.logins != logins:
            raise SessionInvalid("the session was replaced during the full read")
        self.cache.replace(snapshot, read)
        self._token = token

    def follow(self) -> None:
        """One `event.from`; its events applied. Raises EventsLost when a full read is
        due (a new session, counts that disagree) and what the call raised."""
        logins = self.client.logins
        classes = [c.lower() for c in self.cache.classes]
        # no re-login here: a new session has new refs, so SESSION_INVALID means a full read
        result = self.client.call("event.from", classes, self._token, float(self.timeout),
                                  relogin=False)
        if self.client.logins != logins:
            raise EventsLost("a new session: its refs are new")
        self.cache.apply(result["events"])
        self._token = result["token"]
        if not self.cache.counts_agree(result["valid_ref_counts"]):
            raise EventsLost("the pool's object counts differ from the cache's")

    def run(self) -> None:
        """Until `stop`: read everything, then follow events; read again when due."""
        stale, failures = True, 0
        while not self._stop.is_set():
            try:
                if stale:
                    self.refetch()
                    stale, failures = False, 0
                self.follow()
            except (EventsLost, SessionInvalid) as e:
                log.info("pool %s: reading everything again: %s", self.client.label, e)
                stale = True
            except XapiError as e:
                if self._stop.is_set():
                    break
                if e.code == "HOST_IS_SLAVE":  # the master moved: connect() follows it
                    log.info("pool %s: %s", self.client.label, e)
                    self.client.close()
                    stale = True
                    continue
                log.warning("pool %s: %s", self.client.label, e)
                self.cache.invalidate(str(e))
                # new pins from the region (an operator re-pinned): reconnect with them at once
                repinned = bool(isinstance(e, CertificateMismatch)
                                and self.on_certificate_refused
                                and self.on_certificate_refused())
                stale, failures = True, 0 if repinned else failures + 1
                self.client.close()
                if failures > 1:  # the first failure reconnects at once (maybe elsewhere)
                    # a refused certificate asks the region at each try: a re-pin is taken
                    # within one retry, not after the long wait of other lasting errors
                    soon = e.retryable or isinstance(e, CertificateMismatch)
                    self._stop.wait(self.retry_after if soon else 6 * self.retry_after)
            except Exception as e:  # noqa: BLE001 - a malformed answer must not end the loop
                log.exception("pool %s: unexpected failure of the event loop", self.client.label)
                self.cache.invalidate(f"unexpected failure: {e!r}")
                stale = True
                self.client.close()
                self._stop.wait(self.retry_after)

    @property
    def alive(self) -> bool:
        """Whether the loop's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"xapi-events-{self.client.label}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and log out. A blocked event.from ends at its timeout, or at
        once when the session is closed elsewhere; the thread is joined."""
        self._stop.set()
        self.client.interrupt()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.client.close()
