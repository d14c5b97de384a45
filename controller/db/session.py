"""Engine and sessions: SQLite in WAL mode by default, PostgreSQL by URL.

Two kinds of session: read sessions never take SQLite's write lock (so reads
do not queue behind writes) and refuse to flush; write sessions take it up
front. A transaction that changed nodes' desired states names them in
`session.info[CHANGED_NODES]`; once it commits, `on_commit` hears of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, UOWTransaction, sessionmaker

WRITE_LOCK_WAIT_S = 30.0  # as long as SQLite's own busy timeout
_HOLDS_WRITE_LOCK = "vauban.holds_write_lock"  # connection.info: released at its end
CHANGED_NODES = "vauban.changed_nodes"  # session.info: node ids whose desired state changed
READ_ONLY = "vauban.read_only"  # execution option and session.info flag of read sessions


class ReadOnlySessionError(RuntimeError):
    """A read session was asked to write: a programming error, never the caller's."""


def make_engine(url: str, pool_size: int = 10, max_overflow: int = 20,
                pool_timeout: float = 30.0) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys and a busy timeout on every
    connection. On PostgreSQL a request finds no free connection within `pool_timeout`
    seconds raises sqlalchemy.exc.TimeoutError (answered 503 by the API)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's own transaction handling would defer BEGIN; we issue it ourselves below
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        # One writer at a time in this process, waited for in Python: SQLite waits for its
        # lock inside C, which under gevent stops the whole event loop, so the writer that
        # holds the lock (and yielded, e.g. hashing a password on a thread) never resumes
        # to release it, and every request stalls until the busy timeout (seen: 30 s).
        writers = threading.Lock()  # gevent's cooperative lock once threading is patched

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            if conn.get_execution_options().get(READ_ONLY):
                # a WAL reader sees one snapshot and never blocks or waits for the writer
                conn.exec_driver_sql("BEGIN DEFERRED")
                return
            if not writers.acquire(timeout=WRITE_LOCK_WAIT_S):
                raise TimeoutError(f"no write to the database for {WRITE_LOCK_WAIT_S:.0f} s: "
                                   "another transaction holds it")
            conn.info[_HOLDS_WRITE_LOCK] = True
            try:
                # a writer takes the lock up front: a deferred read that later writes can
                # fail with BUSY
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                _end(conn)
                raise

        @event.listens_for(engine, "commit")
        @event.listens_for(engine, "rollback")
        def _end(conn: Any) -> None:
            # COMMIT or ROLLBACK follows at once, with no switch to another greenlet between
            if conn.info.pop(_HOLDS_WRITE_LOCK, False):
                writers.release()

        @event.listens_for(engine, "checkin")
        @event.listens_for(engine, "invalidate")
        def _returned(_dbapi_conn: Any, record: Any, *_rest: Any) -> None:
            # a connection dropped mid-transaction (never committed nor rolled back through
            # SQLAlchemy) is rolled back by the pool: its lock must not outlive it
            if record is not None and record.info.pop(_HOLDS_WRITE_LOCK, False):
                writers.release()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size,
                         max_overflow=max_overflow, pool_timeout=pool_timeout)


def make_sessionmaker(engine: Engine,
                      on_commit: Callable[[set[str]], None] = lambda _ids: None,
                      before_commit: Callable[[Session, set[str]], None] | None = None,
                      ) -> sessionmaker[Session]:
    """Write sessions; each commit that changed desired states calls `on_commit(node ids)`
    after it, and `before_commit(session, node ids)` inside the transaction, before it."""
    factory = sessionmaker(engine, expire_on_commit=False)

    if before_commit is not None:
        announce = before_commit

        @event.listens_for(factory, "before_commit")
        def _committing(session: Session) -> None:
            changed = session.info.get(CHANGED_NODES)
            if changed:
                announce(session, set(changed))

    @event.listens_for(factory, "after_commit")
    def _committed(session: Session) -> None:
        changed = session.info.pop(CHANGED_NODES, None)
        if changed:
            on_commit(changed)

    @event.listens_for(factory, "after_soft_rollback")
    def _rolled_back(session: Session, previous: Any) -> None:
        # a savepoint rolled back leaves the bumps made before it to commit
        if not previous.nested and previous.parent is None:
            session.info.pop(CHANGED_NODES, None)

    return factory


def make_read_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Read sessions: no write lock on SQLite; a flush raises ReadOnlySessionError."""
    factory = sessionmaker(engine.execution_options(**{READ_ONLY: True}),
                           expire_on_commit=False, info={READ_ONLY: True})

    @event.listens_for(factory, "before_flush")
    def _refuse(session: Session, _flush: UOWTransaction, _instances: Any) -> None:
        if session.new or session.dirty or session.deleted:
            raise ReadOnlySessionError("a read session cannot write; use a write session")

    return factory


def mark_changed(session: Session, node_id: str) -> None:
    """Record that this transaction changed `node_id`'s desired state (woken on commit)."""
    session.info.setdefault(CHANGED_NODES, set()).add(node_id)
