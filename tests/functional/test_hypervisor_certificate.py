"""A node's hypervisor certificate (libvirtd and QEMU TLS for migrations): signed for the
node's own CSR only, naming its id, its name and its underlay address, recorded and
audited; anything else is refused with a problem document and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from controller.db.models import AuditEvent, Node
from controller.region import Region
from tests.functional.helpers import Api, FakeNode

ADDRESS = "10.242.103.11"


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    return Api(client, region)


def _csr(cn: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def _ask(api: Api, node: FakeNode, body: dict[str, Any], as_node: FakeNode | None = None,
         ) -> TestResponse:
    return api.client.post(f"/agent/v1/nodes/{node.id}/hypervisor-certificate", json=body,
                           environ_overrides=(as_node or node).environ())


def _recorded(region: Region, node_id: str) -> tuple[str | None, str | None]:
    with region.reads() as db:
        row = db.get(Node, node_id)
        assert row is not None
        return row.migration_address, row.hypervisor_cert_serial


def test_a_node_gets_its_hypervisor_certificate_recorded_and_audited(
        api: Api, region: Region) -> None:
    node = api.join_node("lab1", underlay_ip=ADDRESS)
    r = _ask(api, node, {"csr_pem": _csr(node.id), "migration_address": ADDRESS})
    assert r.status_code == 201, r.json
    cert = x509.load_pem_x509_certificate(r.json["certificate_pem"].encode())  # type: ignore[index]
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(region.ca.cert_pem()))
    assert cert.subject.rfc4514_string() == f"CN={node.id},OU=vauban-libvirt"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [node.id, "lab1"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == [ADDRESS]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    serial = format(cert.serial_number, "x")
    assert _recorded(region, node.id) == (ADDRESS, serial)
    shown = api.get("/api/v1/nodes/lab1").json
    assert (shown["migration_address"], shown["hypervisor_cert_serial"]) == (ADDRESS, serial)  # type: ignore[index]
    with region.reads() as db:
        events = list(db.scalars(select(AuditEvent).where(
            AuditEvent.action == "node.hypervisor-certificate.issue")))
    assert [(e.actor, e.target, e.detail["role"], e.detail["serial"],
             e.detail["migration_address"]) for e in events] == [
        ("node:lab1", f"node/{node.id}", "libvirt", serial, ADDRESS)]


def test_qemus_certificate_has_its_own_role_and_leaves_libvirtds_recorded(
        api: Api, region: Region) -> None:
    node = api.join_node("lab1", underlay_ip=ADDRESS)
    first = _ask(api, node, {"csr_pem": _csr(node.id), "migration_address": ADDRESS})
    serial = format(x509.load_pem_x509_certificate(
        first.json["certificate_pem"].encode()).serial_number, "x")  # type: ignore[index]
    r = _ask(api, node, {"csr_pem": _csr(node.id), "migration_address": ADDRESS,
                         "role": "qemu"})
    assert r.status_code == 201, r.json
    cert = x509.load_pem_x509_certificate(r.json["certificate_pem"].encode())  # type: ignore[index]
    assert cert.subject.rfc4514_string() == f"CN={node.id},OU=vauban-qemu"
    assert _recorded(region, node.id) == (ADDRESS, serial)  # libvirtd's is what peers admit
    with region.reads() as db:
        roles = [e.detail["role"] for e in db.scalars(select(AuditEvent).where(
            AuditEvent.action == "node.hypervisor-certificate.issue")
            .order_by(AuditEvent.seq))]
    assert roles == ["libvirt", "qemu"]


def test_only_the_node_itself_gets_its_hypervisor_certificate(api: Api, region: Region) -> None:
    n1 = api.join_node("lab1", underlay_ip=ADDRESS)
    n2 = api.join_node("lab2", underlay_ip="10.242.103.12")
    body = {"csr_pem": _csr(n1.id), "migration_address": ADDRESS}
    other = _ask(api, n1, body, as_node=n2)
    assert other.status_code == 403 and other.mimetype == "application/problem+json"
    assert other.json["detail"] == f"this certificate is for node {n2.id}, not {n1.id}"  # type: ignore[index]
    anonymous = api.client.post(f"/agent/v1/nodes/{n1.id}/hypervisor-certificate", json=body,
                                headers=api.headers)
    assert anonymous.status_code == 401
    assert _recorded(region, n1.id) == (None, None)


@pytest.mark.parametrize(("body", "says"), [
    ({}, "csr_pem"),
    ({"csr_pem": "x"}, "migration_address"),
    ({"csr_pem": "{csr}", "migration_address": "lab1.example"}, "not an IPv4 or IPv6"),
    ({"csr_pem": "{csr}", "migration_address": "127.0.0.1"}, "cannot be reached by another"),
    ({"csr_pem": "{csr}", "migration_address": ADDRESS, "days": 9}, "days"),
    ({"csr_pem": "{csr}", "migration_address": ADDRESS, "role": "agent"}, "role"),
    ({"csr_pem": "not a csr", "migration_address": ADDRESS}, "not a PEM"),
    ({"csr_pem": "{other}", "migration_address": ADDRESS}, "must be for its id"),
])
def test_bad_requests_are_refused_and_change_nothing(
        api: Api, region: Region, body: dict[str, Any], says: str) -> None:
    node = api.join_node("lab1", underlay_ip=ADDRESS)
    filled = {k: v.format(csr=_csr(node.id), other=_csr("someone-else"))
              if isinstance(v, str) else v for k, v in body.items()}
    r = _ask(api, node, filled)
    assert r.status_code == 422 and r.mimetype == "application/problem+json", r.json
    assert says in str(r.json), r.json
    assert _recorded(region, node.id) == (None, None)


def test_an_address_other_than_the_reported_underlay_is_refused(
        api: Api, region: Region) -> None:
    node = api.join_node("lab1", underlay_ip=ADDRESS)
    r = _ask(api, node, {"csr_pem": _csr(node.id), "migration_address": "10.242.103.99"})
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    assert r.json["detail"] == (f"migration_address 10.242.103.99 is not the underlay "  # type: ignore[index]
                                f"address this node reports ({ADDRESS})")
    assert _recorded(region, node.id) == (None, None)
