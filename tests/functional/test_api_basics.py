"""Authentication, problem documents and the OpenAPI document."""

from __future__ import annotations

from typing import Literal

import pytest
from argon2 import PasswordHasher
from flask.testing import FlaskClient
from sqlalchemy import select

from controller.db.models import AuditEvent
from controller.region import Region
from controller.services import passwords
from tests.functional.helpers import Api


def test_openapi_document_describes_the_models(client: FlaskClient) -> None:
    doc = client.get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")
    create = doc["paths"]["/api/v1/instances"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/InstanceCreate")
    assert "202" in create["responses"]
    schema = doc["components"]["schemas"]["InstanceCreate"]
    assert schema["additionalProperties"] is False
    assert {"name", "image", "vcpus", "memory_mib"} <= set(schema["required"])
    assert "/agent/v1/nodes/{node_id}/desired" in doc["paths"]


def test_endpoints_need_a_token(client: FlaskClient) -> None:
    r = client.get("/api/v1/instances")
    assert r.status_code == 401
    assert r.mimetype == "application/problem+json"
    assert r.json["title"] == "Unauthorized"
    assert "Bearer" in r.json["detail"]
    bad = client.get("/api/v1/instances", headers={"Authorization": "Bearer vbt_nope"})
    assert bad.status_code == 401 and "not valid" in bad.json["detail"]


def test_wrong_password_is_refused_and_audited(client: FlaskClient, region: Region) -> None:
    r = client.post("/api/v1/tokens", json={"username": "admin", "password": "wrong"})
    assert r.status_code == 401
    assert r.json["detail"] == "wrong user name, password or one-time code"
    with region.sessions() as db:
        events = db.scalars(select(AuditEvent).where(AuditEvent.action == "session.login"))
        assert [e.outcome for e in events] == ["refused"]


def test_admin_password_file_is_private(region: Region) -> None:
    assert region.config.admin_password_file.stat().st_mode & 0o077 == 0
    assert (region.ca.key_path.stat().st_mode & 0o077) == 0


def test_malformed_json_is_a_400_problem(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    r = api.post("/api/v1/instances", data="{not json", content_type="application/json")
    assert r.status_code == 400
    assert r.json["title"] == "Malformed JSON"
    assert r.json["type"].endswith("/malformed-json")


def test_non_json_body_is_refused(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    r = api.post("/api/v1/instances", data="name=x", content_type="text/plain")
    assert r.status_code == 415
    assert "application/json" in r.json["detail"]


def test_unknown_field_is_named(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    r = api.post("/api/v1/instances", json={"name": "a", "image": "i", "vcpus": 1,
                                            "memory_mib": 128, "colour": "blue"})
    assert r.status_code == 422
    assert r.json["detail"] == "body field 'colour': unknown field"
    assert {"field": "colour", "message": "unknown field"} in r.json["errors"]


def test_unknown_endpoint_and_method_are_problems(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    r = api.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    r = api.client.put("/api/v1/instances", headers=api.headers)
    assert r.status_code == 405 and "PUT" in r.json["detail"]


def test_status_counts(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    api.join_node("n1")
    s = api.get("/api/v1/status").json
    assert s["nodes_up"] == 1 and s["instances"] == 0
    assert s["database"] == region.engine.dialect.name
    assert s["ca_sha256"] == region.ca_sha256


def test_audit_trail_lists_mutations_newest_first(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    api.post("/api/v1/join-tokens", json={"description": "x"})
    events = api.get("/api/v1/audit-events").json
    assert [e["action"] for e in events[:2]] == ["join-token.create", "session.login"]
    assert events[0]["actor"] == "admin" and events[0]["outcome"] == "accepted"
    only = api.get("/api/v1/audit-events?action=session.login").json
    assert {e["action"] for e in only} == {"session.login"}


def test_method_not_allowed_names_the_allowed_methods(client: FlaskClient,
                                                      region: Region) -> None:
    api = Api(client, region)
    r = api.client.put("/api/v1/instances", headers=api.headers)
    assert r.status_code == 405 and r.mimetype == "application/problem+json"
    assert {"GET", "POST"} <= {m.strip() for m in r.headers["Allow"].split(",")}
    r = api.client.post("/api/v1/openapi.json")
    assert r.status_code == 405 and "GET" in r.headers["Allow"]
    assert "POST" not in r.headers["Allow"]


def test_login_does_the_same_work_for_unknown_users(client: FlaskClient, region: Region,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer time must not tell whether a user exists: both refusals hash once."""
    calls: list[str] = []

    class Counting(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            calls.append("verify")
            return super().verify(hash, password)

    monkeypatch.setattr(passwords, "HASHER", Counting(
        passwords.HASHER.time_cost, passwords.HASHER.memory_cost, passwords.HASHER.parallelism))
    answers = []
    for username in ("admin", "nobody"):
        calls.clear()
        r = client.post("/api/v1/tokens", json={"username": username, "password": "wrong"})
        answers.append((r.status_code, r.headers["Content-Type"], r.json))
        assert calls == ["verify"], username
    assert answers[0] == answers[1]
    assert answers[0][0] == 401
