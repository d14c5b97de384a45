"""The audit trail: every mutating action, who asked, and how it ended, in a hash chain.

`record` adds an entry to the caller's transaction; when that transaction commits, its
entries are chained: the chain's head row is locked (SELECT ... FOR UPDATE on PostgreSQL;
SQLite's write transactions take turns already), the entries get the next sequence numbers
and their hashes, and the head moves, all in the same transaction. So entries commit or
roll back with their action, several processes append without forks, and a rolled-back
transaction leaves neither an entry nor a gap. The request's source address and token
come from `acting`, set by the API around each handler (see docs/audit.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, insert, select, update
from sqlalchemy.orm import Session

from controller.db.models import AuditChainHead, AuditEvent, utcnow
from controller.db.session import READ_ONLY, ReadOnlySessionError
from controller.services.audit_chain import (
    FIELDS,
    GENESIS,
    ChainVerifier,
    chain_hash,
    plain,
)

_PENDING = "vauban.audit_pending"  # session.info: entries waiting for the commit
HEAD_ID = 1
BATCH = 1000  # entries read per query when walking the chain


@dataclass(frozen=True)
class AuditContext:
    """Who stands behind the entries recorded meanwhile, beyond the actor's name.

    `source`: the client's address; `token_id`: the id of the API token used (never the
    secret); `project` and `admin_in_project`: the project acted in, and whether an
    administrator acted inside a customer's project (None until projects exist)."""

    source: str | None = None
    token_id: str | None = None
    project: str | None = None
    admin_in_project: bool | None = None


_NO_REQUEST = AuditContext()  # the controller's own work: no address, no token
_context: ContextVar[AuditContext | None] = ContextVar("vauban_audit_context", default=None)


@contextmanager
def acting(context: AuditContext) -> Iterator[None]:
    """Entries recorded inside the block carry `context` (per thread and greenlet)."""
    token = _context.set(context)
    try:
        yield
    finally:
        _context.reset(token)


def in_project(project: str, admin_in_project: bool) -> None:
    """Entries recorded from now on in this request name `project`, and whether an
    administrator acts there by a region role only. Outside a request, nothing changes."""
    ctx = _context.get()
    if ctx is not None:
        _context.set(replace(ctx, project=project, admin_in_project=admin_in_project))


def current() -> AuditContext:
    """The context entries recorded now would carry."""
    return _context.get() or _NO_REQUEST


def record(
    db: Session, actor: str, action: str, target: str, outcome: str = "accepted", **detail: Any
) -> None:
    """Add an audit entry to the caller's transaction: it commits or rolls back with the
    action, and is chained at the commit. ReadOnlySessionError in a read session."""
    if db.info.get(READ_ONLY):
        raise ReadOnlySessionError("an audit entry needs a write session")
    ctx = current()
    db.info.setdefault(_PENDING, []).append({
        "actor": actor, "token_id": ctx.token_id, "source": ctx.source, "action": action,
        "target": target, "project": ctx.project, "admin_in_project": ctx.admin_in_project,
        "outcome": outcome, "detail": plain(detail),
    })


def record_now(sessions: Any, actor: str, action: str, target: str, outcome: str,
               **detail: Any) -> None:
    """Record a refused or failed action in its own transaction (the action's was rolled back)."""
    with sessions() as db, db.begin():
        record(db, actor, action, target, outcome, **detail)


def _chain_pending(session: Session) -> None:
    """Before the outermost commit: chain the transaction's entries onto the head."""
    if not session.info.get(_PENDING) or session.in_nested_transaction():
        return
    pending: list[dict[str, Any]] = session.info.pop(_PENDING)
    # the action's own rows first: their locks are taken before the chain's, never after,
    # so an append holding the head waits for nothing else (no deadlock between workers)
    session.flush()
    seq, prev = session.execute(
        select(AuditChainHead.seq, AuditChainHead.hash)
        .where(AuditChainHead.id == HEAD_ID).with_for_update()).one()
    rows = []
    for entry in pending:
        seq += 1
        row = {**entry, "seq": seq, "at": utcnow(), "prev_hash": prev}
        row["hash"] = prev = chain_hash(prev, row)
        rows.append(row)
    session.execute(insert(AuditEvent), rows)
    session.execute(update(AuditChainHead).where(AuditChainHead.id == HEAD_ID)
                    .values(seq=seq, hash=prev))


def _drop_pending(session: Session, previous: Any) -> None:
    # the whole transaction rolled back: its entries go with it (a savepoint's do not)
    if not previous.nested and previous.parent is None:
        session.info.pop(_PENDING, None)


event.listen(Session, "before_commit", _chain_pending)
event.listen(Session, "after_soft_rollback", _drop_pending)


def as_dict(e: AuditEvent) -> dict[str, Any]:
    """An entry's hashed fields with its link and hash, as the chain and exports see them."""
    entry = {name: getattr(e, name) for name in FIELDS}
    entry["prev_hash"], entry["hash"] = e.prev_hash, e.hash
    return entry


def head(db: Session) -> tuple[int, str]:
    """The chain's head: its last entry's sequence number and hash (0 and GENESIS if none).

    LookupError if the head row is gone (someone deleted it)."""
    found = db.execute(select(AuditChainHead.seq, AuditChainHead.hash)
                       .where(AuditChainHead.id == HEAD_ID)).one_or_none()
    if found is None:
        raise LookupError("the audit chain's head row is missing")
    return int(found[0]), str(found[1])


def entries(db: Session, after: int, upto: int | None = None) -> Iterator[AuditEvent]:
    """Entries with sequence numbers above `after` (up to `upto`), in order, BATCH at a time."""
    while True:
        stmt = select(AuditEvent).where(AuditEvent.seq > after)
        if upto is not None:
            stmt = stmt.where(AuditEvent.seq <= upto)
        batch = list(db.scalars(stmt.order_by(AuditEvent.seq).limit(BATCH)))
        yield from batch
        db.expunge_all()  # constant memory however long the chain
        if len(batch) < BATCH:
            return
        after = batch[-1].seq


def verify(db: Session) -> tuple[ChainVerifier, tuple[int, str] | None]:
    """Walk the whole chain in order and check it against its head; returns the verifier
    (its findings name each break) and the head (None if its row is missing, a finding too).

    Entries appended meanwhile are walked too: the head is read after the walk, and the
    walk goes on until it reaches a head read after it."""
    verifier = ChainVerifier()
    read_head: tuple[int, str] | None = None
    while True:
        walked = 0
        for e in entries(db, verifier.last_seq):
            verifier.feed(as_dict(e))
            walked += 1
        if read_head is not None and walked == 0:
            break
        try:
            read_head = head(db)
        except LookupError as e:
            verifier.note(0, "head", str(e))
            return verifier, None
        if read_head[0] <= verifier.last_seq:
            break
    verifier.finish(*read_head)
    return verifier, read_head


def first_since(db: Session, since: datetime) -> int | None:
    """The sequence number of the first entry made at or after `since`, None if none."""
    # in UTC: SQLite compares the stored text, which is UTC and carries no zone
    found = db.scalar(select(AuditEvent.seq).where(AuditEvent.at >= since.astimezone(UTC))
                      .order_by(AuditEvent.seq).limit(1))
    return None if found is None else int(found)


def anchor_before(db: Session, seq: int) -> tuple[int, str]:
    """The entry an export starting at `seq` is anchored to: the last one before `seq`, as
    (its seq, its hash); (0, GENESIS) if none. Were entry `seq - 1` removed, the anchor is
    an earlier one, and verifying the export reports the gap."""
    found = db.execute(select(AuditEvent.seq, AuditEvent.hash).where(AuditEvent.seq < seq)
                       .order_by(AuditEvent.seq.desc()).limit(1)).one_or_none()
    return (0, GENESIS) if found is None else (int(found[0]), str(found[1]))
