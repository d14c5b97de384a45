"""Users and bearer tokens, and the caller a token acts as."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from controller.authz import REGION_ADMIN, Caller
from controller.db.models import ApiToken, RoleBinding, User, as_utc, new_id
from controller.errors import Unauthorized
from controller.secretbox import RegionKey
from controller.services import audit, mfa, passwords


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def ensure_admin(db: Session, box: RegionKey, password_file: Path,
                 totp_file: Path) -> Literal["created", "enrolled"] | None:
    """Create the `admin` user on first start: its random password in `password_file`, its
    TOTP seed as an otpauth:// URI in `totp_file` (both 0600), the seed sealed in its row.

    Returns "created" if it was made now. An existing admin is left alone (its files too,
    None), except one without a seed (a region made before MFA), which is enrolled as at
    creation ("enrolled"); the seed itself is never logged."""
    # locked: of two processes starting at once on one database, one enrolls, the other
    # then finds the seed
    admin = db.scalar(select(User).where(User.name == "admin").with_for_update())
    if admin is not None:
        if admin.totp_seed is None:
            mfa.enroll_admin(db, box, admin, totp_file)
            audit.record(db, "controller", "user.totp.enroll", "user/admin", "succeeded",
                         uri_file=str(totp_file))
            return "enrolled"
        return None
    password = secrets.token_urlsafe(24)
    mfa.write_private_file(password_file, password + "\n")
    admin = User(id=new_id(), name="admin", password_hash=passwords.hash_password(password))
    admin.bindings.append(RoleBinding(role=REGION_ADMIN, created_by="bootstrap"))
    mfa.enroll_admin(db, box, admin, totp_file)
    db.add(admin)
    return "created"


def new_token(db: Session, user_id: str, expires_at: datetime) -> tuple[str, ApiToken]:
    """A new bearer token for the user (only its hash is stored); the secret is returned."""
    token = "vbt_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user_id, token_sha256=sha256_hex(token), expires_at=expires_at,
                   kind="api")
    db.add(row)
    return token, row


def token_for_secret(db: Session, token: str, now: datetime | None = None) -> ApiToken:
    """The unexpired, unrevoked API token row whose secret is `token`; Unauthorized if
    none (a browser session's secret is no bearer token)."""
    row = db.scalar(select(ApiToken).where(ApiToken.token_sha256 == sha256_hex(token),
                                           ApiToken.kind == "api"))
    if row is None:
        raise Unauthorized("the bearer token is not valid")
    if row.revoked_at is not None:
        raise Unauthorized("the bearer token was revoked")
    if as_utc(row.expires_at) <= (now or datetime.now(UTC)):
        raise Unauthorized("the bearer token has expired; log in again")
    return row


def caller_of(db: Session, row: ApiToken) -> Caller:
    """Who `row` acts as: its user's roles now, narrowed to the token's scope if named."""
    bindings = db.execute(select(RoleBinding.role, RoleBinding.project_id)
                          .where(RoleBinding.user_id == row.user_id)).all()
    scope = (row.role, row.project_id) if row.role is not None else None
    return Caller.of(row.user_id, row.user.name, row.id,
                     [(r, p) for r, p in bindings], scope)


LAST_USE_RESOLUTION = timedelta(minutes=1)


def last_use_stale(row: ApiToken, now: datetime) -> bool:
    return row.last_used_at is None or as_utc(row.last_used_at) <= now - LAST_USE_RESOLUTION


def mark_used(db: Session, token_id: str, now: datetime) -> None:
    db.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))

