"""Browser sessions: a cookie's secret and a CSRF token, both stored as hashes only.

A session is a row of `api_tokens` of kind "session" (bearer tokens are of kind "api"):
its secret travels only in the session cookie and is never accepted as a bearer token,
nor a bearer token as a cookie. Its `expires_at` is the idle deadline: each use moves it
to `used_at + idle_s`, but never past `created_at + max_s`, the absolute end however
much the session is used. The deadline is written at most once a `EXTEND_STEP` (it must
move on by that much to be written), so a read request stays a read almost always; a
session thus ends after between `idle_s - 60 s` and `idle_s` unused.

A request by cookie that changes something must also carry the session's CSRF token
(given once, at login): a page of another site can make the browser send the cookie,
but cannot read the token.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from controller.config import SessionLimits
from controller.db.models import ApiToken, as_utc
from controller.errors import Unauthorized
from controller.services import audit, events
from controller.services.auth import sha256_hex

SESSION = "session"  # ApiToken.kind of a browser session
EXTEND_STEP = timedelta(seconds=60)  # the idle deadline is written when it moves this much


@dataclass(frozen=True)
class SessionState:
    """What a request learns of its session: whose it is and until when it lasts."""

    id: str
    username: str
    created_at: datetime
    expires_at: datetime  # the idle deadline: unused until then, the session ends
    ends_at: datetime  # the absolute end, however much it is used
    csrf_sha256: str


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def first_ttl(limits: SessionLimits) -> timedelta:
    """How long a new session lasts unused: the idle timeout, or less if the absolute
    lifetime is shorter."""
    return timedelta(seconds=min(limits.idle_s, limits.max_s))


def absolute_end(created_at: datetime, limits: SessionLimits) -> datetime:
    """When a session made at `created_at` ends, however much it is used."""
    return created_at + timedelta(seconds=limits.max_s)


def new_session(db: Session, user_id: str, expires_at: datetime, *, csrf_token: str,
                created_at: datetime) -> tuple[str, ApiToken]:
    """A new session row in the caller's transaction (the hashes of its secret and of
    `csrf_token` only); the secret is returned. Shaped as `login.log_in`'s `issue`."""
    secret = "vbs_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user_id, token_sha256=sha256_hex(secret), kind=SESSION,
                   csrf_sha256=sha256_hex(csrf_token), created_at=created_at,
                   expires_at=expires_at)
    db.add(row)
    return secret, row


def session_for_secret(db: Session, secret: str, limits: SessionLimits,
                       now: datetime) -> SessionState:
    """The live session whose cookie secret is `secret` at `now`.

    Unauthorized if no session has it (never logged in, logged out, or an API token's
    secret) or if it ended: unused past its idle deadline, or past its absolute end."""
    row = db.scalar(select(ApiToken).where(ApiToken.token_sha256 == sha256_hex(secret),
                                           ApiToken.kind == SESSION))
    if row is None or row.csrf_sha256 is None:
        raise Unauthorized("the session cookie is not valid (logged out, or never logged "
                           "in); log in again")
    created = as_utc(row.created_at)
    state = SessionState(
        id=row.id, username=row.user.name, created_at=created,
        expires_at=as_utc(row.expires_at),
        ends_at=absolute_end(created, limits), csrf_sha256=row.csrf_sha256)
    if state.ends_at <= now:
        raise Unauthorized(f"the session ended at {state.ends_at.isoformat(timespec='seconds')}"
                           f" ({limits.max_s:g} s after its login); log in again")
    if state.expires_at <= now:
        raise Unauthorized("the session ended at "
                           f"{state.expires_at.isoformat(timespec='seconds')}, unused for "
                           f"{limits.idle_s:g} s; log in again")
    return state


def csrf_matches(state: SessionState, presented: str) -> bool:
    """Whether `presented` is the session's CSRF token (compared in constant time)."""
    return hmac.compare_digest(sha256_hex(presented), state.csrf_sha256)


def next_deadline(state: SessionState, limits: SessionLimits, now: datetime) -> datetime | None:
    """The idle deadline to write for a use at `now`, or None when the stored one is
    close enough (it would move less than EXTEND_STEP)."""
    deadline = min(now + timedelta(seconds=limits.idle_s), state.ends_at)
    return deadline if deadline - state.expires_at >= EXTEND_STEP else None


def extend(db: Session, state: SessionState, deadline: datetime) -> None:
    """Move the session's idle deadline on to `deadline` (in the caller's transaction);
    one moved further meanwhile by a concurrent request is left alone."""
    db.execute(update(ApiToken).where(ApiToken.id == state.id, ApiToken.kind == SESSION,
                                      ApiToken.expires_at < deadline)
               .values(expires_at=deadline))


def end(db: Session, state: SessionState) -> None:
    """Log the session out (in the caller's transaction): its row is deleted, so its
    cookie is refused from the commit on; the logout is audited."""
    user_id = db.scalar(select(ApiToken.user_id).where(ApiToken.id == state.id))
    db.execute(delete(ApiToken).where(ApiToken.id == state.id, ApiToken.kind == SESSION))
    if user_id is not None:  # its event streams end (a bulk delete: the ORM does not see it)
        events.emit(db, "token.deleted", events.token_told(state.id, user_id, SESSION, None,
                                                           True))
    audit.record(db, state.username, "session.logout", f"token/{state.id}", "succeeded")


def purge_ended(db: Session, now: datetime) -> int:
    """Delete the sessions unused past their idle deadline at `now` (in the caller's
    transaction; the deadline never passes the absolute end, so every ended session is
    among them). Returns how many were deleted."""
    result = db.execute(delete(ApiToken).where(ApiToken.kind == SESSION,
                                               ApiToken.expires_at <= now))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
