"""cephx keys and keyring text, made without the Ceph tools."""

from __future__ import annotations

import base64
import binascii
import os
import struct
import time

_AES = 1
_SECRET_LEN = 16
_HEADER = struct.Struct("<HIIH")  # crypto type, created (sec, nsec), secret length


def new_key() -> str:
    """A fresh random cephx key, base64 as `ceph auth get-key` prints it."""
    now = time.time()
    header = _HEADER.pack(_AES, int(now), int((now % 1) * 1e9), _SECRET_LEN)
    return base64.b64encode(header + os.urandom(_SECRET_LEN)).decode()


def valid_key(key: str) -> bool:
    """Whether `key` is a base64 AES cephx key (without saying anything else about it)."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw) != _HEADER.size + _SECRET_LEN:
        return False
    kind, _, _, length = _HEADER.unpack_from(raw)
    return kind == _AES and length == _SECRET_LEN


def keyring(keys: dict[str, str], caps: dict[str, dict[str, str]] | None = None) -> str:
    """Keyring file text for `keys` (entity -> key), with each entity's `caps` if given."""
    out = []
    for entity, key in keys.items():
        out.append(f"[{entity}]\n\tkey = {key}\n")
        for service, cap in (caps or {}).get(entity, {}).items():
            out.append(f'\tcaps {service} = "{cap}"\n')
    return "".join(out)
