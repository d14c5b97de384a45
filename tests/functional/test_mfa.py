"""The second factor at login: the admin needs a one-time code, a missing, wrong or replayed
one is a failed login counted toward the lockout, the code is checked only after the
password, and the bootstrap admin is enrolled at creation (or at the next start of a
region made before MFA) with its seed in a private file and never in a log."""

from __future__ import annotations

import logging
import stat
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from controller.bootstrap import open_region
from controller.db.models import AuditEvent, User
from controller.region import Region
from controller.services import mfa
from controller.services.login import CODE_NEEDED, NOT_ENROLLED, WRONG_CREDENTIALS
from controller.services.totp import code_at_step, step_of
from tests.functional.helpers import admin_code

MAX_FAILURES = 5


def _login(client: FlaskClient, password: str, totp: str | None = None,
           username: str = "admin") -> Any:
    body = {"username": username, "password": password}
    if totp is not None:
        body["totp"] = totp
    return client.post("/api/v1/tokens", json=body)


def _password(region: Region) -> str:
    return region.config.admin_password_file.read_text().strip()


def _refusals(region: Region) -> list[dict[str, Any]]:
    with region.reads() as db:
        return [e.detail for e in db.scalars(
            select(AuditEvent).where(AuditEvent.action == "session.login",
                                     AuditEvent.outcome == "refused"))]


def _seed(region: Region, name: str = "admin") -> str:
    with region.reads() as db:
        user = db.scalar(select(User).where(User.name == name))
        assert user is not None and user.totp_seed is not None
        return mfa.open_seed(region.region_key, user.id, user.totp_seed)


def test_the_bootstrap_admin_is_enrolled_with_its_uri_in_a_private_file(
        region: Region) -> None:
    uri_file = region.config.admin_totp_file
    assert uri_file.parent == region.config.admin_password_file.parent
    assert stat.S_IMODE(uri_file.stat().st_mode) == 0o600
    uri = uri_file.read_text().strip()
    assert uri.startswith("otpauth://totp/Vauban:admin?") and "issuer=Vauban" in uri
    seed = _seed(region)
    assert f"secret={seed}" in uri
    with region.reads() as db:
        sealed = db.scalar(select(User.totp_seed).where(User.name == "admin"))
    assert sealed is not None and seed not in sealed  # sealed, not stored in the clear
    with region.reads() as db:  # region admins need a second factor, other users may
        admin = db.scalar(select(User).where(User.name == "admin"))
        assert admin is not None and mfa.mfa_required(db, admin)
        assert not mfa.mfa_required(db, User(id="u-none", name="anyone", password_hash="x"))


def test_the_admin_needs_a_code_and_a_missing_one_is_a_counted_failure(
        client: FlaskClient, region: Region) -> None:
    missing = _login(client, _password(region))
    assert missing.status_code == 401
    assert missing.json["detail"] == CODE_NEEDED and missing.json["totp_required"] is True
    # with a wrong password, nothing tells that a code would be needed too
    wrong = _login(client, "wrong")
    assert wrong.json["detail"] == WRONG_CREDENTIALS and "totp_required" not in wrong.json
    assert _refusals(region) == [{"failed": "one-time code"}, {}]


def test_a_wrong_code_is_refused_like_a_wrong_password(client: FlaskClient,
                                                       region: Region) -> None:
    code = admin_code(region)
    wrong_code = f"{(int(code) + 1) % 1_000_000:06d}"
    answers = [_login(client, _password(region), wrong_code), _login(client, "wrong", code)]
    assert [(r.status_code, r.json["detail"]) for r in answers] == \
        [(401, WRONG_CREDENTIALS)] * 2
    with region.reads() as db:  # nothing was accepted: the step is not used up
        assert db.scalar(select(User.totp_last_step).where(User.name == "admin")) is None


@pytest.mark.parametrize("code", ["12345", "1234567", "12345a", " 123456", "123456\n",
                                  "１２３４５６"])
def test_a_code_that_is_not_six_ascii_digits_is_invalid_input(
        client: FlaskClient, region: Region, code: str) -> None:
    r = _login(client, _password(region), code)
    assert r.status_code == 422 and "totp" in r.json["detail"]


def test_a_valid_code_logs_in_once_and_a_replayed_or_older_one_is_refused(
        client: FlaskClient, region: Region) -> None:
    now = datetime.now(UTC)
    code = admin_code(region, now)
    ok = _login(client, _password(region), code)
    assert ok.status_code == 201, ok.json
    assert client.get("/api/v1/status", headers={
        "Authorization": f"Bearer {ok.json['token']}"}).status_code == 200
    replayed = _login(client, _password(region), code)
    older = _login(client, _password(region), admin_code(region, now - timedelta(seconds=30)))
    assert [(r.status_code, r.json["detail"]) for r in (replayed, older)] == \
        [(401, WRONG_CREDENTIALS)] * 2
    assert _refusals(region) == [{"failed": "one-time code"}] * 2
    # the next step's code (an authenticator a little ahead) is still good, once
    following = admin_code(region, now + timedelta(seconds=30))
    assert _login(client, _password(region), following).status_code == 201
    assert _login(client, _password(region), following).status_code == 401


def test_refused_codes_count_toward_the_lockout(client: FlaskClient, region: Region) -> None:
    code = admin_code(region)
    assert _login(client, _password(region), code).status_code == 201
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    # no code, a replayed one, a wrong one: each a failure of the admin's name
    for attempt in (None, code, wrong, None, code):
        r = _login(client, _password(region), attempt)
        assert r.status_code == 401, r.json
    assert len(_refusals(region)) == MAX_FAILURES
    with region.sessions() as db, db.begin():  # as if the next step had come
        db.execute(update(User).where(User.name == "admin").values(totp_last_step=None))
    locked = _login(client, _password(region), admin_code(region))  # right, and locked out
    assert locked.status_code == 429 and "too many failed logins" in locked.json["detail"]


def test_concurrent_logins_with_one_code_let_one_in(client: FlaskClient,
                                                    region: Region) -> None:
    """The step moves by a conditional update: the second of two requests that both read
    the old step before either wrote is refused (played here in one thread: the second
    request's read is the stale user row the first had)."""
    now = datetime.now(UTC)
    with region.sessions() as db, db.begin():
        stale = db.scalar(select(User).where(User.name == "admin"))
        assert stale is not None
        db.expunge(stale)
    code = code_at_step(_seed(region), step_of(now))
    with region.sessions() as db, db.begin():
        assert mfa.accept_code(db, region.region_key, stale, stale.totp_seed or "", code, now)
    with region.sessions() as db, db.begin():
        assert not mfa.accept_code(db, region.region_key, stale, stale.totp_seed or "", code,
                                   now)


def test_a_user_who_must_use_mfa_but_has_no_seed_is_told_after_the_password(
        client: FlaskClient, region: Region) -> None:
    with region.sessions() as db, db.begin():
        db.execute(update(User).where(User.name == "admin").values(totp_seed=None))
    assert _login(client, "wrong").json["detail"] == WRONG_CREDENTIALS
    r = _login(client, _password(region), admin_code(region))
    assert r.status_code == 401 and r.json["detail"] == NOT_ENROLLED


def test_a_region_made_before_mfa_enrolls_its_admin_at_the_next_start(
        region: Region, caplog: pytest.LogCaptureFixture) -> None:
    uri_file = region.config.admin_totp_file
    with region.sessions() as db, db.begin():
        db.execute(update(User).where(User.name == "admin").values(totp_seed=None))
    uri_file.unlink()
    password = _password(region)
    with caplog.at_level(logging.DEBUG):
        again = open_region(region.config)
    try:
        seed = _seed(again)
        assert stat.S_IMODE(uri_file.stat().st_mode) == 0o600
        assert f"secret={seed}" in uri_file.read_text()
        assert str(uri_file) in caplog.text and seed not in caplog.text
        assert _password(again) == password  # the password is left alone
        with again.reads() as db:
            entry = db.scalar(select(AuditEvent).where(AuditEvent.action == "user.totp.enroll"))
        assert entry is not None and entry.actor == "controller"
        assert seed not in str(entry.detail)
        before = uri_file.read_text()
        open_region(region.config).engine.dispose()  # enrolled once: a third start keeps it
        assert uri_file.read_text() == before
    finally:
        again.engine.dispose()
