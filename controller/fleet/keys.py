"""The controller's fleet SSH key, and SSH host keys as the fleet pins them.

The fleet key is the controller's own: onboarding puts its public half in a server's
root authorized_keys (using the operator's key once, never kept), and every rollout logs
in with it. A host key is pinned when the server is added, from the fingerprint or
known_hosts line the operator gives, and never learnt on first use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

# key types OpenSSH offers as host keys (DSA is long gone from OpenSSH)
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                  "ecdsa-sha2-nistp521", "ssh-rsa")


class HostKeyError(ValueError):
    """A host key or fingerprint that cannot be used; the message says why."""


def fleet_key_path(data_dir: Path) -> Path:
    return data_dir / "fleet" / "id_ed25519"


def ensure_fleet_key(data_dir: Path) -> str:
    """The fleet key's public line ("ssh-ed25519 AAAA... vauban-fleet"), the key pair
    made first if there is none (private key 0600 in a 0700 folder)."""
    private = fleet_key_path(data_dir)
    public = private.with_suffix(".pub")
    if not private.exists():
        private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
        tmp = private.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()
        public.write_text(f"{line} vauban-fleet\n")
        os.replace(tmp, private)
    return public.read_text().strip()


def parse_public_key(line: str) -> tuple[str, bytes]:
    """(key type, key blob) of an OpenSSH public key line ("TYPE BASE64 [comment]");
    HostKeyError for anything else."""
    fields = line.split()
    if len(fields) < 2 or fields[0] not in HOST_KEY_TYPES:
        raise HostKeyError(f"not an SSH public key of a known type ({', '.join(HOST_KEY_TYPES)})")
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except binascii.Error as e:
        raise HostKeyError("the key's base64 is damaged") from e
    # the blob begins with its own type name: a key pasted under another type is refused
    name_len = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if blob[4:4 + name_len].decode(errors="replace") != fields[0]:
        raise HostKeyError(f"the key's data is not a {fields[0]} key")
    return fields[0], blob


def fingerprint(blob: bytes) -> str:
    """OpenSSH's fingerprint: "SHA256:" and the unpadded base64 of the blob's SHA-256."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def normalize_fingerprint(text: str) -> str:
    """A fingerprint as given by an operator ("SHA256:..." or the bare base64), in
    OpenSSH's form; HostKeyError if it is not a SHA-256 fingerprint."""
    value = text.strip().removeprefix("SHA256:")
    try:
        digest = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except ValueError as e:  # binascii.Error, or a character outside ASCII
        raise HostKeyError("a host key fingerprint is 'SHA256:' and 43 base64 characters") from e
    if len(digest) != 32:
        raise HostKeyError("a host key fingerprint is 'SHA256:' and 43 base64 characters")
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_line(address: str, port: int, host_key: str) -> str:
    """The known_hosts line pinning `host_key` (a public key line) for address:port."""
    key_type, blob = parse_public_key(host_key)
    name = address if port == 22 else f"[{address}]:{port}"
    return f"{name} {key_type} {base64.b64encode(blob).decode()}"
