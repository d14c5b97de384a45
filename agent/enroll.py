"""Joining the region: pin the CA, send a CSR with the join token, keep the certificate."""

from __future__ import annotations

import hashlib
import http.client
import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config import AgentConfig, NodeIdentity
from agent.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION, JoinRequest, JoinResponse


class JoinError(Exception):
    """Joining failed; the data directory is as it was."""


def fetch_pinned_ca(controller_url: str, ca_sha256: str) -> bytes:
    """The region CA certificate, trusted only if its SHA-256 matches the pin.

    The first connection cannot verify the server yet, so the CA is fetched from
    the TLS handshake and checked against the pin the operator copied from
    `vauban join-token create` (like kubeadm's discovery hash).
    """
    parts = urlsplit(controller_url)
    # the body is trusted only after the pin check below, so the handshake is not verified
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(
        parts.hostname or "localhost", parts.port or 443, context=unverified, timeout=10
    )
    try:
        conn.request("GET", parts.path.rstrip("/") + "/api/v1/ca.pem")
        reply = conn.getresponse()
        pem = reply.read()
    except OSError as e:
        raise JoinError(f"cannot reach the controller at {controller_url}: {e}") from e
    finally:
        conn.close()
    if reply.status != 200:
        raise JoinError(f"the controller answered {reply.status} for its CA certificate")
    try:
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except ValueError as e:
        raise JoinError(f"the controller sent no valid CA certificate: {e}") from e
    actual = hashlib.sha256(der).hexdigest()
    if actual != ca_sha256.lower():
        raise JoinError(
            f"the controller's CA has SHA-256 {actual}, not the pinned {ca_sha256}: "
            "refusing to join"
        )
    return pem


def join(config: AgentConfig, controller_url: str, token: str, ca_sha256: str,
         name: str) -> NodeIdentity:
    """Join with a one-time token. After success the data directory holds the node's key
    (0600), certificate, the CA and node.json; on failure nothing new is left there."""
    if config.node_file.exists():
        raise JoinError(f"this agent already joined ({config.node_file}); use a new data dir")
    ca_pem = fetch_pinned_ca(controller_url, ca_sha256)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    body = JoinRequest(token=token, name=name,
                       csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode())
    # 0711: QEMU (an unprivileged user) must pass through to disks; secrets are 0600 files
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    ca_file = config.data_dir / "ca.pem.tmp"
    ca_file.write_bytes(ca_pem)
    try:
        response = requests.post(
            f"{controller_url.rstrip('/')}/api/v1/join",
            data=body.model_dump_json(),
            headers={"Content-Type": "application/json",
                     PROTOCOL_HEADER: str(PROTOCOL_VERSION)},
            verify=str(ca_file),
            timeout=30,
        )
        if response.status_code != 201:
            raise JoinError(_problem_detail(response))
        joined = JoinResponse.model_validate_json(response.content)
        _write_secret(config.key_path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        config.cert_path.write_text(joined.certificate_pem)
        os.replace(ca_file, config.ca_path)
        identity = NodeIdentity(node_id=joined.node_id, name=name, controller_url=controller_url)
        identity.save(config.node_file)
        return identity
    except BaseException:
        for p in (ca_file, config.key_path, config.cert_path, config.ca_path):
            p.unlink(missing_ok=True)
        raise


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _problem_detail(response: requests.Response) -> str:
    try:
        return f"{response.status_code}: {response.json()['detail']}"
    except (ValueError, KeyError):
        return f"{response.status_code}: {response.text[:200]}"
