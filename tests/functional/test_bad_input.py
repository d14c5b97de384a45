"""Every endpoint that takes input answers bad input with a 4xx problem naming the mistake."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from controller.region import Region
from tests.functional.helpers import Api

CASES: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/api/v1/tokens", {"username": "admin"}, 422, "'password': field required"),
    ("POST", "/api/v1/tokens", {"username": "admin", "password": "x", "ttl_seconds": 5}, 422,
     "'ttl_seconds'"),
    ("POST", "/api/v1/join-tokens", {"ttl_seconds": 10**9}, 422, "'ttl_seconds'"),
    ("POST", "/api/v1/join-tokens", {"description": 5}, 422, "'description'"),
    ("POST", "/api/v1/join", {"token": "short", "name": "n", "csr_pem": "x"}, 422, "'token'"),
    ("POST", "/api/v1/instances", [], 422, "body field 'body'"),
    ("POST", "/api/v1/instances", {"name": "a", "image": "", "vcpus": 1, "memory_mib": 64},
     422, "'image'"),
    ("POST", "/api/v1/instances", {"name": "a", "image": "x", "vcpus": 1, "memory_mib": 64,
                                   "user_data": "x" * 70000}, 422, "'user_data'"),
    ("GET", "/api/v1/operations?limit=0", None, 422, "query parameter field 'limit'"),
    ("GET", "/api/v1/operations?colour=red", None, 422, "'colour': unknown field"),
    ("GET", "/api/v1/operations/nope", None, 404, "operation nope does not exist"),
    ("GET", "/api/v1/instances/nope", None, 404, "instance 'nope' does not exist"),
    ("POST", "/api/v1/instances/nope/start", None, 404, "instance 'nope' does not exist"),
    ("DELETE", "/api/v1/instances/nope", None, 404, "instance 'nope' does not exist"),
    ("GET", "/api/v1/images/nope", None, 404, "image 'nope' does not exist"),
    ("DELETE", "/api/v1/images/nope", None, 404, "image 'nope' does not exist"),
    ("GET", "/api/v1/nodes/nope", None, 404, "node 'nope' does not exist"),
    ("DELETE", "/api/v1/join-tokens/nope", None, 404, "join token nope does not exist"),
    ("POST", "/api/v1/images?name=x&disk_format=raw", None, 422, "'sha256': field required"),
]


@pytest.mark.parametrize("method, path, body, status, detail", CASES,
                         ids=[f"{c[0]} {c[1]} {c[4]}" for c in CASES])
def test_bad_input(client: FlaskClient, region: Region, method: str, path: str, body: Any,
                   status: int, detail: str) -> None:
    api = Api(client, region)
    r = api.client.open(path, method=method, json=body, headers=api.headers)
    assert r.status_code == status
    assert r.mimetype == "application/problem+json"
    assert detail in r.json["detail"]


def test_agent_desired_query_is_validated(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    node = api.join_node("n1")
    r = client.get(f"/agent/v1/nodes/{node.id}/desired?after=-5",
                   environ_overrides=node.environ())
    assert r.status_code == 422 and "'after'" in r.json["detail"]
    r = client.post(f"/agent/v1/nodes/{node.id}/status", json={"vms": []},
                    environ_overrides=node.environ())
    assert r.status_code == 422 and "field required" in r.json["detail"]


def test_a_query_parameter_given_twice_is_refused_by_name(client: FlaskClient,
                                                          region: Region) -> None:
    api = Api(client, region)
    r = api.get("/api/v1/audit-events?actor=admin&actor=node&action=x&action=y")
    assert r.status_code == 422
    assert r.json["detail"] == ("query parameter 'action' is given more than once; give it "
                                "once (and 1 more)")
    assert [e["field"] for e in r.json["errors"]] == ["action", "actor"]
    assert api.get("/api/v1/audit-events?actor=admin").status_code == 200


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("POST", "/api/v1/join-tokens", {"description": "rack\u00003"}, "description"),
    ("GET", "/api/v1/audit-events?actor=ad%00min", None, "actor"),
])
def test_a_nul_character_is_refused_by_field_not_left_to_the_database(
        client: FlaskClient, region: Region, method: str, path: str, body: Any,
        field: str) -> None:
    """PostgreSQL cannot store NUL: it used to fail the request with a 500."""
    api = Api(client, region)
    r = api.get(path) if method == "GET" else api.post(path, json=body)
    assert r.status_code == 422, r.json
    assert r.json["errors"][0]["field"] == field
    assert "NUL" in r.json["errors"][0]["message"]


def test_a_nul_character_in_a_login_is_refused_before_any_lookup(client: FlaskClient) -> None:
    r = client.post("/api/v1/tokens", json={"username": "ad\u0000min", "password": "x"})
    assert r.status_code == 422 and r.json["errors"][0]["field"] == "username"
