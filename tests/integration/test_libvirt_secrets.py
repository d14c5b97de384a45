"""Ceph secrets through LibvirtDriver.ensure_ceph_secret, against the real libvirtd.

Every secret a test creates has a unique usage, is recorded by UUID and is
removed in teardown; secrets the tests did not create are never touched.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from agent.drivers.hypervisor.base import HypervisorError
from agent.drivers.hypervisor.libvirt import LibvirtDriver

pytestmark = pytest.mark.integration

URI = "qemu:///system"
# where libvirtd keeps secrets (persistent definitions and values), its runtime state, its logs
SECRET_DIRS = (Path("/etc/libvirt/secrets"), Path("/run/libvirt/secrets"),
               Path("/var/lib/libvirt"), Path("/var/log/libvirt"))


@pytest.fixture
def driver(libvirtd: list[int]) -> Iterator[LibvirtDriver]:
    drv = LibvirtDriver(URI, accelerated=False)
    yield drv
    drv.host.close()


class Secrets:
    """Records the libvirt secrets a test creates (by UUID) and removes exactly those."""

    def __init__(self) -> None:
        self.conn = libvirt.open(URI)
        self.uuids: set[str] = set()

    def new_usage(self) -> str:
        return f"vauban-it-{uuid.uuid4()}"

    def get(self, usage: str) -> libvirt.virSecret:
        secret = self.conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, usage)
        self.uuids.add(secret.UUIDString())
        return secret

    def cleanup(self) -> None:
        for secret_uuid in self.uuids:
            try:
                self.conn.secretLookupByUUIDString(secret_uuid).undefine()
            except libvirt.libvirtError:
                pass  # already gone
        self.conn.close()


@pytest.fixture
def secrets(libvirtd: list[int]) -> Iterator[Secrets]:
    recorder = Secrets()
    yield recorder
    recorder.cleanup()


def new_key() -> str:
    """A cephx-like key: base64 of random bytes, as `ceph auth get-key` prints it."""
    return base64.b64encode(b"\x01\x00" + os.urandom(26)).decode()


def files_containing(needles: list[bytes]) -> list[Path]:
    found = []
    for top in SECRET_DIRS:
        for path in top.rglob("*") if top.exists() else ():
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if any(n in data for n in needles):
                    found.append(path)
    return found


def test_ceph_secret_is_ephemeral_private_and_idempotent(
        driver: LibvirtDriver, secrets: Secrets, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    usage, key = secrets.new_usage(), new_key()

    driver.ensure_ceph_secret(usage, key)

    secret = secrets.get(usage)
    root = ET.fromstring(secret.XMLDesc(0))
    assert root.get("ephemeral") == "yes" and root.get("private") == "yes"
    assert root.find("usage[@type='ceph']/name") is not None
    with pytest.raises(libvirt.libvirtError, match="private"):
        secret.value()  # the API will not hand the key back
    got = subprocess.run(["virsh", "-c", URI, "secret-get-value", secret.UUIDString()],
                         capture_output=True, text=True)
    assert got.returncode != 0 and key not in got.stdout

    xml_before = secret.XMLDesc(0)
    driver.ensure_ceph_secret(usage, key)  # same value: same secret, same definition
    assert secrets.get(usage).UUIDString() == secret.UUIDString()
    assert secrets.get(usage).XMLDesc(0) == xml_before

    changed = new_key()
    driver.ensure_ceph_secret(usage, changed)  # value replaced in place
    assert secrets.get(usage).UUIDString() == secret.UUIDString()

    keys = [key, changed]
    assert files_containing([k.encode() for k in keys]
                            + [base64.b64decode(k) for k in keys]) == []
    assert not any(k in record.getMessage() for record in caplog.records for k in keys)


def test_ceph_secret_reappears_after_being_lost(driver: LibvirtDriver,
                                                secrets: Secrets) -> None:
    """As after a libvirtd restart: ensuring again defines it again."""
    usage = secrets.new_usage()
    driver.ensure_ceph_secret(usage, new_key())
    secrets.get(usage).undefine()

    driver.ensure_ceph_secret(usage, new_key())

    assert ET.fromstring(secrets.get(usage).XMLDesc(0)).get("ephemeral") == "yes"


def test_foreign_secret_with_our_usage_is_left_alone(
        driver: LibvirtDriver, secrets: Secrets, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    usage, key = secrets.new_usage(), new_key()
    foreign = secrets.conn.secretDefineXML(
        f"<secret ephemeral='yes' private='no'><usage type='ceph'><name>{usage}</name>"
        "</usage></secret>")
    secrets.uuids.add(foreign.UUIDString())
    foreign.setValue(b"theirs")

    with pytest.raises(HypervisorError, match="not ephemeral and private") as err:
        driver.ensure_ceph_secret(usage, key)

    assert key not in str(err.value)
    assert not any(key in record.getMessage() for record in caplog.records)
    assert foreign.value() == b"theirs"
    with pytest.raises(HypervisorError, match="not valid base64") as err:
        driver.ensure_ceph_secret(usage, key + "!")
    assert key not in str(err.value)
