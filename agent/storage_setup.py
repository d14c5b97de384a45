"""Build the node's storage driver from the region's storage settings."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from agent.config import AgentConfig
from agent.drivers.hypervisor.base import HypervisorDriver
from agent.drivers.registry import load_storage
from agent.drivers.storage.base import StorageDriver
from agent.protocol import StorageSettings


def make_storage(settings: StorageSettings, config: AgentConfig, hypervisor: HypervisorDriver
                 ) -> tuple[StorageDriver, Callable[[], None]]:
    """The region's storage driver, and what to run before a VM disk of it is plugged in.

    For Ceph that is giving the hypervisor the key (an in-memory secret, lost if the
    hypervisor restarts, hence before every define, start and attach).
    """
    if settings.driver == "localfs":
        return load_storage("localfs", root=config.storage_dir), lambda: None
    if settings.driver == "rbd" and settings.rbd is not None:
        rbd = settings.rbd
        prepare = partial(hypervisor.ensure_ceph_secret, rbd.secret_usage, rbd.key)
        prepare()
        driver = load_storage(
            "rbd", pool=rbd.pool, user=rbd.user, key=rbd.key, mon_host=rbd.mon_host,
            secret_usage=rbd.secret_usage, volume_pools=tuple(rbd.volume_pools),
            scratch_dir=config.data_dir / "scratch")
        return driver, prepare
    raise ValueError(f"storage driver {settings.driver!r} is not known to this agent")
