"""Users and bearer tokens, and the caller a token acts as."""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from controller.authz import REGION_ADMIN, Caller
from controller.db.models import ApiToken, RoleBinding, User, as_utc
from controller.errors import Unauthorized
from controller.services import passwords


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def ensure_admin(db: Session, password_file: Path) -> bool:
    """Create the `admin` user on first start, its random password in a 0600 file.

    Returns True if it was created. An existing admin is left alone (its file too).
    """
    if db.scalar(select(User).where(User.name == "admin")) is not None:
        return False
    password = secrets.token_urlsafe(24)
    password_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    admin = User(name="admin", password_hash=passwords.hash_password(password))
    admin.bindings.append(RoleBinding(role=REGION_ADMIN, created_by="bootstrap"))
    db.add(admin)
    return True


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

