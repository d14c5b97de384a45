"""Shared by the libvirt integration tests: domains recorded and removed by UUID, and a
work directory QEMU (running as libvirt-qemu) can reach."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from agent.hostprep import unreachable_dirs

URI = "qemu:///system"


class Domains:
    """Records the UUIDs of domains a test creates, and removes exactly those."""

    def __init__(self) -> None:
        self.conn = libvirt.open(URI)
        self.uuids: list[str] = []

    def new_id(self) -> str:
        vm_id = str(uuid.uuid4())
        self.uuids.append(vm_id)
        return vm_id

    def define_foreign(self, name: str) -> str:
        """A domain without our metadata, as another tool on the host would make it."""
        vm_id = self.new_id()
        self.conn.defineXML(
            f"<domain type='qemu'><name>{name}</name><uuid>{vm_id}</uuid>"
            "<memory unit='MiB'>32</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>")
        return vm_id

    def exists(self, vm_id: str) -> bool:
        try:
            self.conn.lookupByUUIDString(vm_id)
            return True
        except libvirt.libvirtError:
            return False

    def cleanup(self) -> None:
        for vm_id in self.uuids:
            try:
                dom = self.conn.lookupByUUIDString(vm_id)
            except libvirt.libvirtError:
                continue
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                              | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        self.conn.close()


@pytest.fixture
def domains(libvirtd: list[int]) -> Iterator[Domains]:
    recorder = Domains()
    yield recorder
    recorder.cleanup()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory QEMU (user libvirt-qemu) can reach: pytest's tmp_path base is 0700."""
    path = Path(tempfile.mkdtemp(prefix="vauban-it-", dir="/var/tmp"))
    path.chmod(0o711)
    assert unreachable_dirs(path) == []
    yield path
    shutil.rmtree(path)
