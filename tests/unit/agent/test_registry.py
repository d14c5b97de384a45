"""The driver registry: known names load, unknown names fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.drivers.hypervisor.libvirt import LibvirtDriver
from agent.drivers.hypervisor.xapi import XapiHypervisor
from agent.drivers.registry import HYPERVISORS, STORAGE, load_hypervisor, load_storage
from agent.drivers.storage.localfs import LocalfsDriver
from agent.drivers.storage.rbd.driver import RbdDriver
from agent.drivers.storage.xapi import XapiStorage


def test_registries_are_literal() -> None:
    assert HYPERVISORS == {"libvirt": LibvirtDriver, "xapi": XapiHypervisor}
    assert STORAGE == {"localfs": LocalfsDriver, "rbd": RbdDriver, "xapi": XapiStorage}


def test_unknown_hypervisor_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown hypervisor driver 'xen'; known: libvirt, xapi$"):
        load_hypervisor("xen")


def test_unknown_storage_lists_known_ones() -> None:
    with pytest.raises(ValueError,
                       match=r"unknown storage driver 'ceph'; known: localfs, rbd, xapi$"):
        load_storage("ceph")


def test_loads_with_keyword_arguments(tmp_path: Path) -> None:
    # The libvirt driver connects lazily, so this needs no libvirtd.
    hv = load_hypervisor("libvirt", uri="qemu:///system", accelerated=False)
    storage = load_storage("localfs", root=tmp_path / "store")

    assert isinstance(hv, LibvirtDriver) and hv.info().accelerated is False
    assert isinstance(storage, LocalfsDriver) and storage.info().name == "localfs"
    assert (tmp_path / "store" / "images").is_dir()


def test_gpu_drivers_are_literal_and_unknown_names_fail() -> None:
    from agent.drivers.gpu.none import NoGpuDriver
    from agent.drivers.gpu.nvidia import NvidiaGpuDriver
    from agent.drivers.registry import GPUS, load_gpu

    assert GPUS == {"none": NoGpuDriver, "nvidia": NvidiaGpuDriver}
    with pytest.raises(ValueError, match=r"unknown gpu driver 'amd'; known: none, nvidia"):
        load_gpu("amd")
