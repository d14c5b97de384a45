"""HA on the lab: real agents, a real shared Ceph, a real IPMI BMC per node whose power
off cuts exactly that node, checked as an operator would.

- A node is lost while its BMC does not answer: nothing is restarted and the reason is
  shown; its BMC answers again but holds the power off while the controller is
  restarted: the failover completes once, and the HA VM runs on another node, booted
  from the same RBD disk.
- A node frozen (alive, looking dead) behind a BMC that only says it cut the power:
  its HA VM is restarted elsewhere; after the thaw the node cannot write a block to
  that VM's disk, its agent has stopped its copy, and what the restarted VM wrote is
  intact.

Each test brings its node back: recovered (its blocklist entry lifted), powered on
through its BMC, up in the region.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.drivers.storage.rbd.names import root_disk_name
from lab import bmc as lab_bmc
from lab import node as lab_node
from lab.bmc_power import HOLDING
from tests.e2e.region import wait_for
from tests.lab.region import CEPH_POOL, NODE_UP_TIMEOUT_S, LabRegion
from tests.lab.test_migration import FIRST_SECTOR, SECTOR
from tests.lab.test_multinode import BOOT_TIMEOUT, Made

pytestmark = pytest.mark.e2e

FAILOVER_TIMEOUT = 600  # detection, fencing, and a TCG guest booting on a loaded machine


def victim_with_bmc(region: LabRegion) -> str:
    """The region's third node, its BMC known to the controller."""
    assert region.lab is not None
    node = region.nodes[2]
    address, port, user, password = lab_bmc.credentials(node)
    secret = region.root / f"bmc-{node.name}"
    secret.write_text(password)
    secret.chmod(0o600)
    region.cli("node", "bmc", "set", node.name, "--address", address, "--port", str(port),
               "--user", user, "--password-file", str(secret))
    return node.name


def bring_back(region: LabRegion, name: str) -> None:
    """Power the node on through its BMC if it is off, wait until it is up, recover it if
    it was fenced (blocklist lifted: only a node that reported since is taken back) and
    clear its own fence."""
    assert region.lab is not None
    node = region.node(name)
    lab_bmc.clear_fault(node)
    if not lab_bmc.is_running(node):
        region.lab.start_bmc(node)
    if not lab_node.powered(node):
        done = lab_bmc.ipmitool(node, "power", "on")
        assert done.returncode == 0, done.stderr
        region.lab.reload_power()
        lab_node.wait_ready(node)
    if lab_node.frozen(node):
        lab_node.thaw(node)
    wait_for(lambda: region.node_state(name) == "up", NODE_UP_TIMEOUT_S, f"{name} up again")
    if region.json("node", "show", name).get("fenced_at"):
        wait_for(lambda: (failover_of(region, name).get("state") or "done") in
                 ("done", "cancelled"), NODE_UP_TIMEOUT_S, "its failover to end")
        region.cli("node", "recover", name)
    if region.json("node", "show", name).get("self_fenced_at"):
        region.cli("node", "clear-fence", name)


def failover_of(region: LabRegion, name: str) -> dict[str, Any]:
    return region.json("node", "show", name).get("failover") or {}


def audit(region: LabRegion, action: str, target: str) -> list[dict[str, Any]]:
    trail = json.loads(region.cli("audit", "list", "--json", "--action", action))
    return [e for e in trail if e["target"] == target]


def running_copies(region: LabRegion, vm_id: str) -> list[str]:
    """The region's nodes where a domain of the VM runs now."""
    found = []
    for node in region.nodes:
        if not lab_node.powered(node) or lab_node.frozen(node):
            continue
        status, out = region.on_node(node.name, "virsh -c qemu:///system list --uuid")
        if status == 0 and vm_id in out:
            found.append(node.name)
    return found


def test_a_lost_node_behind_a_silent_bmc_restarts_nothing_then_fails_over_once(
        lab_region: LabRegion, made: Made) -> None:
    region, tag = lab_region, uuid.uuid4().hex[:6]
    assert region.lab is not None
    victim = victim_with_bmc(region)
    node = region.node(victim)
    vm = made.vm(f"ha-{tag}", "--node", victim, "--ha")
    wait_for(lambda: "VAUBAN-TESTGUEST-READY" in region.console(vm), BOOT_TIMEOUT,
             "the guest to boot")
    try:
        # (c) the node stops answering (frozen: no agent, no storage heartbeat) and so
        # does its BMC: nothing is restarted, and the reason is shown
        region.lab.stop_bmc(node)
        lab_node.freeze(node)
        wait_for(lambda: "did not answer" in (failover_of(region, victim).get("reason") or ""),
                 FAILOVER_TIMEOUT, "the failover to say the BMC does not answer")
        assert "nothing restarted" in failover_of(region, victim)["reason"]
        shown = region.vm(vm["name"])
        assert (shown["node_name"], shown["state"]) == (victim, "unknown")
        assert audit(region, "vm.ha_restart", f"instance/{vm['id']}") == []
        # (d) the BMC answers again but holds the power off; meanwhile the controller
        # is restarted: the failover goes on in the new one and completes once
        lab_bmc.set_fault(node, hold=True)
        region.lab.start_bmc(node)
        holding = lab_bmc.folder(node) / HOLDING
        wait_for(holding.exists, FAILOVER_TIMEOUT, "the power off to reach the BMC")
        region.layout.service("controller").stop()  # by its PID, in the middle of the step
        lab_bmc.clear_fault(node)  # the held power off runs: the node's container is killed
        wait_for(lambda: not lab_node.powered(node), FAILOVER_TIMEOUT, "the power off")
        region.start_controller()
        # (a) its HA VM runs on another node, booted from the same RBD disk
        wait_for(lambda: region.vm(vm["name"])["node_name"] != victim, FAILOVER_TIMEOUT,
                 "the HA VM to be restarted on another node")
        moved = region.vm(vm["name"])
        wait_for(lambda: "VAUBAN-TESTGUEST-READY" in region.console(region.vm(vm["name"])),
                 BOOT_TIMEOUT, "the restarted guest to boot")
        status, xml = region.on_node(moved["node_name"],
                                     f"virsh -c qemu:///system dumpxml {vm['id']}")
        assert status == 0 and f"name='{CEPH_POOL}/{root_disk_name(vm['id'])}'" in xml
        wait_for(lambda: failover_of(region, victim).get("state") == "done",
                 FAILOVER_TIMEOUT, "the failover to end")
        assert len(audit(region, "vm.ha_restart", f"instance/{vm['id']}")) == 1
        node_id = region.json("node", "show", victim)["id"]
        steps = [(e["outcome"], e["detail"].get("step"))
                 for e in audit(region, "node.fence", f"node/{node_id}")]
        assert ("failed", "power-off") in steps and ("succeeded", "storage") in steps
        assert running_copies(region, vm["id"]) == [moved["node_name"]]
    finally:
        bring_back(region, victim)
    # the node back, the moved VM's old definition is gone from it, its disk kept
    wait_for(lambda: vm["id"] not in region.on_node(
        victim, "virsh -c qemu:///system list --all --uuid")[1], NODE_UP_TIMEOUT_S,
        "the returned node to drop the old definition")
    assert running_copies(region, vm["id"]) == [region.vm(vm["name"])["node_name"]]


def stamped_writer(tmp_path: Path) -> Path:
    """User-data: as test_migration's writer, each sector also naming this boot."""
    script = tmp_path / "stamped-writer"
    script.write_text(f"""#!/bin/sh
(
boot=$(cat /proc/sys/kernel/random/uuid)
echo "boot $boot"
n=1
while :; do
    printf '%-{SECTOR - 1}s\\n' "seq $n boot $boot" | dd of=/dev/vda bs={SECTOR} \\
        seek=$(({FIRST_SECTOR} + n)) conv=notrunc,fsync 2>/dev/null || exit 1
    echo "wrote $n"
    n=$((n + 1))
done
) > /dev/console 2>&1 &
""")
    return script


def boot_id(console: str) -> str | None:
    found = re.findall(r"boot ([0-9a-f-]{36})", console)
    return found[-1] if found else None


def test_a_frozen_node_thawed_after_its_failover_cannot_write_and_stops_its_copy(
        lab_region: LabRegion, made: Made, tmp_path: Path) -> None:
    from tests.lab.test_migration import sectors, written
    region, tag = lab_region, uuid.uuid4().hex[:6]
    assert region.lab is not None and region.ceph is not None
    victim = victim_with_bmc(region)
    node = region.node(victim)
    vm = made.vm(f"frz-{tag}", "--node", victim, "--ha", "--disk", "1",
                 "--user-data", str(stamped_writer(tmp_path)))
    wait_for(lambda: written(region.console(vm)) >= 3, BOOT_TIMEOUT, "the guest to write")
    old_boot = boot_id(region.console(vm))
    key = region.root / "client.vauban.key"
    try:
        lab_bmc.set_fault(node, ignore_power_off=True)  # says it cut the power; cuts nothing
        lab_node.freeze(node)
        wait_for(lambda: region.vm(vm["name"])["node_name"] != victim, FAILOVER_TIMEOUT,
                 "the HA VM to be restarted on another node")
        moved = region.vm(vm["name"])
        wait_for(lambda: written(region.console(moved)) >= 3, BOOT_TIMEOUT,
                 "the restarted guest to write")
        new_boot = boot_id(region.console(moved))
        assert new_boot and new_boot != old_boot
        lab_node.thaw(node)
        # its agent finds neither the controller nor its storage for too long: it
        # destroys its copy of the VM
        wait_for(lambda: vm["id"] not in region.on_node(
            victim, "virsh -c qemu:///system list --uuid")[1], FAILOVER_TIMEOUT,
            "the thawed node to stop its copy")
        _, journal = region.on_node(victim, "journalctl -u vauban-agent --no-pager -o cat")
        assert "self-fenced" in journal
        # and it cannot write a block to the moved VM's disk: the test tries, as the
        # region's Ceph client, from the node
        key.write_text(_client_key(region))
        inside = node.merged / "root" / "client.vauban.key"
        inside.write_text(key.read_text())
        inside.chmod(0o600)
        mon = str(region.lab.host_address.ip)
        status, out = region.on_node(victim, (
            f"timeout 60 rbd --mon-host {mon} --id vauban --keyfile /root/client.vauban.key "
            f"bench --io-type write --io-size 4096 --io-total 4096 "
            f"{CEPH_POOL}/{root_disk_name(vm['id'])}"))
        assert status != 0, out
        last = written(region.console(moved))
        wait_for(lambda: written(region.console(moved)) > last + 3, FAILOVER_TIMEOUT,
                 "the restarted guest to write on")
        last = written(region.console(moved))
        assert sectors(region, vm["id"], last) == \
            [f"seq {n} boot {new_boot}" for n in range(1, last + 1)]
        assert running_copies(region, vm["id"]) == [moved["node_name"]]
    finally:
        (node.merged / "root" / "client.vauban.key").unlink(missing_ok=True)
        key.unlink(missing_ok=True)
        bring_back(region, victim)


def _client_key(region: LabRegion) -> str:
    """The key of client.vauban from the cluster's keyring file."""
    assert region.ceph is not None
    text = Path(region.ceph.client_keyring).read_text()
    return re.search(r"key\s*=\s*(\S+)", text).group(1)  # type: ignore[union-attr]

