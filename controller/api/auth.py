"""Who is calling: a user with a bearer token or a session cookie, or a node with its
client certificate."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import g, request
from sqlalchemy import select

from controller.api import cookies
from controller.api.context import region
from controller.authz import REGION_PERMS, Access, AnyOf, Caller, InProject, Region
from controller.db.models import ApiToken, Node
from controller.errors import Forbidden, Unauthorized
from controller.services import auth as auth_service
from controller.services import nodes as node_service

PEER_CERT_ENVIRON = "vauban.peer_cert"  # set by PeerCertMiddleware from the TLS connection


def authenticate(kind: str, access: Access | None = None) -> Caller | None:
    """Set g.actor for the caller (and g.token_id for a user's API token or session, and
    g.session for a session), or raise Unauthorized/Forbidden; a user route's caller is
    returned, with the roles its token may use, once it is known to satisfy the route's
    `access`."""
    if kind == "public":
        return None
    if kind == "user" and cookies.by_cookie():
        cookies.authenticate_by_cookie()
        with region().reads() as session:
            caller = auth_service.caller_of(session, session.get_one(ApiToken, g.token_id))
        return _admitted(caller, access)
    if kind == "user":
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("this endpoint needs 'Authorization: Bearer <token>' (vauban login)")
        now = datetime.now(UTC)
        with region().reads() as session:  # no write lock, even for a write request
            row = auth_service.token_for_secret(session, token.strip(), now)
            caller = auth_service.caller_of(session, row)
            g.actor, g.token_id = row.user.name, row.id
            stale = auth_service.last_use_stale(row, now)
        if stale:  # at most once a minute a token's use is written: reads stay reads
            with region().sessions() as session, session.begin():
                auth_service.mark_used(session, row.id, now)
        return _admitted(caller, access)
    if kind == "node":
        node_id, serial = _peer_identity()
        with region().reads() as session:  # no write lock, even for a write request
            node = session.scalar(select(Node).where(Node.id == node_id))
            if node is None:
                raise node_service.refusal_of_unknown(session, node_id)
            if serial not in (node.cert_serial, node.previous_cert_serial):
                # renewed away from (and the new one used since), or never this node's
                raise Forbidden("this client certificate does not belong to a node of the region")
            g.node_id, g.cert_serial = node_id, serial
            g.actor = f"node:{node.name}"
            adopted = serial == node.cert_serial and node.previous_cert_serial is not None
        if adopted:  # its first call with the renewed certificate: the old one is refused now
            with region().sessions() as session, session.begin():
                node_service.adopt_current_certificate(session, node_id, serial)
        return None
    raise AssertionError(f"unknown auth kind {kind}")


def _admitted(caller: Caller, access: Access | None) -> Caller:
    assert access is not None
    if not caller.may(access):
        raise Forbidden(f"{_needs(access)}; you have {caller.roles_text()}")
    return caller


def _needs(access: Access) -> str:
    if isinstance(access, Region):
        roles = [r for r, perms in REGION_PERMS.items() if access.perm in perms]
        return f"this needs the permission {access.perm} (roles: {', '.join(roles)})"
    if isinstance(access, InProject):
        return f"this needs {access.level.name.lower()} access to a project"
    if isinstance(access, AnyOf):
        return f"{_needs(access.region)}, or {_needs(access.project)[len('this needs '):]}"
    return "this needs a user"


def _peer_identity() -> tuple[str, str]:
    cert: dict[str, Any] | None = request.environ.get(PEER_CERT_ENVIRON)
    if not cert:
        raise Unauthorized("this endpoint needs a node client certificate (mutual TLS)")
    cn = next(
        (value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"),
        None,
    )
    if cn is None:
        raise Unauthorized("the client certificate has no common name")
    return cn, str(cert.get("serialNumber", "")).lower().lstrip("0")


def require_node(node_id: str) -> None:
    """A node may only read and write its own state."""
    if g.get("node_id") != node_id:
        raise Forbidden(f"this certificate is for node {g.get('node_id')}, not {node_id}")


class PeerCertMiddleware:
    """Copies the verified TLS client certificate (if any) into the WSGI environ.

    Only gunicorn's socket carries it; a client cannot set this environ key itself.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        environ.pop(PEER_CERT_ENVIRON, None)
        sock = environ.get("gunicorn.socket")
        getpeercert = getattr(sock, "getpeercert", None)
        if getpeercert is not None:
            cert = getpeercert()
            if cert:
                environ[PEER_CERT_ENVIRON] = cert
        return self.app(environ, start_response)
