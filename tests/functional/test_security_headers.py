"""Every answer carries the security headers: successes, problems, and the agent's API."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from controller.api.headers import SECURITY_HEADERS
from controller.region import Region
from tests.functional.helpers import Api


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/api/v1/ca.pem", 200),
    ("GET", "/api/v1/openapi.json", 200),
    ("GET", "/api/v1/instances", 401),  # no token
    ("GET", "/api/v1/nowhere", 404),
    ("DELETE", "/api/v1/tokens", 405),
    ("POST", "/api/v1/tokens", 400),  # not JSON
    ("GET", "/agent/v1/nodes/x/desired", 401),  # no node certificate
])
def test_answers_of_every_kind_carry_the_security_headers(
        client: FlaskClient, method: str, path: str, status: int) -> None:
    r = client.open(path, method=method, data=b"{" if method == "POST" else None,
                    content_type="application/json" if method == "POST" else None)
    assert r.status_code == status, r.data[:200]
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, (path, name)


def test_an_authenticated_answer_is_never_cached(client: FlaskClient, region: Region) -> None:
    r = Api(client, region).get("/api/v1/status")
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
