"""The controller's process-wide state: settings, database sessions, CA, and change notices."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from agent.protocol import StorageSettings
from controller.config import ControllerConfig
from controller.eventhub import EventHub
from controller.ha.fencer import RegionFencer
from controller.ha.storage_watch import StorageWatch
from controller.pki import RegionCA
from controller.secretbox import RegionKey
from controller.services.heartbeats import HeartbeatBook
from controller.services.login import HashSlots
from controller.services.pace import RegionPace


class ChangeNotifier:
    """Wakes the long-polls of exactly the nodes whose desired state changed.

    A waiter registers for its node before it reads the database, so a change
    committed between its read and its wait is not missed; a notice wakes only
    that node's waiters, and nothing re-reads the database on a timer: at 10,000
    waiting nodes a change costs one wake-up, not 10,000 queries. Notices are
    in-process; those of other processes arrive through controller.notices.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._count = 0  # events in _waiters, kept so that counting costs nothing
        # told how many wait after each change of that number (controller.metrics)
        self.on_waiting: Callable[[int], object] | None = None

    def notify(self, node_ids: Iterable[str]) -> None:
        """Wake every waiter of these nodes (after the change was committed)."""
        with self._lock:
            events = [e for n in node_ids for e in self._waiters.get(n, ())]
        for event in events:
            event.set()

    def notify_all(self) -> list[str]:
        """Wake every waiter (a change may have gone unheard); returns their nodes."""
        with self._lock:
            node_ids = list(self._waiters)
        self.notify(node_ids)
        return node_ids

    @contextmanager
    def watch(self, node_id: str) -> Iterator[threading.Event]:
        """An event set by the next notice for `node_id`, registered while the block runs."""
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(node_id, set()).add(event)
            self._count += 1
            count = self._count
        self._counted(count)
        try:
            yield event
        finally:
            with self._lock:
                waiters = self._waiters.get(node_id)
                if waiters is not None and event in waiters:
                    waiters.discard(event)
                    self._count -= 1
                    if not waiters:
                        del self._waiters[node_id]
                count = self._count
            self._counted(count)

    def _counted(self, count: int) -> None:
        if self.on_waiting is not None:
            self.on_waiting(count)

    def waiting(self) -> int:
        """How many long-polls wait right now (for status and benchmarks)."""
        with self._lock:
            return self._count


@dataclass
class Region:
    config: ControllerConfig
    engine: Engine
    sessions: sessionmaker[Session]  # writes (and reads that lead to a write)
    reads: sessionmaker[Session]  # reads only: never wait for SQLite's write lock
    ca: RegionCA
    notifier: ChangeNotifier
    ca_sha256: str
    storage: StorageSettings
    pace: RegionPace  # from the settings: the region's size sets the agents' pace
    origin: str  # this process in change notices to other processes (controller.notices)
    login_slots: HashSlots  # password hashes at once in this process (config.login_limits)
    region_key: RegionKey  # seals the secrets kept at rest (controller.secretbox)
    events: EventHub  # feeds the event streams of this process (/api/v1/events)
    heartbeats: HeartbeatBook = field(default_factory=HeartbeatBook)
    # nodes' storage heartbeats as this process last read them (Ceph regions only)
    storage_watch: StorageWatch | None = None
    # fences lost nodes (BMC power, Ceph blocklist) for the failover (controller.ha)
    fencer: RegionFencer | None = None
