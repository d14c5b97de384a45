"""The vendored front-end files are exactly those `make ui-vendor` wrote from the lock file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "controller" / "ui" / "static" / "vendor"


def test_every_vendored_file_is_in_the_manifest_with_its_hash() -> None:
    manifest = json.loads((VENDOR / "MANIFEST.json").read_text())
    on_disk = {str(p.relative_to(VENDOR)) for p in VENDOR.rglob("*")
               if p.is_file() and p.name != "MANIFEST.json"}
    assert on_disk == set(manifest["files"])
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_vendored_versions_are_the_locked_ones() -> None:
    manifest = json.loads((VENDOR / "MANIFEST.json").read_text())
    lock = json.loads((ROOT / "ui" / "package-lock.json").read_text())
    wanted = json.loads((ROOT / "ui" / "package.json").read_text())["dependencies"]
    assert set(manifest["packages"]) == set(wanted)
    for package, version in manifest["packages"].items():
        assert lock["packages"][f"node_modules/{package}"]["version"] == version == wanted[package]


def test_every_vendored_package_carries_its_licence() -> None:
    manifest = json.loads((VENDOR / "MANIFEST.json").read_text())
    for package in manifest["packages"]:
        licence = VENDOR / "licenses" / f"{package.replace('/', '__')}.txt"
        assert licence.stat().st_size > 0, package
