"""Live migration's failure path against the real libvirtd at qemu:///system.

A migration between two nodes needs two libvirtds (the lab tests it); here the one
libvirtd of this machine is asked to move a running domain to a node that cannot take
it, and must leave it exactly as it was: running, defined, ours.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.drivers.hypervisor.base import HypervisorError
from agent.drivers.hypervisor.libvirt import LibvirtDriver
from agent.protocol import MigrationOrder
from tests.integration.libvirt_fixtures import Domains
from tests.integration.test_libvirt_driver import driver, make_spec, started_daemons

pytestmark = pytest.mark.integration
__all__ = ["driver", "started_daemons"]  # fixtures this module uses


def test_a_migration_that_cannot_reach_its_target_leaves_the_vm_running_here(
        driver: LibvirtDriver, domains: Domains, workdir: Path) -> None:
    spec = make_spec(domains, workdir, labels={"vauban.node": "node-1"})
    driver.define(spec)
    driver.start(spec.id)
    before = driver.host.lookup(spec.id).XMLDesc(0)  # type: ignore[union-attr]
    # loopback: traffic stays on this machine, and no libvirtd here takes a migration
    # over TLS (this host has no hypervisor certificate of a region)
    order = MigrationOrder(seq=1, target_node_id="node-2", target_address="127.0.0.1",
                           bandwidth_mib_s=0, max_downtime_ms=300, timeout_s=30)
    seen: list[int] = []
    with pytest.raises(HypervisorError) as failed:
        driver.migrate(spec.id, order, {"vauban.node": "node-2"}, seen.append)
    assert "127.0.0.1" in str(failed.value) and "kept running here" in str(failed.value)
    [vm] = [v for v in driver.list_vms() if v.id == spec.id]
    assert vm.running and vm.persistent and vm.labels["vauban.node"] == "node-1"
    assert driver.host.lookup(spec.id).XMLDesc(0) == before  # type: ignore[union-attr]
