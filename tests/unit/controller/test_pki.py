"""The region CA: node certificates carry the controller's node id, whatever the CSR asks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.protocol import renewal_due
from controller.pki import CsrError, RegionCA, fingerprint


def _csr(cn: str, curve: ec.EllipticCurve | None = None) -> str:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_ca_is_created_once_and_kept(tmp_path: Path) -> None:
    ca = RegionCA(tmp_path)
    ca.ensure(["localhost", "127.0.0.1"])
    first = fingerprint(ca.cert_pem())
    ca.ensure(["localhost", "127.0.0.1"])
    assert fingerprint(ca.cert_pem()) == first
    assert ca.key_path.stat().st_mode & 0o077 == 0
    server = x509.load_pem_x509_certificate(ca.server_cert_path.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)


def test_node_certificate_is_for_the_node_id(tmp_path: Path) -> None:
    ca = RegionCA(tmp_path)
    ca.ensure(["localhost"])
    pem, serial, _ = ca.sign_node_csr(_csr("i-am-the-controller"), "node-id-1")
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-id-1"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-id-1"]  # its listener's name
    assert format(cert.serial_number, "x") == serial
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem())
    cert.verify_directly_issued_by(ca_cert)


def test_bad_csrs_are_refused(tmp_path: Path) -> None:
    ca = RegionCA(tmp_path)
    ca.ensure(["localhost"])
    with pytest.raises(CsrError, match="not a PEM"):
        ca.sign_node_csr("nonsense", "n")
    with pytest.raises(CsrError, match="P-256"):
        ca.sign_node_csr(_csr("n", ec.SECP521R1()), "n")


def _csr_with(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str,
              ca: bool = False) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                        critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_a_renewal_csr_must_name_the_node_id_and_never_ask_for_a_ca(tmp_path: Path) -> None:
    ca = RegionCA(tmp_path)
    ca.ensure(["localhost"])
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CsrError, match="common name other-node; this node's certificate must "
                                       "be for its id node-1"):
        ca.sign_node_csr(_csr_with(key, "other-node"), "node-1", require_cn=True)
    with pytest.raises(CsrError, match=r"certificate authority \(CA:TRUE\)"):
        ca.sign_node_csr(_csr_with(key, "node-1", ca=True), "node-1", require_cn=True)
    with pytest.raises(CsrError, match="CA:TRUE"):  # at join too
        ca.sign_node_csr(_csr_with(key, "name", ca=True), "node-1")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CsrError, match="RSA of 2048 bits or more"):
        ca.sign_node_csr(_csr_with(weak, "node-1"), "node-1", require_cn=True)
    issued = ca.sign_node_csr(_csr_with(key, "node-1"), "node-1", require_cn=True)
    assert x509.load_pem_x509_certificate(issued.pem).subject.rfc4514_string() == "CN=node-1"


def test_a_leaf_lives_its_lifetime_begins_a_little_early_and_never_outlives_the_ca(
        tmp_path: Path) -> None:
    ca = RegionCA(tmp_path)
    ca.ensure(["localhost"])
    before = datetime.now(UTC)
    issued = ca.sign_node_csr(_csr("n"), "node-1", lifetime=timedelta(seconds=60))
    cert = x509.load_pem_x509_certificate(issued.pem)
    assert issued.not_after == cert.not_valid_after_utc
    assert before + timedelta(seconds=59) <= cert.not_valid_after_utc
    assert cert.not_valid_after_utc <= datetime.now(UTC) + timedelta(seconds=60)
    # 6 s early (a tenth of 60 s): renewed at a third left, 40 s after issue, not at once
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(seconds=66)
    yearly = x509.load_pem_x509_certificate(
        ca.sign_node_csr(_csr("n"), "node-1", lifetime=timedelta(days=365)).pem)
    assert yearly.not_valid_after_utc - yearly.not_valid_before_utc == \
        timedelta(days=365, minutes=5)
    longer = ca.sign_node_csr(_csr("n"), "node-1", lifetime=timedelta(days=20000))
    assert longer.not_after == ca.ca_not_after()


def test_the_server_certificate_is_renewed_once_due_with_a_new_key(tmp_path: Path) -> None:
    ca = RegionCA(tmp_path)
    ca.ensure(["localhost"], timedelta(days=90))
    first = x509.load_pem_x509_certificate(ca.server_cert_path.read_bytes())
    first_key = ca.server_key_path.read_bytes()
    issued = first.not_valid_after_utc - timedelta(days=90)
    assert not ca.renew_server_if_due(["localhost"], timedelta(days=90),
                                      now=issued + timedelta(days=59))
    ca.ensure(["localhost"], timedelta(days=90))  # a restart keeps it too
    assert ca.server_cert_path.read_bytes() == first.public_bytes(serialization.Encoding.PEM)
    assert ca.renew_server_if_due(["localhost"], timedelta(days=30),
                                  now=issued + timedelta(days=61))
    second = x509.load_pem_x509_certificate(ca.server_cert_path.read_bytes())
    assert second.serial_number != first.serial_number
    assert ca.server_key_path.read_bytes() != first_key
    assert ca.server_key_path.stat().st_mode & 0o077 == 0
    assert second.not_valid_after_utc - second.not_valid_before_utc == \
        timedelta(days=30, minutes=5)
    second.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem()))
    assert not list(tmp_path.glob("*.tmp"))


def test_the_server_certificate_is_renewed_at_the_fraction_asked_for(tmp_path: Path) -> None:
    ca = RegionCA(tmp_path)
    ca.ensure(["localhost"], timedelta(days=90), renew_fraction=0.8)
    first = x509.load_pem_x509_certificate(ca.server_cert_path.read_bytes())
    issued = first.not_valid_after_utc - timedelta(days=90)
    # 18 days 5 minutes after the backdated start, less than four fifths are left
    assert not ca.renew_server_if_due(["localhost"], timedelta(days=90),
                                      now=issued + timedelta(days=17), fraction=0.8)
    assert ca.renew_server_if_due(["localhost"], timedelta(days=90),
                                  now=issued + timedelta(days=19), fraction=0.8)


def test_renewal_is_due_at_a_third_of_the_lifetime_left() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert renewal_due(start, start + timedelta(days=90)) == start + timedelta(days=60)
    assert renewal_due(start, start + timedelta(seconds=66), 0.5) == \
        start + timedelta(seconds=33)


def test_hypervisor_certificate_names_the_node_its_name_and_its_address(tmp_path: Path) -> None:
    ca = RegionCA(tmp_path)
    ca.ensure(["localhost"])
    node_id = "6f1c1f8e-8a57-4f3e-9d1e-1d7b0a3c2e10"
    pem, serial, not_after = ca.sign_hypervisor_csr(_csr(node_id), node_id, "lab1",
                                                    "10.242.103.11")
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.rfc4514_string() == f"CN={node_id},OU=vauban-libvirt"
    qemu = x509.load_pem_x509_certificate(ca.sign_hypervisor_csr(
        _csr(node_id), node_id, "lab1", "10.242.103.11", role="qemu").pem)
    assert qemu.subject.rfc4514_string() == f"CN={node_id},OU=vauban-qemu"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [node_id, "lab1"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.242.103.11"]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is False
    assert format(cert.serial_number, "x") == serial and cert.not_valid_after_utc == not_after
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem()))


def test_hypervisor_csr_for_another_subject_or_a_bad_address_is_refused(
        tmp_path: Path) -> None:
    ca = RegionCA(tmp_path)
    ca.ensure(["localhost"])
    with pytest.raises(CsrError, match="must be for its id node-1"):
        ca.sign_hypervisor_csr(_csr("node-2"), "node-1", "n1", "10.0.0.1")
    with pytest.raises(CsrError, match="not a PEM"):
        ca.sign_hypervisor_csr("nonsense", "node-1", "n1", "10.0.0.1")
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        ca.sign_hypervisor_csr(_csr("node-1"), "node-1", "n1", "lab1.example")
    with pytest.raises(ValueError, match="role 'agent': one of libvirt, qemu"):
        ca.sign_hypervisor_csr(_csr("node-1"), "node-1", "n1", "10.0.0.1", role="agent")
