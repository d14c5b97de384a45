"""Browser sessions of the web UI: log in to a session cookie, see it, log out.

Logging in is `login.log_in`, as for a bearer token (the same throttling, lockout and
audit); what it issues is a session (controller.services.sessions), whose secret goes
out only in the cookie (controller.api.cookies) and whose CSRF token only in the body.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from flask import Response, g, request

from controller import schemas
from controller.api import cookies
from controller.api.context import region
from controller.api.framework import ApiBlueprint
from controller.authz import ANY_USER
from controller.errors import NotFound
from controller.services import login, sessions

api = ApiBlueprint("sessions", "/api/v1", "sessions")


@api.route("POST", "/sessions", summary="Log in from a browser: a session cookie",
           auth="public", body=schemas.SessionCreate, responses={201: schemas.SessionCreated})
def create_session(body: schemas.SessionCreate) -> Any:
    the_region = region()
    limits = the_region.config.session_limits()
    now = datetime.now(UTC)
    csrf_token = sessions.new_csrf_token()
    secret, row = login.log_in(
        the_region.reads, the_region.sessions, the_region.config.login_limits(),
        the_region.login_slots, the_region.region_key, body.username, body.password,
        body.totp, request.remote_addr or "unknown", sessions.first_ttl(limits), now,
        issue=functools.partial(sessions.new_session, csrf_token=csrf_token, created_at=now))
    created = schemas.SessionCreated(
        username=body.username, expires_at=row.expires_at,
        ends_at=sessions.absolute_end(now, limits), csrf_token=csrf_token)
    answer = Response(created.model_dump_json(), status=201, mimetype="application/json")
    return cookies.set_session_cookie(answer, secret)


@api.route("GET", "/sessions/current", access=ANY_USER,
           summary="The session of the request's cookie: who is logged in, until when",
           responses={200: schemas.Session}, operation_id="showSession")
def current_session() -> Any:
    state = _session()
    return schemas.Session(username=state.username, expires_at=state.expires_at,
                           ends_at=state.ends_at)


@api.route("DELETE", "/sessions/current", access=ANY_USER,
           summary="Log out: the request's session ends and its cookie is cleared",
           responses={204: None})
def delete_session() -> Any:
    state = _session()
    with region().sessions() as db, db.begin():
        sessions.end(db, state)
    return cookies.clear_session_cookie(Response(status=204))


def _session() -> sessions.SessionState:
    """The request's session; NotFound for a request by bearer token, which has none."""
    state: sessions.SessionState | None = g.get("session")
    if state is None:
        raise NotFound("this request carries a bearer token, not a session cookie: it has "
                       "no session (a bearer token ends at its expiry)")
    return state
