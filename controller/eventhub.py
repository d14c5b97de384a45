"""The event stream's hub: one reader per process hands new events to every subscriber.

However many clients watch, the process reads each new event once: the hub sleeps until
woken (a commit in this process that wrote events, or a notice from another process on
CHANNEL), reads the rows after the last it read, and offers each to every subscriber that
may see it and asked for its type (controller.services.events.visible_to). A subscriber's
queue is bounded: one that falls QUEUE behind is told so and dropped, and its client
resumes with Last-Event-ID, losing nothing that is still kept.

Ids from a PostgreSQL sequence are taken before their transaction commits, so an event
may commit after one with a higher id was read. The hub remembers the ids it skipped
over (gaps) for GAP_S seconds and reads again from the oldest of them, delivering each
gap that shows up; an id still missing after GAP_S belonged to a transaction that rolled
back (its events are written at the very end of a transaction: a commit that takes longer
than GAP_S after them is not expected). SQLite writes one transaction at a time: no gaps.

SQLite has no notices: a process beside the server that writes events (a rollout's worker)
is heard by reading every SQLITE_LOOK_S while anyone watches (one query per process, not
per subscriber).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from controller.authz import Caller
from controller.db.models import Event, Project, as_utc
from controller.notices import NoticeListener
from controller.services import events

log = logging.getLogger(__name__)

CHANNEL = "vauban_events"
QUEUE = 1000  # events a subscriber may have waiting before it is dropped
GAP_S = 30.0
BATCH = 1000
STOP_WAIT_S = 5.0
SQLITE_LOOK_S = 2.0
MAX_GAP = 1000  # ids skipped at once that are remembered as gaps


@dataclass(frozen=True)
class Message:
    """One event as sent: its id, type, who may see it, and its text on the stream."""

    id: int
    type: str
    kind: str
    object_id: str
    project_id: str | None
    data: dict[str, Any]
    text: str


FELL_BEHIND = "fell-behind"
RECHECK = "recheck"  # the subscriber's token or user changed: look at them again
Item = Message | str


@dataclass(eq=False)
class Subscriber:
    """A client's share of the stream: what it may see, and its bounded queue."""

    caller: Caller
    kinds: frozenset[str] | None  # None: every kind
    queue: queue.Queue[Item] = field(default_factory=lambda: queue.Queue(QUEUE + 1))
    dropped: bool = False

    def wants(self, m: Message) -> bool:
        return (self.kinds is None or m.kind in self.kinds) and \
            events.visible_to(self.caller, m.project_id, m.kind, m.object_id, m.data)

    def concerns_me(self, m: Message) -> bool:
        """Whether `m` tells of this subscriber's own token or user (revoked, roles)."""
        return (m.kind == "token" and m.object_id == self.caller.token_id) or \
            (m.kind == "user" and m.object_id == self.caller.user_id)

    def offer(self, item: Item) -> None:
        if self.dropped:
            return
        if self.queue.qsize() >= QUEUE:
            self.dropped = True
            item = FELL_BEHIND  # the one place left in the queue
        self.queue.put_nowait(item)


def message(row: Event, project_name: str | None) -> Message:
    """The stream's form of an event row (docs/events.md)."""
    body = {"id": row.id, "at": as_utc(row.at).isoformat(), "type": row.type,
            "project": project_name,
            "object": {"kind": row.object_kind, "id": row.object_id, "name": row.object_name},
            "data": row.data}
    text = f"id: {row.id}\nevent: {row.type}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"
    return Message(row.id, row.type, row.object_kind, row.object_id, row.project_id,
                   row.data or {}, text)


def reset_message(position: int, reason: str) -> str:
    """`stream.reset`: events the client asked for are gone; it refetches its state."""
    body = {"id": position, "at": None, "type": "stream.reset", "project": None,
            "object": None, "data": {"reason": reason}}
    return f"id: {position}\nevent: stream.reset\ndata: " \
        f"{json.dumps(body, separators=(',', ':'))}\n\n"


class EventHub:
    """One reader of the event log per process, and the subscribers it feeds.

    Its thread (a greenlet under gevent) starts with the first subscriber; on PostgreSQL
    it also listens for the other processes' notices then.
    """

    def __init__(self, reads: sessionmaker[Session], engine: Engine | None = None,
                 origin: str = "") -> None:
        self._reads = reads
        self._engine = engine  # PostgreSQL: other processes notify on CHANNEL
        self._look_s = None if engine is not None and engine.dialect.name == "postgresql" \
            else SQLITE_LOOK_S
        self._origin = origin
        self._lock = threading.Lock()
        self._woken = threading.Event()
        self._subscribers: set[Subscriber] = set()
        self._position: int | None = None  # the highest id read
        self._gaps: dict[int, float] = {}  # id skipped over -> when (monotonic)
        self._names: dict[str, str] = {}  # project id -> name
        self._thread: threading.Thread | None = None
        self._listener: NoticeListener | None = None
        self.stopping = threading.Event()

    def wake(self) -> None:
        """New events may have committed: the reader reads them (cheap; call freely)."""
        self._woken.set()

    @contextmanager
    def subscribe(self, caller: Caller, kinds: frozenset[str] | None
                  ) -> Iterator[tuple[Subscriber, int, int]]:
        """A subscriber fed while the block runs, with the id the hub had read up to when
        it joined (every later event reaches its queue) and the lowest id that may still
        reach it too (a gap: an event that committed late)."""
        self._start()
        sub = Subscriber(caller, kinds)
        with self._lock:
            self._subscribers.add(sub)
            position = self._position_now()
            low = min(self._gaps, default=position + 1)
        try:
            yield sub, position, low
        finally:
            with self._lock:
                self._subscribers.discard(sub)

    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def _position_now(self) -> int:
        if self._position is None:
            with self._reads() as db:
                self._position = events.newest_id(db)
        return self._position

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="event-hub", daemon=True)
            self._woken.set()  # what committed since the position was taken is read at once
            self._thread.start()
            if self._engine is not None and self._engine.dialect.name == "postgresql":
                self._listener = NoticeListener(self._engine, self._origin,
                                                lambda _ids: self.wake(), self.wake,
                                                channel=CHANNEL)
                self._listener.start()

    def stop(self) -> None:
        """End the reader and the listener (within about a second: the listener waits for
        notices a second at a time); subscribers are no longer fed."""
        self.stopping.set()
        self._woken.set()
        for thread in (self._listener, self._thread):
            if isinstance(thread, NoticeListener):
                thread.stop()
            if thread is not None and thread is not threading.current_thread():
                thread.join(STOP_WAIT_S)

    def _run(self) -> None:
        while not self.stopping.is_set():
            # gaps are looked for again until they expire, even with nothing new committed
            self._woken.wait(self._wait_s())
            self._woken.clear()
            if self.stopping.is_set():
                return
            try:
                self.read_new()
            except Exception:  # the next wake reads again from where it was
                log.exception("reading new events failed; subscribers wait for the next")

    def _wait_s(self) -> float | None:
        with self._lock:
            waits = [GAP_S if self._gaps else None,
                     self._look_s if self._subscribers else None]
        return min((w for w in waits if w is not None), default=None)

    def read_new(self) -> int:
        """Read what committed since the last read and offer it; returns how many."""
        with self._lock:
            position = self._position_now()
            now = time.monotonic()
            self._gaps = {i: t for i, t in self._gaps.items() if now - t < GAP_S}
            start = min(self._gaps, default=position + 1) - 1
        sent = 0
        with self._reads() as db:
            while True:
                rows = events.after(db, start, limit=BATCH)
                messages = [message(r, self._project_name(db, r.project_id)) for r in rows]
                sent += self._hand_out(messages)
                if len(rows) < BATCH:
                    return sent
                start = rows[-1].id
                db.expunge_all()

    def _hand_out(self, messages: list[Message]) -> int:
        sent = 0
        with self._lock:
            position = self._position_now()
            now = time.monotonic()
            for m in messages:
                if m.id <= position and m.id not in self._gaps:
                    continue  # read before
                if m.id > position:
                    if m.id - position <= MAX_GAP:  # beyond: a sequence's cache jumped
                        self._gaps.update({i: now for i in range(position + 1, m.id)})
                    position = self._position = m.id
                self._gaps.pop(m.id, None)
                if m.kind == "project":
                    self._names.pop(m.object_id, None)
                for sub in self._subscribers:
                    if sub.concerns_me(m):
                        sub.offer(RECHECK)
                    if sub.wants(m):
                        sub.offer(m)
                sent += 1
        return sent

    def _project_name(self, db: Session, project_id: str | None) -> str | None:
        if project_id is None:
            return None
        name = self._names.get(project_id)
        if name is None:
            name = db.scalar(select(Project.name).where(Project.id == project_id)) or project_id
            if len(self._names) > 100_000:
                self._names.clear()
            self._names[project_id] = name
        return name

    def project_name(self, db: Session, project_id: str | None) -> str | None:
        return self._project_name(db, project_id)


def notify_other_processes(origin: str) -> Callable[[Session], None]:
    """What a transaction that wrote events runs before its commit on PostgreSQL: a NOTIFY
    on CHANNEL, delivered only if it commits."""
    from sqlalchemy import text

    def announce(db: Session) -> None:
        db.execute(text("SELECT pg_notify(:channel, :payload)"),
                   {"channel": CHANNEL, "payload": f"{origin} events"})

    return announce
