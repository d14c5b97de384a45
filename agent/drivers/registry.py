"""The one literal registry of drivers: a name in the node's configuration -> a class."""

from __future__ import annotations

from typing import Any

from agent.drivers.gpu.base import GpuDriver
from agent.drivers.gpu.none import NoGpuDriver
from agent.drivers.gpu.nvidia import NvidiaGpuDriver
from agent.drivers.hypervisor.base import HypervisorDriver
from agent.drivers.hypervisor.libvirt import LibvirtDriver
from agent.drivers.hypervisor.xapi import XapiHypervisor
from agent.drivers.network.base import NetworkDriver
from agent.drivers.network.linux import LinuxNetworkDriver
from agent.drivers.storage.base import StorageDriver
from agent.drivers.storage.localfs import LocalfsDriver
from agent.drivers.storage.rbd.driver import RbdDriver
from agent.drivers.storage.xapi import XapiStorage

HYPERVISORS: dict[str, type[HypervisorDriver]] = {"libvirt": LibvirtDriver,
                                                  "xapi": XapiHypervisor}
STORAGE: dict[str, type[StorageDriver]] = {"localfs": LocalfsDriver, "rbd": RbdDriver,
                                           "xapi": XapiStorage}
NETWORKS: dict[str, type[NetworkDriver]] = {"linux": LinuxNetworkDriver}
GPUS: dict[str, type[GpuDriver]] = {"none": NoGpuDriver, "nvidia": NvidiaGpuDriver}


def _lookup(kind: str, registry: dict[str, type[Any]], name: str) -> type[Any]:
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise ValueError(f"unknown {kind} driver {name!r}; known: {known}") from None


def load_hypervisor(name: str, **kwargs: Any) -> HypervisorDriver:
    """An instance of the hypervisor driver registered as `name`; ValueError if none is."""
    driver: HypervisorDriver = _lookup("hypervisor", HYPERVISORS, name)(**kwargs)
    return driver


def load_storage(name: str, **kwargs: Any) -> StorageDriver:
    """An instance of the storage driver registered as `name`; ValueError if none is."""
    driver: StorageDriver = _lookup("storage", STORAGE, name)(**kwargs)
    return driver


def load_network(name: str, **kwargs: Any) -> NetworkDriver:
    """An instance of the network driver registered as `name`; ValueError if none is."""
    driver: NetworkDriver = _lookup("network", NETWORKS, name)(**kwargs)
    return driver


def load_gpu(name: str, **kwargs: Any) -> GpuDriver:
    """An instance of the GPU driver registered as `name`; ValueError if none is."""
    driver: GpuDriver = _lookup("gpu", GPUS, name)(**kwargs)
    return driver
