"""Users, passwords and bearer tokens (roles come later; every user is an administrator)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.db.models import ApiToken, User, as_utc
from controller.errors import Unauthorized
from controller.offload import off_loop

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
# checked against when the user does not exist, so that the answer takes as long as for a
# wrong password: the response time does not tell which user names exist (no password
# hashes to this digest that anyone knows; it is random)
_DUMMY_HASH = ("scrypt$5f0e2b9c61d84a7f3c2e1d0b9a887766"
               "$9d4c1b7e2f3a5c6d8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d")


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = off_loop(hashlib.scrypt, password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, salt_hex, digest_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    # tens of milliseconds of CPU: on a thread, so other requests go on meanwhile
    digest = off_loop(hashlib.scrypt, password.encode(), salt=bytes.fromhex(salt_hex),
                      dklen=32, **_SCRYPT)
    return hmac.compare_digest(digest.hex(), digest_hex)


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
    db.add(User(name="admin", password_hash=hash_password(password)))
    return True


def issue_token(db: Session, username: str, password: str, ttl: timedelta) -> tuple[str, ApiToken]:
    """A new bearer token for valid credentials; Unauthorized if not.

    An unknown user and a wrong password get the same answer after the same work (one
    password hash), so neither the message nor the time tells which user names exist.
    """
    user = db.scalar(select(User).where(User.name == username))
    stored = user.password_hash if user is not None else _DUMMY_HASH
    if not verify_password(password, stored) or user is None:
        raise Unauthorized("wrong user name or password")
    token = "vbt_" + secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user.id, token_sha256=sha256_hex(token), expires_at=datetime.now(UTC) + ttl
    )
    db.add(row)
    return token, row


def user_for_token(db: Session, token: str) -> User:
    row = db.scalar(select(ApiToken).where(ApiToken.token_sha256 == sha256_hex(token)))
    if row is None:
        raise Unauthorized("the bearer token is not valid")
    if as_utc(row.expires_at) <= datetime.now(UTC):
        raise Unauthorized("the bearer token has expired; log in again")
    return row.user
