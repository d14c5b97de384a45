"""The session cookie of the web UI: set at login, checked on every request it carries,
cleared at logout.

The cookie is `__Host-` prefixed, Secure, HttpOnly, SameSite=Strict, for the whole host
(Path=/, no Domain), without an expiry (the browser drops it when it closes; the
controller ends the session earlier: see controller.services.sessions). A request by
cookie other than GET, HEAD or OPTIONS is refused (403, `check` naming the test) unless
it comes from the controller's own origin and carries the session's CSRF token in
`X-CSRF-Token`. A request with an `Authorization` header is a bearer request: its
cookie is not looked at.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from urllib.parse import urlsplit

from flask import Response, g, request

from controller.api.context import READ_METHODS, region
from controller.errors import Forbidden
from controller.services import sessions

SESSION_COOKIE = "__Host-vauban_session"
CSRF_HEADER = "X-CSRF-Token"
_ATTRIBUTES = "Secure; HttpOnly; SameSite=Strict; Path=/"
_DEFAULT_PORTS = {"https": 443, "http": 80}


def by_cookie() -> bool:
    """Whether this request is to be authenticated by its session cookie: it has one and
    no Authorization header."""
    return "Authorization" not in request.headers and SESSION_COOKIE in request.cookies


def authenticate_by_cookie() -> None:
    """Set g.actor, g.token_id and g.session for the request's live session, its idle
    deadline moved on (written at most once a minute).

    Raises Unauthorized (no such session, or it ended) or Forbidden (a request that
    changes something from another origin or without the right CSRF token); then
    nothing is written, the deadline included."""
    limits = region().config.session_limits()
    now = datetime.now(UTC)
    with region().reads() as db:  # no write lock, even for a write request
        state = sessions.session_for_secret(db, request.cookies[SESSION_COOKIE], limits, now)
    if request.method not in READ_METHODS:
        refuse_other_origins()
        _refuse_without_csrf_token(state)
    deadline = sessions.next_deadline(state, limits, now)
    if deadline is not None:
        with region().sessions() as db, db.begin():
            sessions.extend(db, state, deadline)
        state = dataclasses.replace(state, expires_at=deadline)
    g.actor, g.token_id, g.session = state.username, state.id, state


def refuse_other_origins() -> None:
    """Forbidden unless the request's Origin is the controller's own; without Origin,
    unless the browser's Sec-Fetch-Site says it is not from another site."""
    origin = request.headers.get("Origin")
    own = own_origins()
    if origin is not None:
        if _origin_key(origin) not in own:
            raise Forbidden(f"the request's Origin {origin!r} is not this controller's own: "
                            "a session cookie is only good for the controller's own pages",
                            check="origin")
        return
    site = request.headers.get("Sec-Fetch-Site", "").lower()
    if site in ("cross-site", "same-site"):
        raise Forbidden(f"the request comes from another site (Sec-Fetch-Site: {site}): a "
                        "session cookie is only good for the controller's own pages",
                        check="origin")


def own_origins() -> set[tuple[str, str, int]]:
    """The controller's own origins: the one the request was addressed to, and the one
    VAUBAN_ADVERTISE_URL names (when set)."""
    keys = {_origin_key(f"{request.scheme}://{request.host}")}
    advertised = region().config.advertise_url
    if advertised:
        keys.add(_origin_key(advertised))
    return {k for k in keys if k is not None}


def _origin_key(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, default ports made explicit; None for what is
    no origin (`null`, garbage)."""
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def _refuse_without_csrf_token(state: sessions.SessionState) -> None:
    presented = request.headers.get(CSRF_HEADER, "")
    if not presented:
        raise Forbidden(f"a request by session cookie that changes something needs the "
                        f"{CSRF_HEADER} header: the csrf_token its login answered",
                        check="csrf-token")
    if not sessions.csrf_matches(state, presented):
        raise Forbidden(f"the {CSRF_HEADER} header is not this session's CSRF token",
                        check="csrf-token")


def set_session_cookie(response: Response, secret: str) -> Response:
    """`response` setting the session cookie to `secret`, kept by no cache."""
    response.headers.add("Set-Cookie", f"{SESSION_COOKIE}={secret}; {_ATTRIBUTES}")
    response.headers["Cache-Control"] = "no-store"
    return response


def clear_session_cookie(response: Response) -> Response:
    """`response` telling the browser to drop the session cookie, kept by no cache."""
    response.headers.add("Set-Cookie", f"{SESSION_COOKIE}=; Max-Age=0; "
                         f"Expires=Thu, 01 Jan 1970 00:00:00 GMT; {_ATTRIBUTES}")
    response.headers["Cache-Control"] = "no-store"
    return response
