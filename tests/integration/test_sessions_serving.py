"""A browser session against the real controller process over TLS: the cookie as gunicorn
sends it, the controller's own origin as it sees itself behind TLS, CSRF and origin checks,
and logout."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from controller.api.cookies import SESSION_COOKIE
from controller.services.totp import code_from_uri
from tests.e2e.region import E2ERegion


@pytest.fixture
def controller() -> Iterator[E2ERegion]:
    with E2ERegion.controller_only() as region:
        yield region


def test_a_browser_session_over_tls(controller: E2ERegion) -> None:
    url, ca = controller.layout.url, str(controller.layout.ca_file)

    def call(method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, f"{url}/api/v1{path}", verify=ca, timeout=60, **kw)

    password = controller.layout.password_file.read_text().strip()
    # the next step's code (accepted within one step of drift): the fixture's own login
    # may have used this step's, and a code is accepted once
    code = code_from_uri(controller.layout.totp_file.read_text().strip(),
                         datetime.now(UTC) + timedelta(seconds=30))
    login = call("POST", "/sessions", json={"username": "admin", "password": password,
                                            "totp": code})
    assert login.status_code == 201, login.text
    set_cookie = login.headers["Set-Cookie"]
    secret = set_cookie.split(";")[0].removeprefix(f"{SESSION_COOKIE}=")
    assert set_cookie == f"{SESSION_COOKIE}={secret}; Secure; HttpOnly; SameSite=Strict; Path=/"
    assert login.headers["Cache-Control"] == "no-store"
    csrf = login.json()["csrf_token"]
    cookie = {"Cookie": f"{SESSION_COOKIE}={secret}"}

    current = call("GET", "/sessions/current", headers=cookie)
    assert current.status_code == 200 and current.json()["username"] == "admin"
    own = {**cookie, "Origin": url, "X-CSRF-Token": csrf}
    assert call("POST", "/join-tokens", json={}, headers=own).status_code == 201
    cross = call("POST", "/join-tokens", json={},
                 headers={**own, "Origin": "https://evil.example"})
    assert cross.status_code == 403 and cross.json()["check"] == "origin"
    no_token = call("POST", "/join-tokens", json={}, headers={**cookie, "Origin": url})
    assert no_token.status_code == 403 and no_token.json()["check"] == "csrf-token"
    assert call("GET", "/join-tokens",
                headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert len(call("GET", "/join-tokens", headers=cookie).json()) == 1

    logout = call("DELETE", "/sessions/current", headers=own)
    assert logout.status_code == 204
    assert logout.headers["Set-Cookie"].startswith(f"{SESSION_COOKIE}=; Max-Age=0;")
    assert logout.headers["Cache-Control"] == "no-store"
    assert call("GET", "/sessions/current", headers=cookie).status_code == 401
