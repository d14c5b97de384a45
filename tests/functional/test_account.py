"""A user's own account (TOTP enrollment and confirmation, password change) and an
administrator's reset: each audited without a secret, the seed never in an API answer
after enrollment nor in a log, tokens revoked where they must be."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from controller.db.models import ApiToken, AuditEvent, User
from controller.region import Region
from controller.services import passwords
from controller.services.auth import new_token
from controller.services.login import CODE_NEEDED, WRONG_CREDENTIALS
from controller.services.totp import code_from_uri
from tests.functional.helpers import Api, admin_code

NEW_PASSWORD = "correct horse battery staple"


def _password(region: Region) -> str:
    return region.config.admin_password_file.read_text().strip()


def _login(client: FlaskClient, username: str, password: str, totp: str | None) -> Any:
    body = {"username": username, "password": password}
    if totp is not None:
        body["totp"] = totp
    return client.post("/api/v1/tokens", json=body)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _later(minutes: float) -> datetime:
    """A time ahead of now: a code of it is one of a later step (the next, within the
    drift accepted, when `minutes` is half a step)."""
    return datetime.now(UTC) + timedelta(minutes=minutes)


def _entries(region: Region, action: str) -> list[AuditEvent]:
    with region.reads() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action)
                               .order_by(AuditEvent.seq)))


def _all_entries_text(region: Region) -> str:
    with region.reads() as db:
        return "\n".join(f"{e.actor} {e.action} {e.target} {e.outcome} {e.detail}"
                         for e in db.scalars(select(AuditEvent)))


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    return Api(client, region)


def test_enroll_then_confirm_switches_the_seed_which_no_answer_shows_again(
        api: Api, region: Region, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    status = api.get("/api/v1/account/totp")
    assert status.json == {"username": "admin", "enrolled": True, "required": True}
    # a token alone does not enroll a seed: the password and the current code say it is you
    assert api.post("/api/v1/account/totp", json={}).status_code == 422
    wrong_password = api.post("/api/v1/account/totp", json={
        "password": "not-it", "totp": admin_code(region)})
    assert wrong_password.status_code == 403
    with region.sessions() as db, db.begin():  # as in a later step than the admin's login
        db.execute(update(User).where(User.name == "admin").values(totp_last_step=None))
    started = api.post("/api/v1/account/totp", json={"password": _password(region),
                                                      "totp": admin_code(region)})
    assert started.status_code == 201 and started.json["state"] == "pending"
    uri = started.json["provisioning_uri"]
    seed = uri.split("secret=")[1].split("&")[0]
    assert uri.startswith("otpauth://totp/Vauban:admin?") and len(seed) == 32

    # pending: the new seed does not log in yet, the old one is still the one enrolled
    new_code = code_from_uri(uri, _later(0.5))
    assert _login(api.client, "admin", _password(region), new_code).status_code == 401
    assert api.get("/api/v1/account/totp").json["enrolled"] is True

    wrong = api.post("/api/v1/account/totp/confirm",
                     json={"code": f"{(int(new_code) + 1) % 1_000_000:06d}"})
    assert wrong.status_code == 403 and "does not match" in wrong.json["detail"]
    confirmed = api.post("/api/v1/account/totp/confirm",
                         json={"code": code_from_uri(uri, datetime.now(UTC))})
    assert confirmed.status_code == 200, confirmed.json
    assert confirmed.json == {"username": "admin", "enrolled": True, "required": True}
    again = api.post("/api/v1/account/totp/confirm", json={"code": new_code})
    assert again.status_code == 409

    # active: the new seed logs in (a later step than the confirmed code's), the old not
    assert _login(api.client, "admin", _password(region),
                  admin_code(region, _later(1))).status_code == 401
    assert _login(api.client, "admin", _password(region),
                  code_from_uri(uri, _later(0.5))).status_code == 201

    assert [e.outcome for e in _entries(region, "user.totp.enroll")] == ["refused", "pending"]
    assert [e.outcome for e in _entries(region, "user.totp.confirm")] == \
        ["refused", "succeeded"]
    # after enrollment the seed is in no answer, no audit entry and no log
    answers = [api.get("/api/v1" + path) for path in
               ("/account/totp", "/audit-events", "/audit-events/export", "/status")]
    for r in answers:
        assert r.status_code == 200 and seed not in r.get_data(as_text=True)
    assert seed not in _all_entries_text(region) and seed not in caplog.text


def test_enrollment_needs_a_token(client: FlaskClient, region: Region) -> None:
    assert client.post("/api/v1/account/totp", json={"password": "x"}).status_code == 401
    assert client.post("/api/v1/account/totp/confirm",
                       json={"code": "123456"}).status_code == 401
    assert client.post("/api/v1/users/admin/reset", json={"totp": True}).status_code == 401


def test_a_password_change_revokes_the_other_tokens_and_the_old_password(
        api: Api, region: Region) -> None:
    old = _password(region)
    with region.sessions() as db, db.begin():  # another session of the admin's
        admin = db.scalar(select(User).where(User.name == "admin"))
        assert admin is not None
        other, _ = new_token(db, admin.id, _later(60))
    change = {"current_password": old, "new_password": NEW_PASSWORD}

    # refused: wrong current password, missing code, short or unchanged new password
    code = admin_code(region, _later(0.5))  # not used yet: the api's login used now's
    wrong = api.post("/api/v1/account/password",
                     json={**change, "current_password": "wrong", "totp": code})
    assert wrong.status_code == 403 and wrong.json["detail"] == WRONG_CREDENTIALS
    missing = api.post("/api/v1/account/password", json=change)
    assert missing.status_code == 403 and missing.json["detail"] == CODE_NEEDED
    short = api.post("/api/v1/account/password", json={**change, "new_password": "short"})
    assert short.status_code == 422 and "new_password" in short.json["detail"]
    same = api.post("/api/v1/account/password", json={**change, "new_password": old,
                                                      "totp": code})
    assert same.status_code == 422 and "current one" in same.json["detail"]

    done = api.post("/api/v1/account/password", json={**change, "totp": code})
    assert done.status_code == 200, done.json
    assert done.json == {"username": "admin", "tokens_revoked": 1}
    assert api.get("/api/v1/status").status_code == 200  # the token it was asked with stays
    assert api.client.get("/api/v1/status", headers=_bearer(other)).status_code == 401
    with region.sessions() as db, db.begin():  # as if the next step had come
        db.execute(update(User).where(User.name == "admin").values(totp_last_step=None))
    code = admin_code(region)
    assert _login(api.client, "admin", old, code).status_code == 401
    assert _login(api.client, "admin", NEW_PASSWORD, code).status_code == 201
    with region.reads() as db:
        stored = db.scalar(select(User.password_hash).where(User.name == "admin"))
    assert stored is not None and passwords.verify_password(NEW_PASSWORD, stored)
    assert [e.outcome for e in _entries(region, "user.password.change")] == \
        ["refused", "refused", "succeeded"]
    text = _all_entries_text(region)
    assert NEW_PASSWORD not in text and old not in text


def _add_user(region: Region, name: str) -> None:
    with region.sessions() as db, db.begin():
        db.add(User(name=name, password_hash=passwords.hash_password("x" * 16)))


def test_an_admin_reset_gives_a_new_password_and_seed_once_and_revokes_tokens(
        api: Api, region: Region) -> None:
    _add_user(region, "alice")
    reset = api.post("/api/v1/users/alice/reset", json={"totp": True})
    assert reset.status_code == 200, reset.json
    body = reset.json
    assert body["username"] == "alice" and body["tokens_revoked"] == 0
    assert len(body["password"]) >= 12
    uri = body["provisioning_uri"]
    assert uri.startswith("otpauth://totp/Vauban:alice?")
    login = _login(api.client, "alice", body["password"], code_from_uri(uri, datetime.now(UTC)))
    assert login.status_code == 201, login.json

    # a reset of the password alone keeps the seed, and revokes alice's token
    again = api.post("/api/v1/users/alice/reset", json={})
    assert again.status_code == 200
    assert again.json["provisioning_uri"] is None and again.json["tokens_revoked"] == 1
    assert api.client.get("/api/v1/status",
                          headers=_bearer(login.json["token"])).status_code == 401
    assert _login(api.client, "alice", body["password"],
                  code_from_uri(uri, _later(0.5))).status_code == 401
    assert _login(api.client, "alice", again.json["password"],
                  code_from_uri(uri, _later(0.5))).status_code == 201
    with region.reads() as db:
        alice = db.scalar(select(User).where(User.name == "alice"))
        assert alice is not None
        assert db.scalar(select(ApiToken).where(ApiToken.user_id == alice.id)) is not None

    assert api.post("/api/v1/users/nobody/reset", json={"totp": True}).status_code == 404
    assert api.post("/api/v1/users/alice/reset", json={"totp": "yes"}).status_code == 422
    entries = _entries(region, "user.reset")
    assert [(e.actor, e.target, e.detail) for e in entries] == [
        ("admin", "user/alice", {"new_totp_seed": True, "tokens_revoked": 0}),
        ("admin", "user/alice", {"new_totp_seed": False, "tokens_revoked": 1})]
    text = _all_entries_text(region)
    assert body["password"] not in text and uri.split("secret=")[1][:32] not in text
