"""The node's client certificate: renewed over mutual TLS before it expires.

The agent asks for a new certificate (a new key, a CSR whose common name is its node id)
once less than `cert_renew_fraction` of the current one's lifetime is left. The controller
keeps accepting the old certificate until the agent's first call with the new one, so a
crash anywhere in between leaves a working pair on disk.

Key and certificate are two files (`node.key`, `node.pem`) and cannot be replaced in one
step; they are replaced so that a crash leaves either the old pair or the new one:

1. `node.key.new` is written (0600) and synced;
2. `node.pem.new` is written beside it and renamed into place: from here on the new pair
   is complete on disk (the commit point);
3. `node.key.new` is renamed over `node.key`, then `node.pem.new` over `node.pem`.

`recover` (at start) finishes step 3 when `node.pem.new` exists, and otherwise removes
what a renewal interrupted before its commit point left behind.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import protocol
from agent.client import ControllerClient
from agent.config import AgentConfig

log = logging.getLogger(__name__)


class RenewalError(Exception):
    """The controller's answer is not a certificate for this node's new key; nothing was
    saved and the current certificate stays in use."""


def _new(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_certificate(config: AgentConfig) -> x509.Certificate:
    return x509.load_pem_x509_certificate(config.cert_path.read_bytes())


def renewal_due(cert: x509.Certificate, fraction: float) -> datetime:
    """When to renew `cert`: once less than `fraction` of its lifetime is left."""
    return protocol.renewal_due(cert.not_valid_before_utc, cert.not_valid_after_utc, fraction)


def new_request(node_id: str) -> tuple[bytes, str]:
    """A new key (PEM, PKCS#8) and a CSR for it whose common name is `node_id`."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
           .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def check_issued(cert_pem: str, key_pem: bytes, node_id: str, ca_pem: bytes) -> x509.Certificate:
    """The certificate if it is for `node_id`, for the key `key_pem`, issued by the region
    CA and valid now; RenewalError saying which is not so."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as e:
        raise RenewalError(f"the controller sent no certificate: {e}") from e
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            key.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise RenewalError("the controller's certificate is not for the key this node sent")
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [node_id]:
        raise RenewalError(f"the controller's certificate is for {cns}, not node {node_id}")
    try:
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature) as e:
        why = str(e) or "its signature is not the CA key's"
        raise RenewalError(f"the certificate is not issued by the region CA: {why}") from e
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise RenewalError(f"the certificate is valid from {cert.not_valid_before_utc} to "
                           f"{cert.not_valid_after_utc}, not now ({now})")
    return cert


def save_pair(config: AgentConfig, key_pem: bytes, cert_pem: str) -> None:
    """Replace the node's key and certificate by the new pair (see the module's steps).
    After success both files are the new pair; after a crash, `recover` leaves one pair."""
    key_new, cert_new = _new(config.key_path), _new(config.cert_path)
    _write_synced(key_new, key_pem, 0o600)
    staged = cert_new.with_name(cert_new.name + ".tmp")
    _write_synced(staged, cert_pem.encode(), 0o644)
    os.replace(staged, cert_new)  # the commit point
    _sync_dir(config.data_dir)
    os.replace(key_new, config.key_path)
    os.replace(cert_new, config.cert_path)
    _sync_dir(config.data_dir)


def recover(config: AgentConfig) -> str | None:
    """Finish or undo a renewal a crash interrupted; what was done, in words, or None."""
    key_new, cert_new = _new(config.key_path), _new(config.cert_path)
    staged = cert_new.with_name(cert_new.name + ".tmp")
    if cert_new.exists():  # past the commit point: the new pair is complete
        if key_new.exists():
            os.replace(key_new, config.key_path)
        os.replace(cert_new, config.cert_path)
        _sync_dir(config.data_dir)
        return "finished saving the renewed certificate that a stop interrupted"
    if key_new.exists() or staged.exists():
        key_new.unlink(missing_ok=True)
        staged.unlink(missing_ok=True)
        return "dropped a certificate renewal that a stop interrupted; keeping the current one"
    return None


def renew(config: AgentConfig, node_id: str, client: ControllerClient) -> x509.Certificate:
    """Renew the node's certificate: a new key, the controller's certificate for it saved
    in place of the current pair, and the client switched to it. Returns the new
    certificate. Raises what the client raises (nothing saved), RenewalError for an answer
    that is not this node's certificate (nothing saved), OSError if saving failed (then
    `recover` leaves one working pair: the controller accepts the old one until the new
    one is used)."""
    key_pem, csr_pem = new_request(node_id)
    issued = client.renew_certificate(csr_pem)
    cert = check_issued(issued.certificate_pem, key_pem, node_id, config.ca_path.read_bytes())
    save_pair(config, key_pem, issued.certificate_pem)
    client.reconnect()
    return cert
