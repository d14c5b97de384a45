"""Password hashes: argon2id, and the scrypt hashes older regions stored.

argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane: tens of milliseconds here).
A stored scrypt hash, or an argon2 one with other parameters, still verifies and is
replaced at the user's next successful login (`needs_rehash`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from controller.offload import off_loop

HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """A new argon2id hash of `password` (computed off the event loop)."""
    return off_loop(HASHER.hash, password)


def verify_password(password: str, stored: str) -> bool:
    """True if `password` matches `stored` (argon2id or legacy scrypt); False for a
    mismatch and for a stored value that is no hash we know."""
    # tens of milliseconds of CPU: on a thread, so other requests go on meanwhile
    if stored.startswith("scrypt$"):
        return off_loop(_verify_scrypt, password, stored)
    try:
        return bool(off_loop(HASHER.verify, stored, password))
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """True if `stored` should be replaced by a hash made now (older scheme or parameters)."""
    if not stored.startswith("$argon2id$"):
        return True
    try:
        return HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True


@cache
def unknown_user_hash() -> str:
    """Checked against when the user does not exist, so that the answer takes as long as
    for a wrong password (nobody knows a password that matches it: it is random)."""
    return HASHER.hash(secrets.token_urlsafe(32))


def _verify_scrypt(password: str, stored: str) -> bool:
    try:
        scheme, salt_hex, digest_hex = stored.split("$")
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return hmac.compare_digest(digest.hex(), digest_hex)
