"""Joining a node: one-time tokens, CSR signing, and node-only agent endpoints."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import func, select

from controller.db.models import JoinToken, Node
from controller.region import Region
from tests.functional.helpers import Api, make_csr


def _token(api: Api) -> str:
    r = api.post("/api/v1/join-tokens", json={"description": "rack 1"})
    assert r.status_code == 201
    assert r.json["ca_sha256"] == api.region.ca_sha256
    return str(r.json["token"])


def test_join_token_works_once(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    token = _token(api)
    first = client.post("/api/v1/join", json={"token": token, "name": "n1",
                                              "csr_pem": make_csr("n1")})
    assert first.status_code == 201
    again = client.post("/api/v1/join", json={"token": token, "name": "n2",
                                              "csr_pem": make_csr("n2")})
    assert again.status_code == 401
    assert "already used" in again.json["detail"]
    listed = api.get("/api/v1/join-tokens").json
    assert listed[0]["used_by_node_id"] == first.json["node_id"]
    assert "token" not in listed[0]


def test_bad_csr_leaves_token_unspent(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    token = _token(api)
    r = client.post("/api/v1/join", json={"token": token, "name": "n1", "csr_pem": "garbage"})
    assert r.status_code == 422
    assert "csr_pem" in r.json["detail"]
    with region.sessions() as db:
        assert db.scalar(select(func.count(Node.id))) == 0
        assert db.scalar(select(JoinToken.used_at)) is None
    ok = client.post("/api/v1/join", json={"token": token, "name": "n1",
                                           "csr_pem": make_csr("n1")})
    assert ok.status_code == 201


def test_duplicate_node_name_is_a_conflict(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    api.join_node("n1")
    r = client.post("/api/v1/join", json={"token": _token(api), "name": "n1",
                                          "csr_pem": make_csr("n1")})
    assert r.status_code == 409 and "n1" in r.json["detail"]


def test_invalid_node_name(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    r = client.post("/api/v1/join", json={"token": _token(api), "name": "Bad_Name",
                                          "csr_pem": make_csr("x")})
    assert r.status_code == 422 and "'name'" in r.json["detail"]


def test_agent_endpoints_need_the_nodes_own_certificate(client: FlaskClient,
                                                        region: Region) -> None:
    api = Api(client, region)
    n1, n2 = api.join_node("n1"), api.join_node("n2")
    anonymous = client.get(f"/agent/v1/nodes/{n1.id}/desired?wait=0")
    assert anonymous.status_code == 401
    with_token = client.get(f"/agent/v1/nodes/{n1.id}/desired?wait=0", headers=api.headers)
    assert with_token.status_code == 401
    other = client.get(f"/agent/v1/nodes/{n1.id}/desired?wait=0",
                       environ_overrides=n2.environ())
    assert other.status_code == 403
    stale = dict(n1.peer_cert, serialNumber="ABCDEF")
    r = client.get(f"/agent/v1/nodes/{n1.id}/desired?wait=0",
                   environ_overrides={"vauban.peer_cert": stale})
    assert r.status_code == 403
