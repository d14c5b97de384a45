"""Logging in: the password checked at a bounded cost, repeated failures locked out.

Failures are counted in the database (so every controller process sees them) under two
keys: the user name, whether or not such a user exists (so a lockout does not tell
which names exist), and the source address. `max_failures` failures of a user name
within `lockout_s`, or `max_failures_per_source` from one address, lock that key for
`lockout_s`: while locked, a login under it is refused with 429 and Retry-After before
any password is hashed, so a flood of guesses costs the controller a read, not a hash.
A success clears its user name's count, not its address's (an attacker who owns one
account cannot reset the count of the address it guesses other accounts from).

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
from controller.services import audit, passwords
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


def log_in(reads: sessionmaker[Session], sessions: sessionmaker[Session], limits: LoginLimits,
           slots: HashSlots, username: str, password: str, source: str, ttl: timedelta,
           now: datetime, *, issue: Issuer = new_token) -> tuple[str, ApiToken]:
    """A new bearer token (or what `issue` makes: a browser session) for valid
    credentials, the login audited either way.

    Raises TooManyRequests (locked out; nothing hashed), Unavailable (no hashing slot),
    or Unauthorized (wrong name or password: the same answer after the same work
    whether or not the user exists; the failure is counted).
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
    with sessions() as db, db.begin():
        if not valid or user is None:
            lockout = timedelta(seconds=limits.lockout_s)
            count_failure(db, keys[0], limits.max_failures, lockout, now)
            count_failure(db, keys[1], limits.max_failures_per_source, lockout, now)
            # one entry per attempt: the throttle bounds how many come
            audit.record(db, username, "session.login", "tokens", "refused")
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
    if not valid or user is None:
        raise Unauthorized("wrong user name or password")
    return token, row
