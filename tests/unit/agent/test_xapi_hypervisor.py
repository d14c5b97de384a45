"""The XCP-ng pool's hypervisor driver read from its event cache, without a pool
(agent/drivers/hypervisor/xapi.py): what it lists, what it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.drivers.hypervisor.base import DiskSpec, HostdevSpec, HypervisorError, VmSpec
from agent.drivers.hypervisor.xapi import XapiHypervisor, disk_target
from agent.drivers.xapi.events import PoolCache
from agent.drivers.xapi.tasks import PoolOps


class _NoClient:
    """Nothing here may call the pool: any call fails the test."""

    label = "p"

    def call(self, method: str, *args: Any) -> Any:
        raise AssertionError(f"called {method}")


def _vm(name: str, instance: str | None = None, **fields: Any) -> dict[str, Any]:
    """A VM record; with `instance`, tagged as the VM Vauban made for it."""
    mine = {"vauban.instance": instance, "vauban.uuid": f"uuid-{name}"} if instance else {}
    other_config = {**mine, **fields.pop("other_config", {})}
    return {"uuid": f"uuid-{name}", "name_label": name, "power_state": "Halted",
            "is_a_template": False, "is_a_snapshot": False, "is_control_domain": False,
            "other_config": other_config, **fields}


def _driver(*vms: dict[str, Any]) -> XapiHypervisor:
    cache = PoolCache(["VM"])
    cache.replace({"VM": {f"OpaqueRef:{v['uuid']}": v for v in vms}}, cache.begin_read())
    ops = PoolOps(_NoClient(), cache)  # type: ignore[arg-type]  # nothing is called
    return XapiHypervisor(ops, lambda path, name, config: "")


def test_only_our_vms_are_listed_not_copies_made_in_the_pool_and_paused_ones_stopped() -> None:
    mine = {"vauban.power_seq": "3", "vauban.labels": '{"vauban.owner": "n1"}'}
    ours = _vm("ours", "i-1", power_state="Paused", other_config=mine)
    # Xen Orchestra's clone of a VM of ours keeps its other_config, our uuid tag included
    copy = {**_vm("copy", power_state="Running"), "other_config": ours["other_config"]}
    driver = _driver(
        ours, copy, _vm("running", "i-2", power_state="Running"),
        _vm("template", "i-3", is_a_template=True),
        _vm("untagged", other_config={"vauban.instance": "i-4"}),
        _vm("foreign"), _vm("dom0", is_control_domain=True, power_state="Running"))
    seen = {o.id: o for o in driver.list_vms()}
    assert set(seen) == {"i-1", "i-2"}
    assert (seen["i-1"].running, seen["i-1"].power_seq, seen["i-1"].labels) == (
        False, 3, {"vauban.owner": "n1"})
    assert seen["i-1"].hypervisor_uuid == "uuid-ours" and seen["i-2"].running


def test_an_unreadable_pool_is_a_retryable_error_not_an_empty_list() -> None:
    driver = _driver()
    driver.cache.invalidate("pool p unreachable")
    with pytest.raises(HypervisorError) as e:
        driver.list_vms()
    assert e.value.retryable and "pool p unreachable" in str(e.value)


def test_what_a_pool_refuses_names_the_pool() -> None:
    driver = _driver()
    with pytest.raises(HypervisorError, match="XCP-ng pool cannot hot-plug disks"):
        driver.attach_disk("i-1", DiskSpec(source=Path("/x"), format="raw", target="vdc"))
    with pytest.raises(HypervisorError, match="XCP-ng pool cannot use Ceph RBD"):
        driver.ensure_ceph_secret("u", "k")
    spec = VmSpec(id="i-1", name="n", vcpus=1, memory_mib=128, disks=(),
                  console_log=Path("/unused"), hostdevs=(HostdevSpec("pci", "0000:17:00.0"),))
    with pytest.raises(HypervisorError, match="XCP-ng pool cannot pass host devices"):
        driver.define(spec)


def test_userdevice_positions_are_virtio_names() -> None:
    assert [disk_target(u) for u in ("0", "1", "25")] == ["vda", "vdb", "vdz"]


def test_undefine_and_stop_of_what_needs_nothing_call_nothing() -> None:
    driver = _driver(_vm("halted", "i-1"))
    driver.undefine("unknown")
    driver.stop("i-1", grace_seconds=30)
