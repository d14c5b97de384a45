"""The region's certificate authority: it signs the controller's server certificate
and every node's client certificate, which make agent<->controller traffic mutual TLS.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=365)


class CsrError(ValueError):
    """A certificate signing request that cannot be signed."""


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable only by its owner, created with that mode (no window)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the DER certificate in hex: what an agent pins before trusting the CA."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class RegionCA:
    """The CA key and certificate, kept in `directory` (key mode 0600)."""

    directory: Path

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def key_path(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert_path(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key_path(self) -> Path:
        return self.directory / "server.key"

    def ensure(self, server_names: list[str]) -> None:
        """Create the CA and the server certificate if missing.

        After success both exist; existing ones are kept (so nodes stay trusted
        across restarts) unless the server certificate lacks one of `server_names`.
        """
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.cert_path.exists():
            self._create_ca()
        if not self.server_cert_path.exists() or not self._server_covers(server_names):
            self._issue_server(server_names)

    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    def _create_ca(self) -> None:
        key = new_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Vauban region"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Vauban region CA {socket.gethostname()}"),
            ]
        )
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_private(self.key_path, key_pem(key))
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _server_covers(self, names: list[str]) -> bool:
        cert = x509.load_pem_x509_certificate(self.server_cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
        have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
        return set(names) <= have

    def _issue_server(self, names: list[str]) -> None:
        entries: list[x509.GeneralName] = []
        for n in dict.fromkeys(names):
            try:
                entries.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                entries.append(x509.DNSName(n))
        key = new_key()
        cert = self._sign(
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]),
            public_key=key.public_key(),
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            san=x509.SubjectAlternativeName(entries),
        )
        _write_private(self.server_key_path, key_pem(key))
        self.server_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def sign_node_csr(self, csr_pem: str, node_id: str) -> tuple[bytes, str]:
        """Sign a node's CSR as a client certificate whose CN is `node_id`.

        Returns (certificate PEM, serial as hex). Whatever subject the CSR asks
        for, the CN is the controller's node id, so a node can only speak for itself.
        Raises CsrError for a CSR that does not parse or whose signature is wrong.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as e:
            raise CsrError(f"csr_pem is not a PEM certificate signing request: {e}") from e
        if not csr.is_signature_valid:
            raise CsrError("csr_pem: the request's signature does not match its public key")
        public_key = csr.public_key()
        acceptable = (
            isinstance(public_key, ec.EllipticCurvePublicKey)
            and public_key.curve.name in ("secp256r1", "secp384r1")
        ) or (isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size >= 2048)
        if not acceptable or not isinstance(
            public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey
        ):
            raise CsrError("csr_pem: the key must be EC P-256/P-384 or RSA of 2048 bits or more")
        cert = self._sign(
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]),
            public_key=public_key,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            san=None,
        )
        return cert.public_bytes(serialization.Encoding.PEM), format(cert.serial_number, "x")

    def _sign(
        self,
        *,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        usage: x509.ObjectIdentifier,
        san: x509.SubjectAlternativeName | None,
    ) -> x509.Certificate:
        ca_cert, ca_key = self._load()
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + LEAF_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(ca_key, hashes.SHA256())
