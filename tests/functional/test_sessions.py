"""Browser sessions: a login sets a `__Host-` cookie whose secret is stored hashed; a request
by cookie that changes something needs the session's CSRF token and the controller's own
origin; a session ends unused after the idle timeout and at its absolute end however much
it is used; logout makes the cookie useless; a session secret is no bearer token and a
bearer token no session cookie."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from controller.api.cookies import SESSION_COOKIE
from controller.config import SessionLimits
from controller.db.models import ApiToken, AuditEvent, JoinToken, RoleBinding, User, as_utc
from controller.errors import Unauthorized
from controller.region import Region
from controller.schemas import UserCreate
from controller.services import identity, sessions
from controller.services.auth import sha256_hex

ORIGIN = "https://localhost"  # the test client's requests go to https://localhost
IDLE, MAX = timedelta(minutes=30), timedelta(hours=12)  # the defaults the region fixture has
COOKIE_ATTRIBUTES = "; Secure; HttpOnly; SameSite=Strict; Path=/"


class Browser:
    """A logged-in browser: its cookie jar holds the session cookie; `csrf` is the token
    its page keeps from the login answer."""

    def __init__(self, client: FlaskClient, region: Region) -> None:
        self.client, self.region = client, region
        self.login = login(client, region)
        assert self.login.status_code == 201, self.login.json
        self.csrf: str = self.login.json["csrf_token"]  # type: ignore[index]
        cookie = client.get_cookie(SESSION_COOKIE)
        assert cookie is not None
        self.secret = cookie.value

    def get(self, path: str, **headers: str) -> TestResponse:
        return self.client.get(path, base_url=ORIGIN, headers=headers)

    def send(self, method: str, path: str, headers: dict[str, str] | None = None,
             **kw: Any) -> TestResponse:
        """A request from the controller's own page with its CSRF token, unless `headers`
        says otherwise (a header given as "" is left out)."""
        sent = {"Origin": ORIGIN, "X-CSRF-Token": self.csrf, **(headers or {})}
        return self.client.open(path, method=method, base_url=ORIGIN,
                                headers={k: v for k, v in sent.items() if v}, **kw)

    def new_join_token(self, headers: dict[str, str] | None = None) -> TestResponse:
        return self.send("POST", "/api/v1/join-tokens", headers, json={"description": "x"})

    def row(self) -> ApiToken | None:
        with self.region.reads() as db:
            return db.scalar(select(ApiToken).where(ApiToken.token_sha256 ==
                                                    sha256_hex(self.secret)))

    def move_clock(self, by: timedelta) -> None:
        """Time passes by `by` for this session: its deadlines come that much nearer."""
        with self.region.sessions() as db, db.begin():
            row = db.scalar(select(ApiToken).where(ApiToken.token_sha256 ==
                                                   sha256_hex(self.secret)))
            assert row is not None
            row.created_at = as_utc(row.created_at) - by
            row.expires_at = as_utc(row.expires_at) - by


# the browser's user: an operator (join tokens are its to make), who logs in with a
# password alone (a region admin needs a one-time code, and each code is accepted once)
USER, PASSWORD = "ops", "ops-password-1234"


def operator(region: Region) -> None:
    """The user USER, an operator, made once per region."""
    with region.sessions() as db, db.begin():
        if db.scalar(select(User.id).where(User.name == USER)) is None:
            user, _ = identity.create_user(db, "test", UserCreate(name=USER, password=PASSWORD))
            db.add(RoleBinding(user_id=user.id, role="operator", created_by="test"))


def login(client: FlaskClient, region: Region, password: str | None = None) -> TestResponse:
    operator(region)
    return client.post("/api/v1/sessions", base_url=ORIGIN,
                       json={"username": USER, "password": password or PASSWORD})


@pytest.fixture
def browser(client: FlaskClient, region: Region) -> Browser:
    return Browser(client, region)


def _bearer(client: FlaskClient, region: Region) -> str:
    operator(region)
    r = client.post("/api/v1/tokens", json={"username": USER, "password": PASSWORD})
    assert r.status_code == 201
    return str(r.json["token"])  # type: ignore[index]


def _join_tokens(region: Region) -> int:
    with region.reads() as db:
        return int(db.scalar(select(func.count(JoinToken.id))) or 0)


def _audit(region: Region, action: str) -> list[AuditEvent]:
    with region.reads() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.action == action)
                               .order_by(AuditEvent.seq)))


def test_login_sets_exactly_the_cookie_and_keeps_only_hashes(browser: Browser,
                                                             region: Region) -> None:
    answer = browser.login
    assert answer.headers.getlist("Set-Cookie") == [
        f"{SESSION_COOKIE}={browser.secret}{COOKIE_ATTRIBUTES}"]
    assert answer.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = answer.json  # type: ignore[assignment]
    assert sorted(body) == ["csrf_token", "ends_at", "expires_at", "username"]
    assert body["username"] == USER
    expires, ends = (datetime.fromisoformat(body[k]) for k in ("expires_at", "ends_at"))
    assert ends - expires == MAX - IDLE
    assert abs(expires - datetime.now(UTC) - IDLE) < timedelta(minutes=1)
    row = browser.row()
    assert row is not None and row.kind == "session"
    assert row.csrf_sha256 == sha256_hex(browser.csrf)
    stored = [str(getattr(row, c.key)) for c in ApiToken.__table__.columns]
    assert not any(browser.secret in v or browser.csrf in v for v in stored)
    [entry] = _audit(region, "session.login")
    assert (entry.outcome, entry.token_id, entry.detail["kind"]) == ("succeeded", row.id,
                                                                      "session")


def test_the_cookie_authenticates_reads_and_writes_from_the_own_page(browser: Browser,
                                                                    region: Region) -> None:
    assert browser.get("/api/v1/join-tokens").status_code == 200
    assert browser.new_join_token().status_code == 201
    [entry] = _audit(region, "join-token.create")
    row = browser.row()
    assert row is not None and (entry.actor, entry.token_id) == (USER, row.id)


@pytest.mark.parametrize("csrf", ["", "wrong", "the cookie's secret"])
def test_a_write_without_the_csrf_token_is_refused_and_changes_nothing(
        browser: Browser, region: Region, csrf: str) -> None:
    entries = len(_audit(region, "join-token.create"))
    browser.move_clock(timedelta(minutes=10))  # a use now would move the deadline on
    expires = browser.row().expires_at  # type: ignore[union-attr]
    sent = browser.secret if csrf == "the cookie's secret" else csrf
    r = browser.new_join_token({"X-CSRF-Token": sent})  # "" leaves the header out
    assert r.status_code == 403
    assert r.json["check"] == "csrf-token"  # type: ignore[index]
    assert "X-CSRF-Token" in r.json["detail"]  # type: ignore[index]
    assert _join_tokens(region) == 0
    assert len(_audit(region, "join-token.create")) == entries
    assert browser.row().expires_at == expires  # type: ignore[union-attr]
    assert browser.send("DELETE", "/api/v1/sessions/current",
                        {"X-CSRF-Token": "wrong"}).status_code == 403
    assert browser.row() is not None, "a logout without the CSRF token ended the session"


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "https://localhost:8443"},  # another port is another origin
    {"Origin": "http://localhost"},  # another scheme too
    {"Origin": "null"},
    {"Origin": "", "Sec-Fetch-Site": "cross-site"},
    {"Origin": "", "Sec-Fetch-Site": "same-site"},
])
def test_a_write_from_another_origin_is_refused_even_with_the_csrf_token(
        browser: Browser, region: Region, headers: dict[str, str]) -> None:
    r = browser.new_join_token(headers)
    assert r.status_code == 403
    assert r.json["check"] == "origin"  # type: ignore[index]
    assert _join_tokens(region) == 0


def test_a_write_without_origin_from_the_own_site_is_accepted(browser: Browser) -> None:
    assert browser.new_join_token({"Origin": "", "Sec-Fetch-Site": "same-origin"}
                                  ).status_code == 201
    assert browser.new_join_token({"Origin": ""}).status_code == 201  # an older browser


def test_the_advertised_url_is_an_own_origin_too(client: FlaskClient, region: Region) -> None:
    import dataclasses

    region.config = dataclasses.replace(region.config,
                                         advertise_url="https://vauban.example:8443/")
    browser = Browser(client, region)
    assert browser.new_join_token({"Origin": "https://vauban.example:8443"}).status_code == 201


def test_a_session_ends_unused_after_the_idle_timeout(browser: Browser) -> None:
    browser.move_clock(IDLE - timedelta(minutes=1))
    assert browser.get("/api/v1/sessions/current").status_code == 200  # used: moved on
    browser.move_clock(IDLE - timedelta(minutes=1))
    assert browser.get("/api/v1/sessions/current").status_code == 200
    browser.move_clock(IDLE)
    r = browser.get("/api/v1/sessions/current")
    assert r.status_code == 401 and "unused for 1800 s" in r.json["detail"]  # type: ignore[index]


def test_a_session_ends_at_its_absolute_end_however_much_it_is_used(browser: Browser) -> None:
    for _ in range(int(MAX / (IDLE / 2)) - 1):
        browser.move_clock(IDLE / 2)
        assert browser.get("/api/v1/sessions/current").status_code == 200
    browser.move_clock(IDLE / 2)
    r = browser.get("/api/v1/sessions/current")
    assert r.status_code == 401
    assert "43200 s after its login" in r.json["detail"]  # type: ignore[index]


def test_a_read_writes_the_deadline_at_most_once_a_minute(browser: Browser) -> None:
    first = browser.row().expires_at  # type: ignore[union-attr]
    for _ in range(3):
        assert browser.get("/api/v1/sessions/current").status_code == 200
    assert browser.row().expires_at == first  # type: ignore[union-attr]
    browser.move_clock(timedelta(seconds=61))
    answer = browser.get("/api/v1/sessions/current")
    moved = as_utc(browser.row().expires_at)  # type: ignore[union-attr]
    assert moved > as_utc(first) - timedelta(seconds=61)
    assert datetime.fromisoformat(answer.json["expires_at"]) == moved  # type: ignore[index]


def test_the_deadline_follows_the_clock_passed(browser: Browser, region: Region) -> None:
    """The service decides by the `now` it is given: the clock driven, not waited for."""
    limits, now = SessionLimits(idle_s=IDLE.total_seconds(), max_s=MAX.total_seconds()), \
        datetime.now(UTC)
    with region.reads() as db:
        state = sessions.session_for_secret(db, browser.secret, limits, now)
        assert sessions.next_deadline(state, limits, now + timedelta(seconds=30)) is None
        later = now + timedelta(minutes=20)
        assert sessions.next_deadline(state, limits, later) == later + IDLE
        with pytest.raises(Unauthorized, match="unused"):
            sessions.session_for_secret(db, browser.secret, limits, now + IDLE + timedelta(
                minutes=1))
        with pytest.raises(Unauthorized, match="after its login"):
            sessions.session_for_secret(db, browser.secret, limits, now + MAX)
    near_end = state.ends_at - timedelta(minutes=10)
    assert sessions.next_deadline(state, limits, near_end) == state.ends_at


def test_current_says_who_and_until_when(browser: Browser, client: FlaskClient,
                                         region: Region) -> None:
    r = browser.get("/api/v1/sessions/current")
    assert r.status_code == 200
    assert r.json == {k: browser.login.json[k]  # type: ignore[index]
                      for k in ("username", "expires_at", "ends_at")}
    bearer = client.get("/api/v1/sessions/current",
                        headers={"Authorization": f"Bearer {_bearer(client, region)}"})
    assert bearer.status_code == 404 and "bearer token" in bearer.json["detail"]  # type: ignore[index]


def test_logout_clears_the_cookie_and_makes_it_useless(browser: Browser, client: FlaskClient,
                                                       region: Region) -> None:
    row = browser.row()
    assert row is not None
    r = browser.send("DELETE", "/api/v1/sessions/current")
    assert r.status_code == 204
    assert r.headers.getlist("Set-Cookie") == [
        f"{SESSION_COOKIE}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        f"{COOKIE_ATTRIBUTES}"]
    assert r.headers["Cache-Control"] == "no-store"
    assert client.get_cookie(SESSION_COOKIE) is None
    assert browser.row() is None
    [entry] = _audit(region, "session.logout")
    assert (entry.actor, entry.target, entry.token_id, entry.outcome) == (
        USER, f"token/{row.id}", row.id, "succeeded")
    client.set_cookie(SESSION_COOKIE, browser.secret)  # kept by a hostile copy
    assert browser.get("/api/v1/sessions/current").status_code == 401
    assert browser.new_join_token().status_code == 401
    assert _join_tokens(region) == 0


def test_a_session_secret_is_no_bearer_token_nor_a_token_a_cookie(
        browser: Browser, client: FlaskClient, region: Region) -> None:
    by_bearer = client.get("/api/v1/join-tokens",
                           headers={"Authorization": f"Bearer {browser.secret}"})
    assert by_bearer.status_code == 401
    token = _bearer(client, region)
    client.set_cookie(SESSION_COOKIE, token)
    assert browser.get("/api/v1/join-tokens").status_code == 401
    assert browser.new_join_token().status_code == 401


def test_bearer_requests_need_no_csrf_token_and_ignore_the_cookie(
        browser: Browser, client: FlaskClient, region: Region) -> None:
    token = _bearer(client, region)
    client.set_cookie(SESSION_COOKIE, "not a session")  # a bearer request does not read it
    r = client.post("/api/v1/join-tokens", base_url=ORIGIN, json={},
                    headers={"Authorization": f"Bearer {token}",
                             "Origin": "https://evil.example"})
    assert r.status_code == 201
    assert "Set-Cookie" not in r.headers


def test_session_logins_share_the_token_logins_lockout(client: FlaskClient,
                                                       region: Region) -> None:
    for _ in range(5):  # VAUBAN_LOGIN_MAX_FAILURES
        assert login(client, region, "wrong").status_code == 401
    locked = login(client, region)
    assert locked.status_code == 429 and "Set-Cookie" not in locked.headers
    assert _bearer_status(client, region) == 429
    assert [e.outcome for e in _audit(region, "session.login")] == ["refused"] * 5


def _bearer_status(client: FlaskClient, region: Region) -> int:
    return client.post("/api/v1/tokens", json={"username": USER, "password": PASSWORD}
                       ).status_code


def test_ended_sessions_are_purged_and_live_ones_and_tokens_kept(
        browser: Browser, client: FlaskClient, region: Region) -> None:
    token = _bearer(client, region)
    ended = Browser(client, region)
    ended.move_clock(IDLE)
    with region.sessions() as db, db.begin():
        assert sessions.purge_ended(db, datetime.now(UTC)) == 1
    assert ended.row() is None and browser.row() is not None
    assert client.get("/api/v1/join-tokens",
                      headers={"Authorization": f"Bearer {token}"}).status_code == 200
