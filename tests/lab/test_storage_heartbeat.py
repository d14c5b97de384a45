"""Every agent of the lab region writes its storage heartbeat into the shared Ceph
cluster and the controller shows it fresh; no node of a healthy region fences itself; a
node whose Ceph client is blocklisted (its whole IP, as a failover fences it) destroys its
running VM at once and starts nothing until the fence is cleared.

The blocklist entry names the node's own address on the lab bridge, which no other client
uses (Ceph and the controller are on the host's address), and is removed at the end."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from controller.ha.ceph import FENCE_USER, CephAccess, Fencer, whole_ip
from controller.storage_settings import key_from_keyring
from tests.e2e.region import wait_for
from tests.lab.region import NODE_UP_TIMEOUT_S, LabRegion

pytestmark = pytest.mark.e2e

SEEN_TIMEOUT_S = 120  # failure bound: the controller reads every 2 s


def nodes(region: LabRegion) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in json.loads(region.cli("node", "list", "--json"))}


def test_every_node_writes_a_fresh_storage_heartbeat_and_none_is_fenced(
        lab_region: LabRegion) -> None:
    names = sorted(n.name for n in lab_region.nodes)

    def all_fresh() -> dict[str, dict[str, Any]] | None:
        found = nodes(lab_region)
        beats = {name: found[name].get("storage_heartbeat") for name in names}
        ok = all(b is not None and b["seq"] is not None and not b["stale"]
                 for b in beats.values())
        return found if ok else None

    first = wait_for(all_fresh, SEEN_TIMEOUT_S, "every node's storage heartbeat to be read",
                     interval=2.0)
    seqs = {name: first[name]["storage_heartbeat"]["seq"] for name in names}

    def advanced() -> bool:
        found = nodes(lab_region)
        return all(found[name]["storage_heartbeat"]["seq"] > seqs[name] for name in names)

    wait_for(advanced, SEEN_TIMEOUT_S, "every node's storage heartbeat to advance", interval=2.0)
    for name, node in nodes(lab_region).items():
        assert node["self_fenced_at"] is None, f"{name} fenced itself: {node}"
    shown = lab_region.cli("node", "show", names[0])
    assert "storage heartbeat: " in shown and "s ago (seq " in shown, shown


FENCE_TIMEOUT_S = 120  # failure bound: the next heartbeat write (every 2 s) is refused


def test_a_blocklisted_node_destroys_its_vm_and_starts_nothing_until_cleared(
        lab_region: LabRegion) -> None:
    region = lab_region
    assert region.ceph is not None and region.lab is not None
    node = region.nodes[1]
    assert node.ip != str(region.lab.host_address.ip)  # never the host's (Ceph's) address
    fencer = Fencer(CephAccess(region.ceph.conf, FENCE_USER,
                               key_from_keyring(region.ceph.fence_keyring, FENCE_USER)))
    name = f"fence-{uuid.uuid4().hex[:6]}"
    region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
               "--node", node.name, "--wait")
    addr = whole_ip(node.ip)
    try:
        vm = region.vm(name)
        assert vm["state"] == "running"
        try:
            fencer.add(addr, expire_s=600)
            fenced = wait_for(lambda: nodes(region)[node.name]["self_fenced_at"],
                              FENCE_TIMEOUT_S, "the node to fence itself", interval=2.0)
            status, out = region.on_node(node.name,
                                         f"virsh -c qemu:///system domstate {vm['id']}")
            assert (status, out.strip()) == (0, "shut off")  # destroyed, still defined
            wait_for(lambda: region.vm(name)["state"] == "stopped", FENCE_TIMEOUT_S,
                     "the VM to be shown stopped", interval=2.0)
            _, journal = region.on_node(node.name, "journalctl -u vauban-agent --no-pager")
            assert "its Ceph client is blocklisted" in journal
            assert "destroying every VM of this node (disks kept)" in journal
        finally:
            fencer.remove(addr)
        shown = region.cli("node", "show", node.name)
        assert f"self-fenced at {fenced}" in shown
        region.cli("node", "clear-fence", node.name)
        wait_for(lambda: nodes(region)[node.name]["self_fenced_at"] is None,
                 NODE_UP_TIMEOUT_S, "the agent to lift its fence", interval=2.0)
        assert region.vm(name)["state"] == "stopped"  # nothing restarted by the clearing
        region.cli("vm", "start", name, "--wait")
        assert region.vm(name)["state"] == "running"
    finally:  # the shared region as it was: no fence left, the VM gone
        if nodes(region)[node.name]["self_fenced_at"] is not None:
            region.run_cli("node", "clear-fence", node.name)
        region.cli("vm", "delete", name, "--wait")
