"""The vendored front-end files are exactly those `make ui-vendor` wrote from the lock file
(and the tarballs pinned in ui/vendor.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "controller" / "ui" / "static" / "vendor"


def vendor_script() -> ModuleType:
    """ui/vendor.py (a script, not in a package), loaded for its pins."""
    spec = importlib.util.spec_from_file_location("ui_vendor", ROOT / "ui" / "vendor.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    packed = {package: version for package, version, _, _ in vendor_script().PACKED}
    assert set(manifest["packages"]) == set(wanted) | set(packed)
    for package, version in manifest["packages"].items():
        if package in packed:  # taken from its tarball, pinned in ui/vendor.py
            assert version == packed[package]
            continue
        assert lock["packages"][f"node_modules/{package}"]["version"] == version == wanted[package]


def test_every_vendored_package_carries_its_licence() -> None:
    manifest = json.loads((VENDOR / "MANIFEST.json").read_text())
    for package in manifest["packages"]:
        licence = VENDOR / "licenses" / f"{package.replace('/', '__')}.txt"
        assert licence.stat().st_size > 0, package


def test_no_vendored_script_fetches_from_a_cdn() -> None:
    """A region may be air-gapped: a bundle's own asset addresses (Redoc's logo and icon
    sets) are taken out when it is vendored."""
    pattern = vendor_script().REMOTE_ASSET
    for path in VENDOR.rglob("*"):
        if path.suffix in (".js", ".mjs", ".css"):
            assert not pattern.search(path.read_bytes()), path
    # a bundle's asset address becomes empty data; the sample is assembled here so that no
    # CDN address stands in the tree (its host, RFC 2606's .invalid, never resolves anyway)
    sample = b"src:`https" + b"://" + b"cdn.assets.invalid/logo-mini.svg`"
    assert pattern.sub(b"data:,", sample) == b"src:`data:,`"
