"""Change notices between controller processes that share one PostgreSQL database.

A long-poll waits in the process that took its connection (controller.region.ChangeNotifier
wakes it). When several worker processes, or several controllers, serve one region, a
change committed in one of them must wake the long-polls waiting in the others. A
transaction that changed desired states therefore also sends a NOTIFY on CHANNEL, which
PostgreSQL delivers only if that transaction commits, and every process LISTENs on one
connection of its own and wakes its local waiters for the nodes named. A process hears its
own notices too and skips them: it woke its waiters itself at commit.

A notice missed while the listening connection was down costs a node at most one poll
wait: its next long-poll reads the generation afresh. Even so, every waiter is woken once
the listener is connected again, so that nothing waits out a whole poll for a change made
during the gap.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CHANNEL = "vauban_desired"
# PostgreSQL refuses a payload of 8,000 bytes or more; node ids are 36 characters
MAX_PAYLOAD = 7_900
RECONNECT_MAX_S = 30.0


def new_origin() -> str:
    """A name for this process in its notices, unique across hosts and restarts."""
    return uuid.uuid4().hex[:16]


def payloads(origin: str, node_ids: Iterable[str]) -> list[str]:
    """The notices that name every one of `node_ids`: "<origin> id,id,...", each under
    MAX_PAYLOAD bytes. Raises ValueError for an id that could not be read back."""
    out: list[str] = []
    chunk: list[str] = []
    size = len(origin) + 1
    for node_id in sorted(set(node_ids)):
        if not node_id or "," in node_id or " " in node_id:
            raise ValueError(f"node id {node_id!r} cannot be sent in a notice")
        if chunk and size + len(node_id) + 1 > MAX_PAYLOAD:
            out.append(f"{origin} {','.join(chunk)}")
            chunk, size = [], len(origin) + 1
        chunk.append(node_id)
        size += len(node_id) + 1
    if chunk:
        out.append(f"{origin} {','.join(chunk)}")
    return out


def parse(payload: str) -> tuple[str, list[str]]:
    """(origin, node ids) of a notice; ValueError if it is not one of ours."""
    origin, sep, ids = payload.partition(" ")
    if not sep or not origin or not ids:
        raise ValueError(f"not a change notice: {payload[:80]!r}")
    return origin, ids.split(",")


def announce(session: Session, origin: str, node_ids: Iterable[str]) -> None:
    """Queue the notices in the session's transaction: sent when, and only if, it commits."""
    for payload in payloads(origin, node_ids):
        session.execute(text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": CHANNEL, "payload": payload})


class NoticeListener(threading.Thread):
    """Hears the other processes' notices and hands their node ids to `on_notice`.

    Listens on `channel` (CHANNEL unless told). Holds one connection of its own (not from
    the pool) for as long as it runs, and reconnects with a growing delay when it is lost,
    calling `on_gap()` once listening again. Runs as a greenlet under gevent (psycopg waits
    cooperatively there).
    """

    def __init__(self, engine: Engine, origin: str, on_notice: Callable[[list[str]], None],
                 on_gap: Callable[[], None], channel: str = CHANNEL) -> None:
        super().__init__(name=f"notices-{channel}", daemon=True)
        self.channel = channel
        self.args, self.kwargs = engine.dialect.create_connect_args(engine.url)
        self.origin = origin
        self.on_notice = on_notice
        self.on_gap = on_gap
        self.stopping = threading.Event()
        self.listening = threading.Event()  # set while LISTEN is in force

    def run(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                self._listen()
                delay = 1.0
            except (psycopg.Error, OSError) as e:
                self.listening.clear()
                log.warning("change notices from other controller processes are not heard "
                            "(%s); long-polls there may wait a whole poll; retrying in %.0f s",
                            str(e).strip() or type(e).__name__, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)

    def _listen(self) -> None:
        with psycopg.connect(*self.args, **self.kwargs, autocommit=True) as conn:
            conn.execute(f"LISTEN {self.channel}")
            self.listening.set()
            self.on_gap()  # anything committed before LISTEN took effect was not heard
            while not self.stopping.is_set():
                # a bounded wait so that stop() is heard within a second
                for notice in conn.notifies(timeout=1.0):
                    self._hear(notice.payload)
        self.listening.clear()

    def _hear(self, payload: str) -> None:
        try:
            origin, node_ids = parse(payload)
        except ValueError as e:
            log.warning("ignored on %s: %s", self.channel, e)
            return
        if origin != self.origin:
            self.on_notice(node_ids)

    def stop(self) -> None:
        """Ends the thread within about a second (its connection closed)."""
        self.stopping.set()
