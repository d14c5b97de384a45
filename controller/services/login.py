"""Logging in: the password checked at a bounded cost, repeated failures locked out.

Failures are counted in the database (so every controller process sees them) under two
keys: the user name, whether or not such a user exists (so a lockout does not tell
which names exist), and the source address. `max_failures` failures of a user name
within `lockout_s`, or `max_failures_per_source` from one address, lock that key for
`lockout_s`: while locked, a login under it is refused with 429 and Retry-After before
any password is hashed, so a flood of guesses costs the controller a read, not a hash.
A success clears its user name's count, not its address's (an attacker who owns one
account cannot reset the count of the address it guesses other accounts from).

A user who needs a second factor (controller.services.mfa) also gives a one-time code,
checked only after the password verified; a missing, wrong or replayed code is a failed
login like a wrong password, counted the same way.

At most `concurrent` password hashes run at once in a process; a login that finds no
slot within `slot_wait_s` is answered 503 with Retry-After: the controller's CPU stays
for the region, however many addresses the guesses come from.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from controller.config import LoginLimits
from controller.db.models import ApiToken, LoginThrottle, User, as_utc
from controller.errors import TooManyRequests, Unauthorized, Unavailable
from controller.secretbox import RegionKey
from controller.services import audit, mfa, passwords
from controller.services.auth import new_token

# makes the credential a login issues: (db, user id, expires at) -> (secret, row)
Issuer = Callable[[Session, str, datetime], tuple[str, ApiToken]]


class HashSlots:
    """At most `limit` password checks at once; the rest wait a little, then are refused."""

    def __init__(self, limit: int, wait_s: float) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self.wait_s = wait_s

    @classmethod
    def of(cls, limits: LoginLimits) -> HashSlots:
        return cls(limits.concurrent, limits.slot_wait_s)

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(timeout=self.wait_s):
            raise Unavailable("too many logins are being checked at once; try again shortly",
                              retry_after_s=1)
        try:
            yield
        finally:
            self._slots.release()


def throttle_keys(username: str, source: str) -> tuple[str, str]:
    return f"user:{username}", f"source:{source}"


def check_not_locked(db: Session, keys: tuple[str, str], now: datetime) -> None:
    """TooManyRequests if logins under either key are locked out at `now`."""
    rows = db.scalars(select(LoginThrottle).where(LoginThrottle.key.in_(keys))).all()
    until = max((as_utc(r.locked_until) for r in rows
                 if r.locked_until is not None and as_utc(r.locked_until) > now), default=None)
    if until is not None:
        raise TooManyRequests(
            "too many failed logins for this user name or from this address; logins are "
            f"refused until {until.isoformat(timespec='seconds')}",
            retry_after_s=(until - now).total_seconds())


def count_failure(db: Session, key: str, limit: int, lockout: timedelta, now: datetime) -> None:
    """One more failure under `key` (in the caller's transaction); at `limit` failures
    within `lockout`, the key is locked until `now + lockout` and its count starts over."""
    expired = LoginThrottle.window_started_at < now - lockout
    insert = postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(LoginThrottle).values(key=key, failures=1, window_started_at=now)
    # one statement: concurrent failures of a new key neither collide nor lose a count
    db.execute(stmt.on_conflict_do_update(index_elements=[LoginThrottle.key], set_={
        "failures": case((expired, 1), else_=LoginThrottle.failures + 1),
        "window_started_at": case((expired, now), else_=LoginThrottle.window_started_at),
    }))
    db.execute(update(LoginThrottle)
               .where(LoginThrottle.key == key, LoginThrottle.failures >= limit)
               .values(locked_until=now + lockout, failures=0, window_started_at=now))


WRONG_CREDENTIALS = "wrong user name, password or one-time code"
CODE_NEEDED = "this user logs in with a one-time code too: send it as 'totp'"
NOT_ENROLLED = ("this user must log in with a one-time code but has no seed enrolled; an "
                "administrator can give it one: vauban user reset NAME --totp")


def second_factor_refusal(db: Session, box: RegionKey, user: User, totp: str | None,
                          now: datetime) -> Unauthorized | None:
    """None if `user` (whose password was right) needs no code or gave a valid unused one
    (its step then recorded, in the caller's transaction); else the refusal to answer.

    Only a missing code is told apart, and only to a caller who knew the password."""
    if not mfa.needs_code(db, user):
        return None
    if user.totp_seed is None:
        return Unauthorized(NOT_ENROLLED)
    if totp is None:
        return Unauthorized(CODE_NEEDED, totp_required=True)
    if not mfa.accept_code(db, box, user, user.totp_seed, totp, now):
        return Unauthorized(WRONG_CREDENTIALS)
    return None


def log_in(reads: sessionmaker[Session], sessions: sessionmaker[Session], limits: LoginLimits,
           slots: HashSlots, box: RegionKey, username: str, password: str, totp: str | None,
           source: str, ttl: timedelta, now: datetime, *,
           issue: Issuer = new_token) -> tuple[str, ApiToken]:
    """A new bearer token (or what `issue` makes: a browser session) for valid
    credentials, the login audited either way.

    The one-time code `totp` is checked only once the password verified (so it tells
    nothing about the password), and only when the user needs one (`mfa.needs_code`).
    Raises TooManyRequests (locked out; nothing hashed), Unavailable (no hashing slot),
    or Unauthorized (wrong name, password or code, or a missing code: the same answer
    after the same work whether or not the user exists, except that a caller who gave
    the right password is told a code is missing; every such failure is counted).
    """
    keys = throttle_keys(username, source)
    with reads() as db:
        check_not_locked(db, keys, now)
        user = db.scalar(select(User).where(User.name == username))
    stored = user.password_hash if user is not None else passwords.unknown_user_hash()
    with slots.slot():
        valid = passwords.verify_password(password, stored) and user is not None
        rehashed = passwords.hash_password(password) \
            if valid and passwords.needs_rehash(stored) else None
    refusal: Unauthorized | None = Unauthorized(WRONG_CREDENTIALS)
    with sessions() as db, db.begin():
        if valid and user is not None:
            # read again in this transaction: the last accepted step is compared and moved
            user = db.get(User, user.id, populate_existing=True)
            refusal = Unauthorized(WRONG_CREDENTIALS) if user is None else \
                second_factor_refusal(db, box, user, totp, now)
        if refusal is not None or user is None:
            lockout = timedelta(seconds=limits.lockout_s)
            count_failure(db, keys[0], limits.max_failures, lockout, now)
            count_failure(db, keys[1], limits.max_failures_per_source, lockout, now)
            # one entry per attempt: the throttle bounds how many come; which factor
            # failed is for the audit trail only (never a secret: no code, no password)
            audit.record(db, username, "session.login", "tokens", "refused",
                         **({"failed": "one-time code"} if valid else {}))
        else:
            db.execute(update(LoginThrottle).where(LoginThrottle.key == keys[0])
                       .values(failures=0))
            if rehashed is not None:
                db.execute(update(User).where(User.id == user.id)
                           .values(password_hash=rehashed))
            token, row = issue(db, user.id, now + ttl)
            db.flush()  # the new token's id, which the entry names as the one it used
            with audit.acting(dataclasses.replace(audit.current(), token_id=row.id)):
                audit.record(db, username, "session.login", f"token/{row.id}", "succeeded",
                             ttl_seconds=int(ttl.total_seconds()), kind=row.kind)
    if refusal is not None or user is None:
        raise refusal or Unauthorized(WRONG_CREDENTIALS)
    return token, row
