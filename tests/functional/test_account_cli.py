"""`vauban account totp enroll|confirm`, `vauban account password`, `vauban user reset` and
`vauban login`'s one-time code, answered by the controller's API (stdin not a terminal:
secrets are read one per line)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from controller.cli import main as cli
from controller.db.models import User
from controller.region import Region
from controller.services.totp import code_from_uri
from tests.functional.cli_helpers import cli_answered_by
from tests.functional.helpers import Api, admin_code

NEW_PASSWORD = "correct horse battery staple"


@pytest.fixture
def api(client: FlaskClient, region: Region, monkeypatch: pytest.MonkeyPatch) -> Api:
    return cli_answered_by(Api(client, region), monkeypatch)


def _stdin(monkeypatch: pytest.MonkeyPatch, *lines: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))


def _later() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=30)


def test_enroll_then_confirm(api: Api, region: Region, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    password = region.config.admin_password_file.read_text().strip()
    _stdin(monkeypatch, password, admin_code(region, _later()))  # asked: password, code
    assert cli.main(["account", "totp", "enroll"]) == 0
    out = capsys.readouterr().out
    uri = next(line for line in out.splitlines() if line.startswith("otpauth://"))
    assert "shown only now" in out
    _stdin(monkeypatch, "000000" if code_from_uri(uri, datetime.now(UTC)) != "000000"
           else "111111")
    assert cli.main(["account", "totp", "confirm"]) == 1
    assert "does not match" in capsys.readouterr().err
    _stdin(monkeypatch, code_from_uri(uri, datetime.now(UTC)))
    assert cli.main(["account", "totp", "confirm"]) == 0
    assert "logs in with the new one-time code seed" in capsys.readouterr().out


def test_password_change_asks_for_the_code_of_a_user_with_mfa(
        api: Api, region: Region, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    old = region.config.admin_password_file.read_text().strip()
    _stdin(monkeypatch, old, NEW_PASSWORD, admin_code(region, _later()))
    assert cli.main(["account", "password"]) == 0
    assert "0 other token(s) revoked" in capsys.readouterr().out


def test_user_reset_prints_the_new_credentials_once(
        api: Api, region: Region, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["user", "reset", "nobody"]) == 1
    assert "no user named 'nobody'" in capsys.readouterr().err
    assert cli.main(["user", "reset", "admin", "--totp"]) == 0
    out = capsys.readouterr().out
    assert "1 token(s) revoked" in out  # the admin reset itself: its own token too
    password = out.split("password: ")[1].split()[0]
    uri = out.split("(otpauth URI): ")[1].split()[0]
    login = api.client.post("/api/v1/tokens", json={
        "username": "admin", "password": password,
        "totp": code_from_uri(uri, datetime.now(UTC))})
    assert login.status_code == 201, login.json


def test_login_sends_the_code_of_a_totp_file_or_says_how_to_give_one(
        api: Api, region: Region, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[str | None] = []
    monkeypatch.setenv("VAUBAN_CONFIG", str(region.config.data_dir / "cli.json"))
    monkeypatch.setattr(cli.Settings, "save", lambda self, *_remote: saved.append(self.token))
    base = ["login", "--password-file", str(region.config.admin_password_file)]
    _stdin(monkeypatch)
    assert cli.main(base) == 1
    assert "give --totp CODE or --totp-file FILE" in capsys.readouterr().err
    with region.sessions() as db, db.begin():  # as if the next step had come
        db.execute(update(User).where(User.name == "admin").values(totp_last_step=None))
    assert cli.main([*base, "--totp-file", str(region.config.admin_totp_file)]) == 0
    assert "logged in to" in capsys.readouterr().out
    assert cli.main([*base, "--totp", admin_code(region, _later())]) == 0
    assert len(saved) == 2 and all(t and t.startswith("vbt_") for t in saved)
