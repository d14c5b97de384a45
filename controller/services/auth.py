"""Users and bearer tokens (roles come later; every user is an administrator)."""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.models import ApiToken, User, as_utc
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
    db.add(User(name="admin", password_hash=passwords.hash_password(password)))
    return True


def new_token(db: Session, user_id: str, expires_at: datetime) -> tuple[str, ApiToken]:
    """A new bearer token for the user (only its hash is stored); the secret is returned."""
    token = "vbt_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user_id, token_sha256=sha256_hex(token), expires_at=expires_at)
    db.add(row)
    return token, row


def token_for_secret(db: Session, token: str) -> ApiToken:
    """The unexpired API token row whose secret is `token`; Unauthorized if none."""
    row = db.scalar(select(ApiToken).where(ApiToken.token_sha256 == sha256_hex(token)))
    if row is None:
        raise Unauthorized("the bearer token is not valid")
    if as_utc(row.expires_at) <= datetime.now(UTC):
        raise Unauthorized("the bearer token has expired; log in again")
    return row

