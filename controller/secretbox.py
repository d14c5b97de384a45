"""The region key, and the controller's secrets sealed with it at rest.

The region key is 32 random bytes in `data_dir/region.key`, made at the controller's
first start, readable by the controller's user only (0600). Every secret the controller
keeps on disk or in its database (the fleet SSH key today; TOTP seeds, and whatever
comes next) is sealed with it: AES-256-GCM, a fresh 96-bit nonce per seal, and the
secret's *purpose* as associated data, so a sealed value copied to another place
("fleet-ssh-key" into "totp-seed/<user id>", or one user's seed into another's row) is
refused instead of opened.

A sealed secret is one line of ASCII:

    vauban-secret:1:<key id>:<purpose>:<nonce, base64url>:<ciphertext and tag, base64url>

`key id` names the region key that sealed it (8 hex digits of a hash of the key, which
says nothing about the key), so a value sealed by another region's key is refused by
name rather than as damage. Neither the key nor any opened secret is ever logged, and
their reprs are redacted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = "region.key"
KEY_BYTES = 32
NONCE_BYTES = 12
PREFIX = "vauban-secret"
VERSION = "1"
# a purpose is a short name, with '/' to bind a secret to its owner ("totp-seed/<user id>")
PURPOSE = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,127}$")


class SecretError(Exception):
    """A secret or the region key that cannot be used; the message says why (and never
    holds the secret)."""


class RegionKeyError(SecretError):
    """The region key file is missing, unreadable, of the wrong size, or readable by
    others than the controller's user: the controller refuses to start."""


class SecretRefused(SecretError):
    """A sealed secret that does not open: another format or key, another purpose, or
    damaged; the message says which."""


def region_key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE


class RegionKey:
    """The region key; seals and opens secrets. Its repr never shows the key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise RegionKeyError(f"a region key is {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"vauban region key id\0" + key).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"RegionKey(id={self.key_id})"

    def seal(self, purpose: str, plaintext: bytes) -> str:
        """`plaintext` sealed for `purpose`, as one line of text; only `open` with the
        same key and purpose gives it back. ValueError for a malformed purpose."""
        _check_purpose(purpose)
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, _associated(self.key_id, purpose))
        return ":".join((PREFIX, VERSION, self.key_id, purpose, _b64(nonce), _b64(sealed)))

    def open(self, purpose: str, text: str) -> bytes:
        """The plaintext `text` was sealed from, for `purpose`. SecretRefused, saying
        which, if it is not a sealed secret of this format, was sealed by another region
        key or for another purpose, or was altered."""
        _check_purpose(purpose)
        fields = text.strip().split(":")
        if len(fields) != 6 or fields[0] != PREFIX:
            raise SecretRefused(f"not a sealed secret (expected '{PREFIX}:{VERSION}:...')")
        _, version, key_id, sealed_for, nonce_text, body_text = fields
        if version != VERSION:
            raise SecretRefused(f"a sealed secret of format version {version}; this "
                                f"controller reads version {VERSION}")
        if key_id != self.key_id:
            raise SecretRefused(f"sealed with another region key (id {key_id}); this "
                                f"region's key is {self.key_id}")
        if sealed_for != purpose:
            raise SecretRefused(f"sealed for {sealed_for!r}, not for {purpose!r}")
        try:
            nonce, body = _unb64(nonce_text), _unb64(body_text)
        except (binascii.Error, ValueError) as e:
            raise SecretRefused("the sealed secret's base64 is damaged") from e
        if len(nonce) != NONCE_BYTES:
            raise SecretRefused("the sealed secret's nonce is damaged")
        try:
            return self._aead.decrypt(nonce, body, _associated(key_id, purpose))
        except InvalidTag as e:
            raise SecretRefused(f"the sealed {purpose!r} was altered or damaged: it does "
                                "not authenticate") from e


def ensure_region_key(data_dir: Path) -> RegionKey:
    """The region key of `data_dir`, made first (0600, atomically) if there is none.

    RegionKeyError, before anything is sealed or opened, if the file is readable or
    writable by group or others, is not a regular file, cannot be read, or is not
    32 bytes; the message names the file and what to do. Nothing is changed then."""
    path = region_key_path(data_dir)
    if not path.exists() and not path.is_symlink():
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return load_region_key(data_dir)


def load_region_key(data_dir: Path) -> RegionKey:
    """The region key of `data_dir`; RegionKeyError (see `ensure_region_key`) if it is
    missing or cannot be trusted."""
    path = region_key_path(data_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise RegionKeyError(f"cannot read the region key {path}: {e.strerror}; it must be "
                             "a file readable by the controller's user only") from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise RegionKeyError(f"the region key {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if info.st_mode & 0o077:
            raise RegionKeyError(
                f"the region key {path} has mode {stat.S_IMODE(info.st_mode):04o}: others "
                f"than its owner may read it; run 'chmod 600 {path}' (and consider the "
                "secrets it seals exposed if others did read it)")
        key = f.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise RegionKeyError(f"the region key {path} is {len(key)} bytes, not {KEY_BYTES}: "
                             "it is damaged; restore it from the backup of the data directory")
    return RegionKey(key)


def _check_purpose(purpose: str) -> None:
    if not PURPOSE.match(purpose):
        raise ValueError(f"a secret's purpose is lower-case letters, digits and ._/-, "
                         f"not {purpose!r}")


def _associated(key_id: str, purpose: str) -> bytes:
    return f"{PREFIX}:{VERSION}:{key_id}:{purpose}".encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
