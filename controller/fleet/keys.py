"""The controller's fleet SSH key, and SSH host keys as the fleet pins them.

The fleet key is the controller's own: onboarding puts its public half in a server's
root authorized_keys (using the operator's key once, never kept), and every rollout logs
in with it. Its private half is kept sealed with the region key (controller.secretbox)
and opened only into the ssh-agent of a rollout. A host key is pinned when the server is
added, from the fingerprint or known_hosts line the operator gives, and never learnt on
first use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from controller.secretbox import ensure_region_key

# key types OpenSSH offers as host keys (DSA is long gone from OpenSSH)
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                  "ecdsa-sha2-nistp521", "ssh-rsa")
# what a user may log in with: the host key types and the security-key (FIDO) ones
USER_KEY_TYPES = (*HOST_KEY_TYPES, "sk-ssh-ed25519@openssh.com",
                  "sk-ecdsa-sha2-nistp256@openssh.com")


class HostKeyError(ValueError):
    """A host key or fingerprint that cannot be used; the message says why."""


FLEET_KEY_PURPOSE = "fleet-ssh-key"


def fleet_key_path(data_dir: Path) -> Path:
    """Where a fleet private key was kept in plain text before it was sealed (read once,
    to seal it, then removed)."""
    return data_dir / "fleet" / "id_ed25519"


def fleet_sealed_key_path(data_dir: Path) -> Path:
    """The fleet private key, sealed with the region key (see controller.secretbox)."""
    return data_dir / "fleet" / "id_ed25519.sealed"


def fleet_public_key_path(data_dir: Path) -> Path:
    """The fleet key's public line; ssh given it as IdentityFile offers only that key of
    the ssh-agent a rollout loads the private key into."""
    return data_dir / "fleet" / "id_ed25519.pub"


def ensure_fleet_key(data_dir: Path) -> str:
    """The fleet key's public line ("ssh-ed25519 AAAA... vauban-fleet").

    Afterwards the private key is sealed with the region key in `fleet_sealed_key_path`
    (0600, in a 0700 folder), its public line is in `fleet_public_key_path`, and no
    plaintext copy is left: a key pair is made if there is none, and a plaintext key from
    an earlier version is sealed, then removed. Processes racing to make it keep the one
    sealed first. RegionKeyError if the region key cannot be trusted, SecretRefused if
    the sealed key does not open; nothing is changed then."""
    return _open_fleet_key(data_dir)[1]


def fleet_private_key(data_dir: Path) -> str:
    """The fleet private key (OpenSSH PEM), opened from its sealed file (made first if
    there is none). For ansible-runner's ssh_key only: never write it to disk or a log."""
    return _open_fleet_key(data_dir)[0].decode()


def _open_fleet_key(data_dir: Path) -> tuple[bytes, str]:
    """(private key PEM, public line), as `ensure_fleet_key` leaves them."""
    box = ensure_region_key(data_dir)
    sealed = fleet_sealed_key_path(data_dir)
    plain = fleet_key_path(data_dir)
    sealed.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not sealed.exists():
        if plain.exists():
            pem = plain.read_bytes()
            serialization.load_ssh_private_key(pem, password=None)  # refuse a damaged one
        else:
            pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption())
        _publish(sealed, (box.seal(FLEET_KEY_PURPOSE, pem) + "\n").encode(), replace=False)
    pem = box.open(FLEET_KEY_PURPOSE, sealed.read_text())
    key = serialization.load_ssh_private_key(pem, password=None)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
    line = f"{line} vauban-fleet"
    public = fleet_public_key_path(data_dir)
    if not public.exists() or public.read_text().strip() != line:
        _publish(public, f"{line}\n".encode(), replace=True)
    plain.unlink(missing_ok=True)  # sealed now: the plaintext copy goes
    return pem, line


def _publish(path: Path, data: bytes, replace: bool) -> None:
    """`path` holds `data` (0600), written whole under a name of its own first; without
    `replace`, a file another process published meanwhile is kept instead."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def parse_public_key(line: str, types: tuple[str, ...] = HOST_KEY_TYPES) -> tuple[str, bytes]:
    """(key type, key blob) of an OpenSSH public key line ("TYPE BASE64 [comment]") of
    one of `types`; HostKeyError for anything else."""
    fields = line.split()
    if len(fields) < 2 or fields[0] not in types:
        raise HostKeyError(f"not an SSH public key of a known type ({', '.join(types)})")
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
