"""Searching what an end-to-end run left and received for the secrets it made."""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from pathlib import Path


def encodings(secret: bytes) -> set[bytes]:
    """`secret` as it could show up in a text: itself, hex, base64 (padded or not,
    standard or URL-safe), percent-encoded."""
    b64 = base64.b64encode(secret)
    forms = {secret, binascii.hexlify(secret), b64, b64.rstrip(b"="),
             base64.urlsafe_b64encode(secret).rstrip(b"=")}
    try:
        forms.add(urllib.parse.quote(secret.decode(), safe="").encode())
    except UnicodeDecodeError:
        pass
    return {f for f in forms if len(f) >= 8}


def holds(data: bytes, secret: bytes) -> bool:
    return any(f in data for f in encodings(secret))


def run_logs(root: Path) -> list[Path]:
    """Every file under the region's log folder and its controller's rollout folders."""
    found = [p for p in (root / "log").rglob("*") if p.is_file()]
    rollouts = root / "controller" / "rollouts"
    return found + ([p for p in rollouts.rglob("*") if p.is_file()] if rollouts.exists() else [])


def leaks_in_files(secrets: dict[str, bytes], files: list[Path]) -> list[str]:
    """'<secret's name> in <file>' for each file holding a secret (in any encoding)."""
    return [f"{name} in {path}" for path in files for name, secret in secrets.items()
            if holds(path.read_bytes(), secret)]
