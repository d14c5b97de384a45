"""VM consoles: single-use tickets, and the states of a console's tunnel in the database.

A user asks for a ticket (`issue`); its websocket then spends it (`spend`), which tells the
VM's node (a change notice on `wake_key(node)`, heard by the agent's console long-poll,
`dispatch`); the agent dials back (`claim`) and the two sockets are spliced
(controller/consoles.py); `close` records how it ended. Each step is one conditional
UPDATE, so two callers racing for the same step cannot both win, in any number of
processes. Only the ticket's SHA-256 is kept.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from agent.protocol import ConsoleRequest
from controller.db.models import ConsoleSession, Instance, Node, User, utcnow
from controller.db.session import mark_changed
from controller.errors import Conflict, ServiceError
from controller.services import audit
from controller.services.nodes import node_state

TICKET_TTL_S = 30.0  # a ticket not spent by then is refused
AGENT_ANSWER_S = 15.0  # a node's agent that has not dialed back by then: the console ends
KEEP_CLOSED_S = 7 * 86400.0  # ended sessions are deleted after this (the audit trail stays)
# a session still waiting for its agent this long after its ticket was spent lost the process
# that held the user's side (that process gives up on the agent after AGENT_ANSWER_S)
ABANDONED_AFTER_S = AGENT_ANSWER_S + 60.0
WAKE_PREFIX = "console:"  # change notices for a node's console long-poll, not its desired state


class TicketRefused(ServiceError):
    """The ticket cannot open a console: unknown, spent, expired or another user's."""

    status = 403
    title = "Console ticket refused"
    slug = "console-ticket-refused"


class ConsoleUnavailable(Conflict):
    """The VM is not where a console can reach it (not running, being deleted)."""

    title = "Console unavailable"
    slug = "console-unavailable"


@dataclass(frozen=True)
class Issued:
    session: ConsoleSession
    ticket: str  # the only time the ticket itself exists on the controller


def ticket_hash(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def wake_key(node_id: str) -> str:
    """The key the node's console long-poll waits on in the region's ChangeNotifier."""
    return WAKE_PREFIX + node_id


def issue(db: Session, user: User, actor: str, inst: Instance, kind: str,
          node_down_after_s: float, now: datetime | None = None) -> Issued:
    """A new ticket for `user` to open `inst`'s console of `kind`, valid TICKET_TTL_S, added
    to the caller's transaction with its audit entry. ConsoleUnavailable (409, nothing
    added) when the VM is being deleted, when its node is silent (its agent could not
    answer: what it last said of the VM may no longer hold), or, but for its log, when it
    is not running on its node."""
    now = now or utcnow()
    if inst.deleting:
        raise ConsoleUnavailable(f"VM '{inst.name}' is being deleted: it has no console")
    node = db.get(Node, inst.node_id) if inst.node_id is not None else None
    if node is not None and node_state(node, now, node_down_after_s) != "up":
        raise ConsoleUnavailable(f"VM '{inst.name}' is on node '{node.name}', which is "
                                 f"{node_state(node, now, node_down_after_s)}: its agent "
                                 "cannot open the console", state="node-down")
    if kind != "log" and inst.observed_state != "running":
        state = inst.observed_state or "not created yet"
        raise ConsoleUnavailable(f"VM '{inst.name}' is {state} on node "
                                 f"'{_node_name(db, inst.node_id)}': a console needs it "
                                 "running (vauban vm start)", state=state)
    db.execute(delete(ConsoleSession).where(
        ConsoleSession.created_at < now - timedelta(seconds=KEEP_CLOSED_S)))
    ticket = secrets.token_urlsafe(32)
    row = ConsoleSession(ticket_sha256=ticket_hash(ticket), kind=kind, instance_id=inst.id,
                         node_id=inst.node_id, user_id=user.id, state="issued",
                         created_at=now, expires_at=now + timedelta(seconds=TICKET_TTL_S))
    db.add(row)
    db.flush()
    audit.record(db, actor, "console.ticket", f"instance/{inst.id}", name=inst.name,
                 kind=kind, console=row.id)
    return Issued(row, ticket)


def _node_name(db: Session, node_id: str) -> str:
    node = db.get(Node, node_id)
    return node.name if node is not None else node_id


def find_ticket(db: Session, ticket: str) -> ConsoleSession | None:
    return db.scalar(select(ConsoleSession).where(
        ConsoleSession.ticket_sha256 == ticket_hash(ticket)))


def spend(db: Session, ticket: str, user_id: str, now: datetime | None = None
          ) -> ConsoleSession:
    """Spend the ticket for `user_id`: the session moves to "waiting" and its node's console
    long-poll is woken once the caller commits. TicketRefused, with nothing changed, when the
    ticket is unknown, spent, expired or was made for another user; of two callers racing
    for one ticket, exactly one wins."""
    now = now or utcnow()
    row = find_ticket(db, ticket)
    if row is None or row.user_id != user_id:
        # another user's ticket reads as an unknown one: nothing confirms it exists
        raise TicketRefused("this console ticket is unknown; ask for a new one")
    if row.state != "issued":
        raise TicketRefused("this console ticket was used already; each is good for one "
                            "connection: ask for a new one")
    if _aware(row.expires_at) <= now:
        raise TicketRefused(f"this console ticket expired (a ticket is good for "
                            f"{TICKET_TTL_S:.0f} s): ask for a new one")
    won = db.execute(update(ConsoleSession).where(
        ConsoleSession.id == row.id, ConsoleSession.state == "issued",
        ConsoleSession.expires_at > now).values(state="waiting", connected_at=now)
        .execution_options(synchronize_session=False))
    if won.rowcount != 1:  # type: ignore[attr-defined]
        raise TicketRefused("this console ticket was used already; each is good for one "
                            "connection: ask for a new one")
    mark_changed(db, wake_key(row.node_id))
    db.refresh(row)
    return row


def _aware(at: datetime) -> datetime:
    """SQLite gives naive datetimes back (stored in UTC)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def dispatch(db: Session, node_id: str) -> list[ConsoleRequest]:
    """The node's waiting console sessions, marked "dispatched" in the caller's transaction:
    each is handed to one long-poll only."""
    rows = db.execute(update(ConsoleSession).where(
        ConsoleSession.node_id == node_id, ConsoleSession.state == "waiting")
        .values(state="dispatched")
        .returning(ConsoleSession.id, ConsoleSession.kind, ConsoleSession.instance_id)
        .execution_options(synchronize_session=False)).all()
    return [ConsoleRequest.model_validate({"id": r[0], "kind": r[1], "vm_id": r[2]})
            for r in rows]


def waiting_for(db: Session, node_id: str) -> bool:
    """Whether a console session of the node waits for its agent to be told."""
    return db.scalar(select(ConsoleSession.id).where(
        ConsoleSession.node_id == node_id, ConsoleSession.state == "waiting").limit(1)) \
        is not None


def claim(db: Session, session_id: str, node_id: str) -> bool:
    """The agent of `node_id` dialed back for `session_id`: True (now "connected") only if
    the session is that node's and was handed to its agent and not given up since."""
    won = db.execute(update(ConsoleSession).where(
        ConsoleSession.id == session_id, ConsoleSession.node_id == node_id,
        ConsoleSession.state == "dispatched").values(state="connected")
        .execution_options(synchronize_session=False))
    return won.rowcount == 1  # type: ignore[attr-defined]


def note_reason(db: Session, session_id: str, reason: str) -> None:
    """Keep why the node's side ended (the agent's words) for the user's side to tell."""
    db.execute(update(ConsoleSession).where(ConsoleSession.id == session_id)
               .values(close_reason=reason[:1000])
               .execution_options(synchronize_session=False))


def reason_of(db: Session, session_id: str) -> str | None:
    return db.scalar(select(ConsoleSession.close_reason).where(
        ConsoleSession.id == session_id))


def close(db: Session, session_id: str, actor: str, outcome: str, reason: str,
          to_guest: int, from_guest: int, now: datetime | None = None) -> None:
    """Record the end of a console with its duration and bytes (in the caller's
    transaction, with its audit entry); a session closed already is left as it was."""
    now = now or utcnow()
    row = db.get(ConsoleSession, session_id)
    if row is None or row.state == "closed":
        return
    opened = _aware(row.connected_at) if row.connected_at is not None else now
    row.state, row.closed_at = "closed", now
    row.close_reason = reason[:1000]
    audit.record(db, actor, "console.close", f"instance/{row.instance_id}", outcome,
                 kind=row.kind, console=row.id, reason=reason,
                 duration_s=round((now - opened).total_seconds(), 1),
                 bytes_to_guest=to_guest, bytes_from_guest=from_guest)


def close_abandoned(db: Session, now: datetime | None = None) -> int:
    """Close, failed and audited, the sessions left waiting for their agent by a controller
    process that ended (crashed, killed) while it held the user's side; how many. Several
    processes sweep at once: each session is closed by one."""
    now = now or utcnow()
    rows = db.scalars(select(ConsoleSession).where(
        ConsoleSession.state.in_(("waiting", "dispatched")),
        ConsoleSession.connected_at < now - timedelta(seconds=ABANDONED_AFTER_S))
        .with_for_update(skip_locked=True)).all()
    for row in rows:
        close(db, row.id, "controller", "failed", "the controller process holding the "
              "user's side ended before the node's agent answered", 0, 0, now)
    return len(rows)
