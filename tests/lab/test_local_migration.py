"""Live migration in a region whose VM disks are each node's own (localfs): a lab of two
nodes of its own beside the session's, and a controller on local storage. A guest
writing to its disk moves with its root disk copied (NBD over TLS beside the memory)
without losing a write; afterwards its old node holds no copy of the disk, and it moves
back the same way. A stopped VM moves cold with its disk, stays stopped, and boots there.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import allinone
from lab import main as lab_main
from lab import network
from lab.main import Lab
from lab.region import controller_env
from tests.e2e.region import free_port, wait_for
from tests.lab.fixtures import TEST_SUBNETS
from tests.lab.region import (
    DOWN_AFTER_S,
    NODE_UP_TIMEOUT_S,
    LabRegion,
    all_nodes_up,
)
from tests.lab.test_migration import FIRST_SECTOR, MOVE_TIMEOUT, SECTOR, domains_on, writer, written
from tests.lab.test_multinode import BOOT_TIMEOUT, Made

pytestmark = pytest.mark.e2e

READY_TIMEOUT_S = 300  # hypervisor certificates asked for, libvirtd restarted once


def _another_subnet() -> str:
    """A /24 of the test range no interface here uses (the session's lab holds its own)."""
    for subnet in TEST_SUBNETS.subnets(new_prefix=24):
        if network.subnet_user(subnet) is None:
            return str(subnet)
    raise RuntimeError(f"every /24 of {TEST_SUBNETS} is in use on this machine")


@pytest.fixture(scope="module")
def local_lab(lab3: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two nodes of their own (taken after the session's lab, whose subnet is then used)."""
    state = tmp_path_factory.mktemp("lablocal")
    try:
        yield lab_main.up(state, 2, name=f"l{os.getpid() % 10000}",
                          subnet=_another_subnet())
    finally:
        lab_main.down(state)


@pytest.fixture(scope="module")
def local_region(local_lab: Lab, testguest_image: Path) -> Iterator[LabRegion]:
    """Both nodes in one region on local storage, ready to migrate, with the test image."""
    root = Path("/var/tmp") / f"vauban-lab-local-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o711)
    region = LabRegion(
        root=root,
        layout=allinone.Layout(root, free_port(), host=str(local_lab.host_address.ip)),
        controller_env={"VAUBAN_NODE_DOWN_AFTER": str(DOWN_AFTER_S),
                        "VAUBAN_STORAGE": "localfs", **controller_env(local_lab, root)},
        lab=local_lab)
    try:
        region.start_controller()
        region.token = allinone.admin_token(region.layout)
        for i, node in enumerate(region.nodes):
            added = region.add_node(i, "--no-rollout")
            assert added.returncode == 0, f"node add {node.name}: {added.stderr}"
        region.cli("rollout", "run")
        wait_for(lambda: all_nodes_up(region), NODE_UP_TIMEOUT_S, "both nodes to be up")
        wait_for(lambda: all(region.json("node", "show", n.name)["inventory"]
                             .get("migration_ready") for n in region.nodes),
                 READY_TIMEOUT_S, "both nodes to be ready for migrations")
        region.cli("image", "import", str(testguest_image), "--name", "testguest")
        yield region
    finally:
        region.stop()


def root_disk(region: LabRegion, node: str, vm_id: str) -> str:
    """The path of the VM's root disk file on `node`, as its libvirt domain names it."""
    status, xml = region.on_node(node, f"virsh -c qemu:///system dumpxml {vm_id}")
    assert status == 0, xml
    found = re.search(r"<source file='([^']+/root\.qcow2)'", xml)
    assert found, xml
    return found.group(1)


def sectors_on(region: LabRegion, node: str, disk: str, count: int) -> list[str]:
    """What the qcow2 `disk` on `node` holds in the sectors of sequence numbers 1..count
    (read through its backing chain, shared with the running VM)."""
    raw = f"/root/check-{uuid.uuid4().hex[:8]}.raw"
    status, out = region.on_node(
        node, f"qemu-img convert -U -f qcow2 -O raw {disk} {raw} && "
              f"dd if={raw} bs={SECTOR} skip={FIRST_SECTOR + 1} count={count} 2>/dev/null"
              f" | tr '\\0' ' '; rm -f {raw}")
    assert status == 0, out
    return [out[i * SECTOR:(i + 1) * SECTOR].strip() for i in range(count)]


def test_a_vm_on_local_disks_moves_live_with_its_disk_and_back_losing_no_write(
        local_region: LabRegion, tmp_path: Path) -> None:
    region, tag = local_region, uuid.uuid4().hex[:6]
    first, second = (n.name for n in region.nodes)
    made = Made(region)
    try:
        vm = made.vm(f"loc-{tag}", "--node", first, "--disk", "1",
                     "--user-data", str(writer(tmp_path)))
        wait_for(lambda: written(region.console(vm)) >= 5, BOOT_TIMEOUT,
                 "the guest to write to its disk")
        disk = root_disk(region, first, vm["id"])
        region.cli("vm", "migrate", vm["name"], "--to", second, "--wait")
        moved = region.vm(vm["name"])
        assert (moved["node_name"], moved["state"]) == (second, "running")
        assert vm["id"] not in domains_on(region, first)
        wait_for(lambda: written(region.console(moved)) > 3, MOVE_TIMEOUT,
                 "the guest to write on after the move")
        assert "VAUBAN-TESTGUEST-BOOTED" not in region.console(moved)  # no reboot
        last = written(region.console(moved))
        assert sectors_on(region, second, root_disk(region, second, vm["id"]), last) == \
            [f"seq {n}" for n in range(1, last + 1)]
        # the old node keeps no stale copy of the disk
        wait_for(lambda: region.on_node(first, f"test -e {disk}")[0] != 0, MOVE_TIMEOUT,
                 "the source to drop its copy of the disk")
        # and back, the same way
        last_before = written(region.console(moved))
        region.cli("vm", "migrate", vm["name"], "--to", first, "--wait")
        back = region.vm(vm["name"])
        assert (back["node_name"], back["state"]) == (first, "running")
        wait_for(lambda: written(region.console(back)) > last_before, MOVE_TIMEOUT,
                 "the guest to write on after moving back")
        final = written(region.console(back))
        assert final > last_before
        assert sectors_on(region, first, root_disk(region, first, vm["id"]), final) == \
            [f"seq {n}" for n in range(1, final + 1)]
    finally:
        made.delete_all()


def test_a_stopped_vm_on_local_disks_moves_cold_with_its_disk_and_boots_there(
        local_region: LabRegion, tmp_path: Path) -> None:
    region, tag = local_region, uuid.uuid4().hex[:6]
    first, second = (n.name for n in region.nodes)
    made = Made(region)
    try:
        vm = made.vm(f"cold-{tag}", "--node", first, "--disk", "1",
                     "--user-data", str(writer(tmp_path)))
        wait_for(lambda: written(region.console(vm)) >= 3, BOOT_TIMEOUT,
                 "the guest to write to its disk")
        region.cli("vm", "stop", vm["name"], "--force", "--wait")
        last = written(region.console(vm))
        disk = root_disk(region, first, vm["id"])
        region.cli("vm", "migrate", vm["name"], "--to", second, "--wait")
        moved = region.vm(vm["name"])
        assert (moved["node_name"], moved["state"]) == (second, "stopped")
        # defined there and off (its guest never ran on the way); gone from the old node
        status, state = region.on_node(second, f"virsh -c qemu:///system domstate {vm['id']}")
        assert status == 0 and state.strip() == "shut off", state
        assert vm["id"] not in domains_on(region, first)
        wait_for(lambda: region.on_node(first, f"test -e {disk}")[0] != 0, MOVE_TIMEOUT,
                 "the source to drop its copy of the disk")
        assert sectors_on(region, second, root_disk(region, second, vm["id"]), last) == \
            [f"seq {n}" for n in range(1, last + 1)]
        region.cli("vm", "start", vm["name"], "--wait")
        wait_for(lambda: "VAUBAN-TESTGUEST-READY" in region.console(region.vm(vm["name"])),
                 BOOT_TIMEOUT, "the moved guest to boot from its copied disk")
    finally:
        made.delete_all()
