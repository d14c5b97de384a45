"""The region's certificate authority: it signs the controller's server certificate
and every node's client certificate, which make agent<->controller traffic mutual TLS.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.protocol import RENEW_FRACTION, renewal_due

# the CA is what nodes pin (its SHA-256): it outlives many generations of the certificates
# it signs, which are renewed before they expire (see docs/architecture.md)
CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=90)  # default lifetime of node and server certificates
# a node's hypervisor certificates: its libvirtd's (admitted by other nodes' libvirtds) and
# its QEMU's (the migration stream only), each its own key
HYPERVISOR_ROLES = ("libvirt", "qemu")
MAX_BACKDATE = timedelta(minutes=5)  # leaves begin this much earlier: clocks disagree a little


class CsrError(ValueError):
    """A certificate signing request that cannot be signed."""


class Issued(NamedTuple):
    """A certificate just signed: PEM, serial in lower-case hex, end of validity."""

    pem: bytes
    serial: str
    not_after: datetime


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable only by its owner, created with that mode (no window)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _replace_file(path: Path, data: bytes, private: bool) -> None:
    """Replace `path` by a file holding `data` in one step (written beside it, fsynced,
    renamed): a reader sees the old file or the new one, never a part of one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def backdate(lifetime: timedelta) -> timedelta:
    """How much earlier than now a certificate of `lifetime` begins: enough for clocks a
    little behind, never so much that it would count for much of a short lifetime (its
    renewal moment is a fraction of the whole)."""
    return min(MAX_BACKDATE, lifetime / 10)


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

    @property
    def lock_path(self) -> Path:
        return self.directory / ".lock"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the directory's lock: controller processes starting or renewing together
        make one CA and one server certificate, and never read a half-replaced pair."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def ensure(self, server_names: list[str],
               server_lifetime: timedelta = LEAF_VALIDITY,
               renew_fraction: float = RENEW_FRACTION) -> None:
        """Create the CA and the server certificate if missing.

        After success both exist; existing ones are kept (so nodes stay trusted
        across restarts) unless the server certificate lacks one of `server_names`
        or is due for renewal (see `renew_server_if_due`).
        """
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._locked():
            if not self.cert_path.exists():
                self._create_ca()
        self.renew_server_if_due(server_names, server_lifetime, fraction=renew_fraction)

    def renew_server_if_due(self, server_names: list[str], lifetime: timedelta,
                            now: datetime | None = None,
                            fraction: float = RENEW_FRACTION) -> bool:
        """Issue a new server certificate (new key, `lifetime`) when the one on disk is
        missing, lacks one of `server_names`, or has less than `fraction` of its life left
        (a third by default; agent.protocol.renewal_due). True when it did. Each file is
        replaced in one step, key first, under the directory's lock, so that processes renew
        one at a time and a changed certificate file always comes with its key. On failure
        the files on disk are as they were, or the new pair."""
        now = now or datetime.now(UTC)
        with self._locked():
            if self.server_cert_path.exists() and self.server_key_path.exists():
                cert = x509.load_pem_x509_certificate(self.server_cert_path.read_bytes())
                due = renewal_due(cert.not_valid_before_utc, cert.not_valid_after_utc,
                                  fraction)
                if self._server_covers(server_names) and now < due:
                    return False
            self._issue_server(server_names, lifetime)
            return True


    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()

    def server_not_after(self) -> datetime:
        cert = x509.load_pem_x509_certificate(self.server_cert_path.read_bytes())
        return cert.not_valid_after_utc

    def ca_not_after(self) -> datetime:
        return x509.load_pem_x509_certificate(self.cert_pem()).not_valid_after_utc

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

    def _issue_server(self, names: list[str], lifetime: timedelta) -> None:
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
            usages=[ExtendedKeyUsageOID.SERVER_AUTH],
            san=x509.SubjectAlternativeName(entries),
            lifetime=lifetime,
        )
        _replace_file(self.server_key_path, key_pem(key), private=True)
        _replace_file(self.server_cert_path, cert.public_bytes(serialization.Encoding.PEM),
                      private=False)

    def sign_node_csr(self, csr_pem: str, node_id: str, lifetime: timedelta = LEAF_VALIDITY,
                      require_cn: bool = False) -> Issued:
        """Sign a node's CSR as a client certificate whose CN is `node_id`, valid for
        `lifetime` (never beyond the CA itself).

        Returns the certificate, its serial and end of validity. Whatever subject the CSR
        asks for, the CN is the controller's node id, so a node can only speak for itself;
        with `require_cn` (a renewal: the node knows its id) a CSR naming another subject is
        refused. Raises CsrError, nothing signed, for a CSR that does not parse, whose
        signature is wrong, whose key is weak or of another kind, or that asks to be a CA.
        """
        csr = _load_csr(csr_pem)
        if require_cn:
            cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if cns != [node_id]:
                raise CsrError(f"csr_pem: the request is for common name "
                               f"{', '.join(map(str, cns)) or '(none)'}; this node's "
                               f"certificate must be for its id {node_id}")
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)  # checked
        # also a server's, named by the node id: what the node serves (its metrics
        # listener) is verified against the region CA and that name, never taken on trust
        named = re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", node_id)
        cert = self._sign(
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]),
            public_key=public_key,
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
            san=x509.SubjectAlternativeName([x509.DNSName(node_id)]) if named else None,
            lifetime=lifetime,
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM),
                      format(cert.serial_number, "x"), cert.not_valid_after_utc)

    def sign_hypervisor_csr(self, csr_pem: str, node_id: str, node_name: str,
                            address: str, lifetime: timedelta = LEAF_VALIDITY,
                            role: str = "libvirt") -> Issued:
        """Sign a node's hypervisor CSR (its libvirtd's or its QEMU's key, never its
        agent's): CN `node_id` and OU `vauban-<role>` (libvirtd admits only the libvirt
        role's, so neither an agent's nor QEMU's key opens another node's libvirtd), usable
        as client and server (a migration's source is the client of the target's libvirtd
        and QEMU), SAN DNS:`node_id`, DNS:`node_name` and IP:`address` (what a migration
        URI names the target by).

        The CSR must name `node_id` as its only common name. Raises CsrError, nothing
        signed, for that or for any reason `sign_node_csr` refuses; ValueError for an
        `address` that is not an IP address or a `role` other than those of ROLES."""
        if role not in HYPERVISOR_ROLES:
            raise ValueError(f"hypervisor certificate role {role!r}: one of "
                             f"{', '.join(HYPERVISOR_ROLES)}")
        ip = ipaddress.ip_address(address)
        csr = _load_csr(csr_pem)
        cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if cns != [node_id]:
            raise CsrError(f"csr_pem: the request is for common name "
                           f"{', '.join(map(str, cns)) or '(none)'}; this node's hypervisor "
                           f"certificate must be for its id {node_id}")
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)  # checked
        names = [x509.DNSName(n) for n in dict.fromkeys([node_id, node_name])]
        cert = self._sign(
            subject=x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"vauban-{role}"),
                x509.NameAttribute(NameOID.COMMON_NAME, node_id)]),
            public_key=public_key,
            usages=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
            san=x509.SubjectAlternativeName([*names, x509.IPAddress(ip)]),
            lifetime=lifetime,
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM),
                      format(cert.serial_number, "x"), cert.not_valid_after_utc)

    def _sign(
        self,
        *,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        usages: list[x509.ObjectIdentifier],
        san: x509.SubjectAlternativeName | None,
        lifetime: timedelta,
    ) -> x509.Certificate:
        ca_cert, ca_key = self._load()
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate(lifetime))
            # a leaf never outlives the CA that vouches for it
            .not_valid_after(min(now + lifetime, ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(ca_key, hashes.SHA256())


def _load_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """The CSR if it can be signed as a node's client certificate, else CsrError saying why."""
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
    if not acceptable:
        raise CsrError("csr_pem: the key must be EC P-256/P-384 or RSA of 2048 bits or more")
    try:
        constraints = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    except ValueError as e:  # an extension that does not parse
        raise CsrError(f"csr_pem: its extensions cannot be read: {e}") from e
    if constraints is not None and constraints.ca:
        raise CsrError("csr_pem: the request asks to be a certificate authority (CA:TRUE); "
                       "a node's certificate is never one")
    return csr
