"""VM consoles: a ticket (`POST /api/v1/instances/<ref>/consoles`), the user's websocket
(`/api/v1/consoles/<ticket>`) and the agent's dial-back (`/agent/v1/nodes/<id>/consoles/<id>`).

See docs/consoles.md for the whole flow; the database steps are in
controller/services/consoles.py, the relaying in controller/consoles.py.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, g, request
from pydantic import Field
from simple_websocket import Server

from agent.protocol import CONSOLE_FAILED, ConsoleKind, UtcDatetime
from controller import consoles as relay
from controller.api import auth as api_auth
from controller.api import cookies
from controller.api.agent import protocol_refusal
from controller.api.context import db, region
from controller.api.framework import ApiBlueprint, actor
from controller.api.problems import problem
from controller.authz import CONSOLE
from controller.db.models import ConsoleSession, Instance, User
from controller.schemas import Input, Output
from controller.services import audit, tenancy
from controller.services import consoles as service
from controller.services import instances as instance_service

log = logging.getLogger(__name__)

api = ApiBlueprint("consoles", "/api/v1/instances", "instances")
sockets = Blueprint("console_sockets", __name__)
WEBSOCKET_PATH = "/api/v1/consoles/"
AGENT_GONE = 1011  # close code: the node's side never came, or broke


class ConsoleCreate(Input):
    """Ask for a console of a running VM."""

    kind: ConsoleKind = Field(
        examples=["vnc"], description="vnc: the graphical console (RFB, as noVNC speaks it); "
        "serial: the serial console (raw terminal bytes, read and type); log: the serial "
        "log's last 256 KiB, sent once, then the end (the VM may be stopped)")


class ConsoleTicket(Output):
    """A ticket for one connection to a VM's console, by the user who asked, within
    seconds: open `websocket` (wss://<controller><websocket>) with the same session cookie
    or bearer token. Binary messages carry the console's bytes both ways."""

    id: str = Field(description="The console session (named in the audit trail)")
    kind: ConsoleKind
    ticket: str = Field(description="Good for one connection, until expires_at")
    expires_at: UtcDatetime
    websocket: str = Field(examples=["/api/v1/consoles/3q2-…"])


@api.route("POST", "/<ref>/consoles", access=CONSOLE, body=ConsoleCreate,
           summary="A single-use ticket to open the VM's graphical or serial console",
           responses={201: ConsoleTicket})
def create_console(ref: str, body: ConsoleCreate) -> Any:
    session = db()
    inst = instance_service.find(session, ref)
    user = _user(session)
    issued = service.issue(session, user, actor(), inst, body.kind,
                           region().config.node_down_after_s)
    session.commit()
    row = issued.session
    return ConsoleTicket(id=row.id, kind=body.kind, ticket=issued.ticket,
                         expires_at=row.expires_at,
                         websocket=WEBSOCKET_PATH + issued.ticket), 201


def _user(session: Any) -> User:
    caller = tenancy.current()
    assert caller is not None  # a user route always has its caller
    user: User = session.get_one(User, caller.user_id)
    return user


@sockets.route(WEBSOCKET_PATH + "<ticket>", methods=["GET"], websocket=True)
def user_console(ticket: str) -> Response:
    """The user's leg: checks (origin, user, ticket) answered in HTTP when refused; then
    the websocket, spliced to the agent's leg once it dials back."""
    cookies.refuse_other_origins()  # a page of another site cannot open it with our cookie
    caller = api_auth.authenticate("user", CONSOLE)
    assert caller is not None
    not_websocket = relay.handshake_refusal()
    if not_websocket is not None:
        return _not_websocket(not_websocket)
    the_region = region()
    with the_region.reads() as read:
        found = service.find_ticket(read, ticket)
    if found is None or found.user_id != caller.user_id:
        raise service.TicketRefused("this console ticket is unknown; ask for a new one")
    path = relay.rendezvous_path(the_region.config.data_dir, found.id)
    listener = relay.listen(path)  # before the agent is told: its dial-back finds it
    context = audit.AuditContext(source=request.remote_addr, token_id=g.get("token_id"))
    try:
        with audit.acting(context), the_region.sessions() as session, session.begin():
            row = service.spend(session, ticket, caller.user_id)
            inst = session.get(Instance, row.instance_id)
            level = caller.level_in(inst.project_id) if inst is not None else None
            if inst is not None and (level is None or level < CONSOLE.level):
                # a role taken away, or a token for another project, since the ticket
                raise service.TicketRefused("you may no longer open this VM's console (a "
                                            "role in its project with write access is needed)")
            if inst is not None:  # its entries, this one and the close, name its project
                audit.in_project(tenancy.project_name(session, inst.project_id),
                                 caller.is_admin_outside(inst.project_id))
            context = audit.current()
            audit.record(session, caller.name, "console.open", f"instance/{row.instance_id}",
                         kind=row.kind, console=row.id)
    except BaseException:
        listener.close()
        path.unlink(missing_ok=True)
        raise
    try:
        ws = relay.open_websocket()
    except Exception as e:  # the ticket is spent: the session ends here, said and audited
        listener.close()
        path.unlink(missing_ok=True)
        _closed(row.id, caller.name, context, "failed",
                f"the user's websocket could not be opened: {e}", relay.Traffic())
        raise
    return relay.run_websocket(ws, lambda ws: _user_leg(ws, row, listener, caller.name, context))


def _not_websocket(reason: str) -> Response:
    return problem(400, "Not a websocket opening", reason, "bad-websocket-request")


def _user_leg(ws: Server, row: ConsoleSession, listener: Any, name: str,
              context: audit.AuditContext) -> None:
    the_region = region()
    path = relay.rendezvous_path(the_region.config.data_dir, row.id)
    conn = relay.accept_within(listener, path, service.AGENT_ANSWER_S)
    if conn is None:
        reason = (f"the agent of the VM's node did not answer within "
                  f"{service.AGENT_ANSWER_S:.0f} s (is the node up?)")
        _closed(row.id, name, context, "failed", reason, relay.Traffic())
        relay.close(ws, AGENT_GONE, reason)
        return
    traffic = relay.splice(ws, conn)
    with the_region.reads() as read:
        failure = service.reason_of(read, row.id)
    if traffic.ws_code is not None:  # the user ended it
        reason = "closed by the user"
    elif failure:
        reason = failure
    else:
        reason = "the VM's console closed on the node"
    _closed(row.id, name, context, "failed" if failure and traffic.ws_code is None
            else "succeeded", reason, traffic)
    relay.close(ws, CONSOLE_FAILED if failure else 1000, reason)


def _closed(session_id: str, name: str, context: audit.AuditContext, outcome: str,
            reason: str, traffic: relay.Traffic) -> None:
    try:
        with audit.acting(context), region().sessions() as session, session.begin():
            service.close(session, session_id, name, outcome, reason,
                          to_guest=traffic.from_ws, from_guest=traffic.to_ws)
    except Exception:  # the console is over either way; the failure must still be seen
        log.exception("recording the end of console %s failed", session_id)


@sockets.route("/agent/v1/nodes/<node_id>/consoles/<session_id>", methods=["GET"],
                websocket=True)
def agent_console(node_id: str, session_id: str) -> Response:
    """The agent's leg, with its node certificate: only for a session of its node that it
    was told of and that still waits; then spliced to the user's leg."""
    refused = protocol_refusal()
    if refused is not None:
        return refused
    api_auth.authenticate("node")
    api_auth.require_node(node_id)
    not_websocket = relay.handshake_refusal()
    if not_websocket is not None:
        return _not_websocket(not_websocket)
    the_region = region()
    with the_region.sessions() as session, session.begin():
        claimed = service.claim(session, session_id, node_id)
    if not claimed:
        return problem(409, "Console not waiting", f"console session {session_id} is not "
                       "waiting for this node (ended, or given up)", "console-not-waiting")
    try:
        conn = relay.connect(relay.rendezvous_path(the_region.config.data_dir, session_id))
    except OSError as e:
        return problem(409, "Console not waiting", f"the user's side of console {session_id} "
                       f"is gone ({e.strerror})", "console-not-waiting")

    def ended(traffic: relay.Traffic) -> None:
        if traffic.ws_code not in (None, 1000):  # the node's side failed: keep its words
            with the_region.sessions() as session, session.begin():
                service.note_reason(session, session_id,
                                    traffic.ws_message or f"the node's agent ended the "
                                    f"console (code {traffic.ws_code})")

    return relay.serve_websocket(lambda ws: _agent_leg(ws, conn, ended))


def _agent_leg(ws: Server, conn: Any, ended: Any) -> None:
    relay.splice(ws, conn, on_ws_end=ended)
