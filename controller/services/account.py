"""A user's own account (password change, TOTP enrollment) and an administrator's reset.

Every change is audited, and no entry holds a secret (no password, seed, URI or code).
Passwords are hashed before the write transaction opens, so SQLite's write lock is never
held while a hash is computed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from controller.config import LoginLimits
from controller.db.models import ApiToken, User
from controller.errors import Conflict, Forbidden, InvalidInput, NotFound
from controller.secretbox import RegionKey
from controller.services import audit, login, mfa, passwords
from controller.services.totp import matching_step

MIN_PASSWORD = 12


def user_named(db: Session, name: str) -> User:
    """The user called `name`; NotFound if there is none."""
    user = db.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user named '{name}'")
    return user


def revoke_tokens(db: Session, user_id: str, keep: str | None = None) -> int:
    """Delete the user's API tokens (all but `keep`), in the caller's transaction; how many."""
    stmt = delete(ApiToken).where(ApiToken.user_id == user_id)
    if keep is not None:
        stmt = stmt.where(ApiToken.id != keep)
    result = db.execute(stmt.execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]


def check_new_password(current: str, new: str) -> None:
    """InvalidInput unless `new` is at least 12 characters and not `current`."""
    if len(new) < MIN_PASSWORD:
        raise InvalidInput(f"a password has at least {MIN_PASSWORD} characters")
    if new == current:
        raise InvalidInput("the new password is the current one; choose another")


def reauthenticate(reads: sessionmaker[Session], sessions: sessionmaker[Session],
                   limits: LoginLimits, slots: login.HashSlots, box: RegionKey,
                   username: str, password: str, totp: str | None, source: str,
                   now: datetime, action: str) -> None:
    """Check, like a login, that the caller of a sensitive change to its own account
    knows the password (and, when the user needs one, a one-time code): a stolen token
    alone must not change who can log in.

    Refused with TooManyRequests while the user name or the source is locked out; else
    Forbidden, the same answer whichever was wrong, counted as a failed login and audited
    as `action` refused."""
    keys = login.throttle_keys(username, source)
    with reads() as db:
        login.check_not_locked(db, keys, now)
        stored = user_named(db, username).password_hash
    with slots.slot():
        valid = passwords.verify_password(password, stored)
    refusal: Forbidden | None = None
    with sessions() as db, db.begin():
        user = user_named(db, username)
        denied = None if valid else Forbidden(login.WRONG_CREDENTIALS)
        if denied is None:
            code = login.second_factor_refusal(db, box, user, totp, now)
            denied = None if code is None else Forbidden(code.detail, **code.extra)
        if denied is not None:
            lockout = timedelta(seconds=limits.lockout_s)
            login.count_failure(db, keys[0], limits.max_failures, lockout, now)
            login.count_failure(db, keys[1], limits.max_failures_per_source, lockout, now)
            audit.record(db, username, action, f"user/{username}", "refused")
            refusal = denied
    if refusal is not None:
        raise refusal


def change_password(reads: sessionmaker[Session], sessions: sessionmaker[Session],
                    limits: LoginLimits, slots: login.HashSlots, box: RegionKey,
                    username: str, token_id: str | None, current: str, new: str,
                    totp: str | None, source: str, now: datetime) -> int:
    """Replace the password of `username` by `new`; returns how many of its other tokens
    were revoked (every token but `token_id`, the one the request came with).

    InvalidInput, before any hash, for a new password that breaks the policy; then
    checked as `reauthenticate` says. On any refusal nothing changed but the failure
    count and the audit trail."""
    check_new_password(current, new)
    reauthenticate(reads, sessions, limits, slots, box, username, current, totp, source,
                   now, "user.password.change")
    with slots.slot():
        new_hash = passwords.hash_password(new)
    with sessions() as db, db.begin():
        user = user_named(db, username)
        user.password_hash = new_hash
        revoked = revoke_tokens(db, user.id, keep=token_id)
        audit.record(db, username, "user.password.change", f"user/{username}",
                     "succeeded", tokens_revoked=revoked)
    return revoked


def start_enrollment(db: Session, box: RegionKey, actor: str, user: User) -> str:
    """A new seed for `user`, kept pending (sealed) until `confirm_enrollment`; its
    provisioning URI is returned, this once. A seed already active stays active (and
    needed at login) until then; an earlier pending one is replaced. In the caller's
    transaction."""
    seed = mfa.new_seed()
    user.totp_pending_seed = mfa.seal_seed(box, user.id, seed)
    audit.record(db, actor, "user.totp.enroll", f"user/{user.name}", "pending")
    return mfa.provisioning_uri(seed, user.name)


def confirm_enrollment(sessions: sessionmaker[Session], box: RegionKey, actor: str,
                       username: str, code: str, now: datetime) -> None:
    """Activate the pending seed of `username` if `code` is a code it makes now: the user
    logs in with that seed from then on, and that code cannot be used again.

    Conflict if no seed is pending; Forbidden (audited) if the code does not match; in
    both cases nothing changed."""
    with sessions() as db, db.begin():
        user = user_named(db, username)
        if user.totp_pending_seed is None:
            raise Conflict("no one-time code seed is being enrolled; start with "
                           "POST /api/v1/account/totp (vauban account totp enroll)")
        seed = mfa.open_seed(box, user.id, user.totp_pending_seed)
        # any step near now: the user may have logged in with the old seed this very step
        step = matching_step(seed, code, now, None)
        if step is not None:
            user.totp_seed, user.totp_pending_seed = user.totp_pending_seed, None
            user.totp_last_step = max(step, user.totp_last_step or step)
            audit.record(db, actor, "user.totp.confirm", f"user/{username}", "succeeded")
            return
    audit.record_now(sessions, actor, "user.totp.confirm", f"user/{username}", "refused")
    raise Forbidden("the code does not match the new seed; enter the code the "
                    "authenticator shows now (and check its clock)")


@dataclass(frozen=True)
class Reset:
    """What an administrator's reset made: shown once, never kept in the clear."""

    password: str
    provisioning_uri: str | None
    tokens_revoked: int


def reset_user(sessions: sessionmaker[Session], slots: login.HashSlots, box: RegionKey,
               actor: str, username: str, new_seed: bool) -> Reset:
    """A new random password for `username` (and with `new_seed` a new active TOTP seed,
    its last accepted step forgotten); every token of the user is revoked.

    NotFound if there is no such user, and then nothing changed."""
    with sessions() as db:
        user_named(db, username)  # refused before any hash
    password = secrets.token_urlsafe(24)
    with slots.slot():
        hashed = passwords.hash_password(password)
    with sessions() as db, db.begin():
        user = user_named(db, username)
        user.password_hash = hashed
        uri = None
        if new_seed:
            seed = mfa.new_seed()
            user.totp_seed = mfa.seal_seed(box, user.id, seed)
            user.totp_pending_seed, user.totp_last_step = None, None
            uri = mfa.provisioning_uri(seed, username)
        revoked = revoke_tokens(db, user.id)
        audit.record(db, actor, "user.reset", f"user/{username}", "succeeded",
                     new_totp_seed=new_seed, tokens_revoked=revoked)
    return Reset(password, uri, revoked)
