"""The ISO's bill of materials: CycloneDX 1.5 JSON of every Debian and Python package.

Debian packages are named by purl `pkg:deb/debian/<name>@<version>?arch=<arch>&distro=<suite>`,
the venv's Python distributions by `pkg:pypi/<name>@<version>`. The document's serial
number and timestamp derive from the build's inputs, so it is as reproducible as the ISO.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

NAMESPACE = uuid.UUID("9d0c6a44-8d7e-4c59-9f1e-5b1d2f6c0a13")


def deb_purl(name: str, version: str, arch: str, suite: str) -> str:
    return (f"pkg:deb/debian/{quote(name, safe='')}@{quote(version, safe='')}"
            f"?arch={arch}&distro={suite}")


def pypi_purl(name: str, version: str) -> str:
    normal = re.sub(r"[-_.]+", "-", name).lower()  # PEP 503, as the purl spec asks
    return f"pkg:pypi/{normal}@{quote(version, safe='')}"


def sbom(version: str, input_hash: str, epoch: int, suite: str,
         debian: list[dict[str, str]], python: list[dict[str, str]]) -> dict[str, object]:
    """The CycloneDX document of the ISO `vauban-<version>-amd64.iso` built from `input_hash`."""
    components: list[dict[str, object]] = []
    for pkg in debian:
        components.append({
            "type": "library" if pkg["name"].startswith("lib") else "application",
            "name": pkg["name"], "version": pkg["version"],
            "purl": deb_purl(pkg["name"], pkg["version"], pkg["arch"], suite),
            "bom-ref": deb_purl(pkg["name"], pkg["version"], pkg["arch"], suite),
            "properties": [{"name": "vauban:layer", "value": "00-base"}],
        })
    for pkg in python:
        components.append({
            "type": "library", "name": pkg["name"], "version": pkg["version"],
            "purl": pypi_purl(pkg["name"], pkg["version"]),
            "bom-ref": pypi_purl(pkg["name"], pkg["version"]),
            "properties": [{"name": "vauban:layer", "value": "10-vauban"}],
        })
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid5(NAMESPACE, input_hash)}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "component": {"type": "operating-system", "name": "vauban-appliance",
                          "version": version, "bom-ref": f"vauban-appliance@{version}"},
            "tools": {"components": [{"type": "application", "name": "iso.build",
                                      "version": version}]},
        },
        "components": components,
    }
