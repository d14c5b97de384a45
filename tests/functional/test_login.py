"""Logging in: argon2id hashes, older hashes replaced, failures locked out per user name and
per source address before any password is hashed, and a bounded number of hashes at once."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher
from flask.testing import FlaskClient
from sqlalchemy import select, update

from controller.db.models import AuditEvent, LoginThrottle, User
from controller.region import Region
from controller.services import passwords
from controller.services.login import HashSlots
from tests.functional.helpers import admin_code

MAX_FAILURES = 5  # the default of VAUBAN_LOGIN_MAX_FAILURES, as the region fixture has it
PER_SOURCE = 20


def _login(client: FlaskClient, username: str, password: str,
           source: str = "127.0.0.1", totp: str | None = None) -> Any:
    body = {"username": username, "password": password}
    if totp is not None:
        body["totp"] = totp
    return client.post("/api/v1/tokens", json=body, environ_base={"REMOTE_ADDR": source})


def _fresh_code(region: Region) -> str:
    """An admin code not used yet: the last accepted step forgotten, as waiting for the
    next 30 s would (these tests log in more than once a step)."""
    with region.sessions() as db, db.begin():
        db.execute(update(User).where(User.name == "admin").values(totp_last_step=None))
    return admin_code(region)


def _password(region: Region) -> str:
    return region.config.admin_password_file.read_text().strip()


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The password checks done, counted as they happen."""
    calls: list[str] = []

    class Counting(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            calls.append(str(hash))
            return super().verify(hash, password)

    monkeypatch.setattr(passwords, "HASHER", Counting(
        passwords.HASHER.time_cost, passwords.HASHER.memory_cost, passwords.HASHER.parallelism))
    return calls


def _unlock(region: Region) -> None:
    """The lockout runs out: its end moved into the past, as time passing would."""
    with region.sessions() as db, db.begin():
        db.execute(update(LoginThrottle).values(
            locked_until=datetime.now(UTC) - timedelta(seconds=1)))


def test_passwords_are_stored_as_argon2id(region: Region) -> None:
    with region.reads() as db:
        stored = db.scalar(select(User.password_hash).where(User.name == "admin"))
    assert stored is not None and stored.startswith("$argon2id$")
    assert passwords.verify_password(_password(region), stored)


def test_an_older_scrypt_hash_still_logs_in_and_is_replaced_by_argon2id(
        client: FlaskClient, region: Region) -> None:
    salt = os.urandom(16)
    digest = hashlib.scrypt(b"older secret", salt=salt, n=2**14, r=8, p=1, dklen=32)
    with region.sessions() as db, db.begin():
        db.execute(update(User).where(User.name == "admin")
                   .values(password_hash=f"scrypt${salt.hex()}${digest.hex()}"))
    assert _login(client, "admin", "older secret", totp=_fresh_code(region)).status_code == 201
    with region.reads() as db:
        stored = db.scalar(select(User.password_hash).where(User.name == "admin"))
    assert stored is not None and stored.startswith("$argon2id$")
    assert _login(client, "admin", "older secret", totp=_fresh_code(region)).status_code == 201


def test_repeated_failures_lock_the_user_out_before_any_hash_until_the_lockout_ends(
        client: FlaskClient, region: Region, hashes: list[str]) -> None:
    for _ in range(MAX_FAILURES):
        assert _login(client, "admin", "wrong").status_code == 401
    hashes.clear()
    # even the right password and code
    locked = _login(client, "admin", _password(region), totp=_fresh_code(region))
    assert locked.status_code == 429
    assert locked.json["title"] == "Too many requests"
    assert "too many failed logins" in locked.json["detail"]
    assert 0 < int(locked.headers["Retry-After"]) <= 900
    assert locked.json["retry_after_s"] == int(locked.headers["Retry-After"])
    assert hashes == [], "a locked-out login still hashed the password"
    with region.reads() as db:
        outcomes = db.scalars(select(AuditEvent.outcome)
                              .where(AuditEvent.action == "session.login")).all()
    assert outcomes.count("refused") == MAX_FAILURES
    _unlock(region)
    assert _login(client, "admin", _password(region), totp=_fresh_code(region)).status_code == 201


def test_an_unknown_user_name_is_locked_out_alike(client: FlaskClient) -> None:
    answers = []
    for name in ("admin", "nobody"):
        for _ in range(MAX_FAILURES):
            assert _login(client, name, "wrong").status_code == 401
        r = _login(client, name, "wrong")
        answers.append((r.status_code, r.json["detail"].split(";")[0]))
    assert answers[0] == answers[1] == (429, "too many failed logins for this user name or "
                                             "from this address")


def test_a_success_clears_the_user_names_count(client: FlaskClient, region: Region) -> None:
    for _ in range(MAX_FAILURES - 1):
        assert _login(client, "admin", "wrong").status_code == 401
    assert _login(client, "admin", _password(region), totp=_fresh_code(region)).status_code == 201
    for _ in range(MAX_FAILURES - 1):
        assert _login(client, "admin", "wrong").status_code == 401
    assert _login(client, "admin", _password(region), totp=_fresh_code(region)).status_code == 201


def test_one_address_guessing_many_names_is_locked_out_and_others_are_not(
        client: FlaskClient, region: Region) -> None:
    for i in range(PER_SOURCE):
        assert _login(client, f"guess{i}", "wrong", source="192.0.2.7").status_code == 401
    assert _login(client, "admin", _password(region), source="192.0.2.7",
                  totp=_fresh_code(region)).status_code == 429
    assert _login(client, "admin", _password(region), source="192.0.2.8",
                  totp=_fresh_code(region)).status_code == 201


def test_logins_beyond_the_hashing_slots_are_answered_503(client: FlaskClient,
                                                          region: Region) -> None:
    region.login_slots = HashSlots(1, 0.05)
    with region.login_slots.slot():  # a login being checked holds the only slot
        busy = _login(client, "admin", _password(region), totp=_fresh_code(region))
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert "too many logins" in busy.json["detail"]
    assert _login(client, "admin", _password(region), totp=_fresh_code(region)).status_code == 201
