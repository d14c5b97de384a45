"""Hashes that name what the builder makes: one function, so no two parts disagree."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path


def digest(inputs: object) -> str:
    """A short stable hash of JSON-able `inputs` (keys sorted): names a cached build."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def tool_version(package: str) -> str:
    """The installed version of a host's Debian package ("" when it is not installed): a
    new mksquashfs or xorriso may write other bytes, so their versions are inputs too."""
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
