"""The second factor: TOTP (RFC 6238) seeds sealed with the region key, codes accepted once.

Codes themselves are made and matched in controller.services.totp. A user's seed is kept
sealed with the region key for the purpose "totp-seed/<user id>"
(controller.secretbox), so a sealed seed copied into another user's row does not open.
A code is 6 digits of a 30-second time step; the steps just before and after the
current one are accepted too (clocks drift, requests take time). Each accepted step is
remembered: that step's code, and every earlier step's, is refused from then on, so a
code seen by someone else cannot be used again.

Whether a user must give a code at login is decided by `mfa_required` alone; a user who
enrolled a seed gives one too.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from controller.authz import REGION_ADMIN
from controller.db.models import RoleBinding, User
from controller.secretbox import RegionKey
from controller.services.totp import matching_step, new_seed, provisioning_uri

# re-exported: enrolling a user (controller.services.account) takes these and the seal below
__all__ = ["new_seed", "provisioning_uri"]


def mfa_required(db: Session, user: User) -> bool:
    """True if `user` must log in with a one-time code as well as the password.

    The one place this rule lives: whoever holds region-admin must use a second factor."""
    return db.scalar(select(RoleBinding.id).where(RoleBinding.user_id == user.id,
                                                  RoleBinding.role == REGION_ADMIN)) is not None


def needs_code(db: Session, user: User) -> bool:
    """True if a login of `user` must carry a valid one-time code: MFA is required of the
    user, or the user enrolled a seed."""
    return user.totp_seed is not None or mfa_required(db, user)


def seed_purpose(user_id: str) -> str:
    return f"totp-seed/{user_id}"


def seal_seed(box: RegionKey, user_id: str, seed: str) -> str:
    return box.seal(seed_purpose(user_id), seed.encode())


def open_seed(box: RegionKey, user_id: str, sealed: str) -> str:
    """The seed sealed in `sealed` for the user; SecretRefused if it is not theirs."""
    return box.open(seed_purpose(user_id), sealed).decode()


def accept_code(db: Session, box: RegionKey, user: User, sealed: str, code: str,
                now: datetime) -> bool:
    """True if `code` is a valid, unused code of the seed `sealed` (the user's), and
    then its step is recorded as the user's last (in the caller's transaction).

    False, and nothing changed, for a wrong code, or one of a step already accepted:
    the step is moved forward by one conditional UPDATE, so of two requests racing with
    the same code only one is accepted."""
    step = matching_step(open_seed(box, user.id, sealed), code, now, user.totp_last_step)
    if step is None:
        return False
    moved = db.execute(
        update(User).where(User.id == user.id,
                           or_(User.totp_last_step.is_(None), User.totp_last_step < step))
        .values(totp_last_step=step).execution_options(synchronize_session=False))
    return bool(moved.rowcount == 1)  # type: ignore[attr-defined]


def write_private_file(path: Path, text: str) -> None:
    """`text` in `path`, readable by the controller's user only (0600), replacing the file
    atomically; the folder is made if missing (0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def enroll_admin(db: Session, box: RegionKey, user: User, uri_file: Path) -> None:
    """Give the bootstrap admin an active seed, its provisioning URI in `uri_file` (0600).

    Afterwards the user's row holds the sealed seed (in the caller's transaction) and the
    file its URI; on failure to write the file, nothing is sealed into the row."""
    seed = new_seed()
    write_private_file(uri_file, provisioning_uri(seed, user.name) + "\n")
    user.totp_seed = seal_seed(box, user.id, seed)
    user.totp_pending_seed = None
    user.totp_last_step = None
