"""The all-in-one's admin login: the code computed from the admin's otpauth URI file, and
one login per region and credentials (a code is accepted once), the token reused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller import allinone
from controller.services.totp import code_from_uri, new_seed, provisioning_uri


class Answer:
    def __init__(self, token: str, expires_at: datetime) -> None:
        self.body = {"token": token, "expires_at": expires_at.isoformat()}

    def raise_for_status(self) -> None:
        pass

    def json(self) -> dict[str, Any]:
        return self.body


@pytest.fixture
def posts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The login requests sent; each answered with a new token, valid for 12 hours (half
    an hour for the password "short-lived")."""
    sent: list[dict[str, Any]] = []

    def post(url: str, **kw: Any) -> Answer:
        sent.append({"url": url, **kw["json"]})
        hours = 12 if kw["json"]["password"] != "short-lived" else 0.5
        return Answer(f"vbt_{len(sent)}", datetime.now(UTC) + timedelta(hours=hours))

    monkeypatch.setattr(allinone.requests, "post", post)
    return sent


def _layout(root: Path, password: str) -> allinone.Layout:
    lay = allinone.Layout(root, port=18443)
    lay.controller_dir.mkdir(parents=True)
    lay.password_file.write_text(password + "\n")
    lay.totp_file.write_text(provisioning_uri(new_seed(), "admin") + "\n")
    return lay


def test_the_admin_logs_in_once_with_the_code_of_its_seed_file(
        tmp_path: Path, posts: list[dict[str, Any]]) -> None:
    lay = _layout(tmp_path, "secret password")
    assert allinone.admin_token(lay) == allinone.admin_token(lay) == "vbt_1"
    assert len(posts) == 1
    sent = posts[0]
    assert sent["url"] == f"{lay.url}/api/v1/tokens" and sent["password"] == "secret password"
    now = datetime.now(UTC)
    assert sent["totp"] in {code_from_uri(lay.totp_file.read_text(), now + timedelta(seconds=s))
                            for s in (-30, 0)}


def test_new_credentials_or_a_token_near_its_end_log_in_again(
        tmp_path: Path, posts: list[dict[str, Any]]) -> None:
    lay = _layout(tmp_path / "a", "secret password")
    allinone.admin_token(lay)
    lay.totp_file.write_text(provisioning_uri(new_seed(), "admin") + "\n")  # made again
    assert allinone.admin_token(lay) == "vbt_2"
    short = _layout(tmp_path / "b", "short-lived")
    assert allinone.admin_token(short) == "vbt_3"
    assert allinone.admin_token(short) == "vbt_4"  # less than an hour left: not reused
