"""The storage backend's state, sampled on a thread of its own so that reports never wait on it.

A *sample* is one round of questions to the storage driver: its health and pools, its
free bytes, and the volumes as the reconciler observes them in storage. The sampler
asks them every `interval_s` and whenever `request()` is called, one round at a time,
and keeps the answers of the last round that ended. A question that raises is an
answer too: the backend said it cannot (health "UNREACHABLE" with the error, free
bytes 0, volumes None).

`latest()` never waits on storage. What it returns:

- the last answers, while the last round ended less than `stale_after_s` ago
  (STALE_INTERVALS intervals);
- no storage status, free bytes 0 and volumes None before the first round has ended,
  within that bound of `start()`;
- otherwise the sample is *stale*: a round is hanging (a Ceph cluster that does not
  answer makes each call wait for its operation timeout) or the thread is not running.
  Then health is "UNREACHABLE" with a detail saying for how long there has been no
  answer, free bytes are 0 and volumes None: unknown, never "no volumes". The age
  shown is a step (the bound, doubled each time it is passed) and the time of the
  last answer, so the report's content changes rarely while the outage lasts (a report
  that says nothing new costs the controller no transaction; see
  controller/services/heartbeats.py).

`on_change` is called after the first round, after a round that ends a stale spell, and
after a round whose volumes say something new (not the bytes they use: the agent's own
actions change volumes, and the controller waits on those reports). Health and space
move by themselves (a recovering cluster changes its detail every few seconds) and are
reported with the next heartbeat, so that a report's own request for a round cannot
bring on another report, and so on without end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.drivers.storage.base import StorageDriver
from agent.protocol import ObservedVolume, PoolUsage, StorageStatus

log = logging.getLogger(__name__)

STALE_INTERVALS = 3  # a sample older than this many intervals is no answer
UNREACHABLE = "UNREACHABLE"


@dataclass(frozen=True)
class StorageView:
    """What a report says of storage. None: not known (not: nothing there)."""

    storage: StorageStatus | None
    free_bytes: int  # 0 when unknown
    volumes: list[ObservedVolume] | None


@dataclass(frozen=True)
class _Sample:
    answered_at: float  # the sampler's clock when the round ended
    answered_wall: datetime
    view: StorageView


class StorageSampler:
    """Samples `storage` (and the `volumes` observed in it) on its own thread."""

    def __init__(self, storage: StorageDriver, driver: str,
                 volumes: Callable[[], list[ObservedVolume]], interval_s: float,
                 on_change: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.storage = storage
        self.driver = driver
        self.volumes = volumes
        self.interval_s = interval_s
        self.stale_after_s = STALE_INTERVALS * interval_s
        self.on_change = on_change
        self.clock = clock
        self._lock = threading.Lock()
        self._sample: _Sample | None = None
        self._started_at = clock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sampling: a first round at once, then one per interval or request."""
        self._started_at = self.clock()
        self._thread = threading.Thread(target=self._run, name="storage-sampler", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Ask for a round that starts after this call; returns at once."""
        self._wake.set()

    def stop(self) -> None:
        """No round starts after this call; returns at once (see `join`)."""
        self._stopping.set()
        self._wake.set()

    def join(self) -> None:
        """Wait for the thread to end after `stop`: a round in flight ends first (at worst
        when the driver's calls time out), so the driver is no longer used afterwards."""
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.sample_once()
            except Exception:  # a bug here must not end sampling: reports would go stale
                log.exception("storage sample failed")
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def sample_once(self) -> None:
        """One round on the calling thread; afterwards `latest()` shows its answers."""
        view = StorageView(self._health(), self._free_bytes(), self._volumes())
        sample = _Sample(self.clock(), datetime.now(UTC), view)
        with self._lock:
            before = self._sample
            self._sample = sample
        since = before.answered_at if before is not None else self._started_at
        if (before is None or _events(before.view) != _events(view)
                or sample.answered_at - since > self.stale_after_s):
            self.on_change()

    def latest(self) -> StorageView:
        """The storage state to report now, without waiting (see the module docstring)."""
        with self._lock:
            sample = self._sample
        since = sample.answered_at if sample is not None else self._started_at
        age = self.clock() - since
        if age > self.stale_after_s:
            last = (f"last answer at {sample.answered_wall:%Y-%m-%d %H:%M:%S} UTC"
                    if sample is not None else "none since the agent started")
            detail = (f"no answer from the storage backend for over "
                      f"{_step(age, self.stale_after_s):.0f} s ({last})")
            return StorageView(StorageStatus(driver=self.driver, health=UNREACHABLE,
                                             detail=detail), 0, None)
        return sample.view if sample is not None else StorageView(None, 0, None)

    def _health(self) -> StorageStatus:
        try:
            h = self.storage.health()
        except Exception as e:
            return StorageStatus(driver=self.driver, health=UNREACHABLE, detail=str(e))
        return StorageStatus(driver=self.driver, health=h.status, detail=h.detail,
                             pools=[PoolUsage(pool=p.pool, used_bytes=p.used_bytes,
                                              max_avail_bytes=p.max_avail_bytes)
                                    for p in h.pools])

    def _free_bytes(self) -> int:
        try:
            return self.storage.free_bytes()
        except Exception as e:
            log.warning("storage free space unknown: %s", e)
            return 0

    def _volumes(self) -> list[ObservedVolume] | None:
        try:
            return self.volumes()
        except Exception as e:
            log.warning("volumes unknown: %s", e)
            return None


def _events(view: StorageView) -> Any:
    """What the volumes of a view say has happened: all but the bytes they use."""
    if view.volumes is None:
        return None
    return [v.model_dump(exclude={"used_bytes"}) for v in view.volumes]


def _step(age: float, bound: float) -> float:
    """The largest of bound, 2 x bound, 4 x bound... that `age` (> bound) exceeds."""
    step = bound
    while 0 < step and step * 2 < age:
        step *= 2
    return step
