"""The region CA: node certificates carry the controller's node id, whatever the CSR asks."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
    pem, serial = ca.sign_node_csr(_csr("i-am-the-controller"), "node-id-1")
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-id-1"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
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
