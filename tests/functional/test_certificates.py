"""Certificate lifecycle through the API: a node renews its certificate over mutual TLS,
the one it renewed away from is refused once the new one is used (never before, so a lost
answer cannot lock it out); join tokens are listed and revoked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from agent import certs
from controller.db.models import AuditEvent, JoinToken, Node
from controller.region import Region
from tests.functional.helpers import Api, FakeNode, make_csr, served_as_node
from tests.functional.test_agent_protocol import agent_client_for


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    return Api(client, region)


def _csr(cn: str, key: Any = None, ca: bool = False) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _renew(api: Api, node: FakeNode, csr_pem: str | None = None) -> TestResponse:
    return api.client.post(f"/agent/v1/nodes/{node.id}/certificate",
                           json={"csr_pem": csr_pem or _csr(node.id)},
                           environ_overrides=node.environ())


def _as(node: FakeNode, cert_pem: str) -> FakeNode:
    """`node` presenting `cert_pem`, as the TLS front end would show it."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return FakeNode(node.id, node.name, {"subject": ((("commonName", node.id),),),
                                         "serialNumber": format(cert.serial_number, "X")})


def _renewed(api: Api, node: FakeNode) -> FakeNode:
    r = _renew(api, node)
    assert r.status_code == 201, r.json
    return _as(node, r.json["certificate_pem"])  # type: ignore[index]


def _works(api: Api, node: FakeNode) -> int:
    return api.client.get(f"/agent/v1/nodes/{node.id}/desired?after=-1&wait=0",
                          environ_overrides=node.environ()).status_code


def _serials(region: Region, node_id: str) -> tuple[str, str | None]:
    with region.reads() as db:
        row = db.get(Node, node_id)
        assert row is not None
        return row.cert_serial, row.previous_cert_serial


def test_a_node_renews_and_its_old_certificate_goes_once_the_new_one_is_used(
        api: Api, region: Region) -> None:
    old = api.join_node("n1")
    r = _renew(api, old)
    assert r.status_code == 201, r.json
    cert = x509.load_pem_x509_certificate(r.json["certificate_pem"].encode())
    assert cert.subject.rfc4514_string() == f"CN={old.id}"
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(region.ca.cert_pem()))
    lifetime = timedelta(seconds=region.config.node_cert_lifetime_s)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == lifetime + \
        timedelta(minutes=5)
    new = _as(old, r.json["certificate_pem"])
    shown = api.get("/api/v1/nodes/n1").json
    assert shown["cert_serial"] == format(cert.serial_number, "x")
    assert datetime.fromisoformat(shown["cert_expires_at"]) == cert.not_valid_after_utc
    assert datetime.fromisoformat(r.json["expires_at"]) == cert.not_valid_after_utc

    assert _works(api, old) == 200  # until the agent has used the new one
    assert _works(api, new) == 200
    refused = api.client.get(f"/agent/v1/nodes/{old.id}/desired?after=-1&wait=0",
                             environ_overrides=old.environ())
    assert refused.status_code == 403 and refused.mimetype == "application/problem+json"
    assert refused.json["detail"] == \
        "this client certificate does not belong to a node of the region"
    assert _serials(region, old.id) == (format(cert.serial_number, "x"), None)
    with region.reads() as db:
        event = db.scalar(select(AuditEvent).where(AuditEvent.action == "node.certificate.renew"))
        assert event is not None and event.actor == "node:n1"
        assert event.detail["serial"] == format(cert.serial_number, "x")
        assert event.detail["previous_serial"] == old.peer_cert["serialNumber"].lower()


def test_a_renewal_whose_answer_was_lost_does_not_lock_the_node_out(
        api: Api, region: Region) -> None:
    """The agent crashed before saving its new certificate: it renews again with the old
    one, which stays accepted; the certificate it never saved is refused."""
    old = api.join_node("n1")
    lost = _renewed(api, old)
    again = _renewed(api, old)
    assert _serials(region, old.id)[1] == old.peer_cert["serialNumber"].lower()
    assert _works(api, lost) == 403
    assert _works(api, old) == 200
    assert _works(api, again) == 200
    assert _works(api, old) == 403


def test_renewing_twice_in_a_row_keeps_only_the_certificate_in_use(api: Api) -> None:
    first = _renewed(api, api.join_node("n1"))
    assert _works(api, first) == 200
    second = _renewed(api, first)
    assert _works(api, first) == 200 and _works(api, second) == 200
    assert _works(api, first) == 403


@pytest.mark.parametrize(("csr", "words"), [
    (lambda node_id: _csr("another-node"), "common name another-node; this node's certificate "
                                           "must be for its id"),
    (lambda node_id: _csr(node_id, rsa.generate_private_key(public_exponent=65537,
                                                            key_size=1024)),
     "RSA of 2048 bits or more"),
    (lambda node_id: _csr(node_id, ec.generate_private_key(ec.SECP521R1())), "EC P-256/P-384"),
    (lambda node_id: _csr(node_id, ca=True), "asks to be a certificate authority (CA:TRUE)"),
    (lambda node_id: "-----BEGIN CERTIFICATE REQUEST-----\nnope\n", "not a PEM"),
])
def test_a_csr_that_cannot_be_signed_is_refused_and_changes_nothing(
        api: Api, region: Region, csr: Any, words: str) -> None:
    node = api.join_node("n1")
    before = _serials(region, node.id)
    r = _renew(api, node, csr(node.id))
    assert r.status_code == 422 and r.mimetype == "application/problem+json"
    assert r.json["type"].endswith("/invalid-input")
    assert words in r.json["detail"]
    assert _serials(region, node.id) == before
    assert _works(api, node) == 200


def test_a_renewal_body_is_validated_strictly(api: Api) -> None:
    node = api.join_node("n1")
    for body in ({}, {"csr_pem": ""}, {"csr_pem": make_csr("x"), "days": 9999}):
        r = api.client.post(f"/agent/v1/nodes/{node.id}/certificate", json=body,
                            environ_overrides=node.environ())
        assert r.status_code == 422 and r.mimetype == "application/problem+json", body


def test_only_the_node_itself_renews_its_certificate(api: Api) -> None:
    n1, n2 = api.join_node("n1"), api.join_node("n2")
    anonymous = api.client.post(f"/agent/v1/nodes/{n1.id}/certificate",
                                json={"csr_pem": _csr(n1.id)}, headers=api.headers)
    assert anonymous.status_code == 401
    other = api.client.post(f"/agent/v1/nodes/{n1.id}/certificate",
                            json={"csr_pem": _csr(n1.id)}, environ_overrides=n2.environ())
    assert other.status_code == 403
    assert api.delete("/api/v1/nodes/n1").status_code == 204
    removed = _renew(api, n1)
    assert removed.status_code == 403 and removed.json["type"].endswith("/node-removed")


def test_a_removed_node_is_refused_with_its_renewed_and_its_previous_certificate(
        api: Api) -> None:
    old = api.join_node("n1")
    new = _renewed(api, old)
    assert api.delete("/api/v1/nodes/n1").status_code == 204
    assert _works(api, old) == 403 and _works(api, new) == 403


def test_the_agent_renews_saves_the_new_pair_and_uses_it(
        api: Api, region: Region, tmp_path: Path) -> None:
    node = api.join_node("n1")
    with served_as_node(region, node) as url:
        client = agent_client_for(url, node, tmp_path)
        client.config.ca_path.write_bytes(region.ca.cert_pem())
        session = client.http
        cert = certs.renew(client.config, node.id, client)
        assert client.http is not session  # new connections, made with the new pair
    on_disk = x509.load_pem_x509_certificate(client.config.cert_path.read_bytes())
    assert on_disk.serial_number == cert.serial_number
    assert _serials(region, node.id)[0] == format(cert.serial_number, "x")
    assert client.config.key_path.stat().st_mode & 0o077 == 0
    certs.check_issued(client.config.cert_path.read_text(), client.config.key_path.read_bytes(),
                       node.id, region.ca.cert_pem())


# --- join tokens: listed without their secret, revoked, audited -----------------------------


def _new_token(api: Api, description: str) -> dict[str, Any]:
    r = api.post("/api/v1/join-tokens", json={"description": description})
    assert r.status_code == 201
    return r.json  # type: ignore[return-value]


def _join(api: Api, token: str, name: str) -> TestResponse:
    return api.client.post("/api/v1/join", json={"token": token, "name": name,
                                                 "csr_pem": make_csr(name)})


def test_join_tokens_are_listed_with_their_state_never_their_secret(
        api: Api, region: Region) -> None:
    used, unused = _new_token(api, "rack 1"), _new_token(api, "rack 2")
    revoked, expired = _new_token(api, "rack 3"), _new_token(api, "rack 4")
    assert used["state"] == "unused"
    node_id = _join(api, used["token"], "n1").json["node_id"]  # type: ignore[index]
    assert api.delete(f"/api/v1/join-tokens/{revoked['id']}").status_code == 200
    with region.sessions() as db, db.begin():
        row = db.get(JoinToken, expired["id"])
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    listed = api.get("/api/v1/join-tokens").json
    assert [(t["description"], t["state"]) for t in listed] == [
        ("rack 1", "used"), ("rack 2", "unused"), ("rack 3", "revoked"), ("rack 4", "expired")]
    assert listed[0]["used_by_node_id"] == node_id and listed[0]["created_by"] == "admin"
    assert listed[2]["revoked_at"] is not None
    text = str(listed)
    for t in (used, unused, revoked, expired):
        assert t["token"] not in text
    assert _join(api, expired["token"], "n2").status_code == 401


def test_a_revoked_join_token_joins_nothing_and_the_revocation_is_audited(
        api: Api, region: Region) -> None:
    token = _new_token(api, "rack 1")
    r = api.delete(f"/api/v1/join-tokens/{token['id']}")
    assert r.status_code == 200 and r.json["state"] == "revoked"
    again = api.delete(f"/api/v1/join-tokens/{token['id']}")
    assert again.status_code == 200 and again.json["revoked_at"] == r.json["revoked_at"]
    refused = _join(api, token["token"], "n1")
    assert refused.status_code == 401
    assert refused.json["detail"] == "the join token is unknown, already used, revoked or expired"
    with region.reads() as db:
        events = list(db.scalars(select(AuditEvent).where(
            AuditEvent.action == "join-token.revoke")))
        assert [(e.actor, e.target) for e in events] == [("admin", f"join-token/{token['id']}")]
        assert db.scalar(select(Node).where(Node.name == "n1")) is None


def test_a_used_join_token_cannot_be_revoked(api: Api) -> None:
    token = _new_token(api, "rack 1")
    node_id = _join(api, token["token"], "n1").json["node_id"]  # type: ignore[index]
    r = api.delete(f"/api/v1/join-tokens/{token['id']}")
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    assert r.json["detail"] == (f"join token {token['id']} was already used by node "
                                f"{node_id}; to take that node out of the region, remove the "
                                "node")
    assert api.get("/api/v1/join-tokens").json[0]["state"] == "used"
