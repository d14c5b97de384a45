"""A region of three lab nodes with real agents, checked as an operator would: VMs spread
over nodes talk across the VXLAN overlay and no other network sees it, a VM boots from
an RBD clone of the shared Ceph cluster, a node whose agent stops is shown down with its
VMs unknown and converges when it is back, and a removed node is refused.

The node removal runs last: it takes a node out of the shared region, and joins it
again at the end.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import rbd

from agent.drivers.storage.rbd.names import image_name, root_disk_name
from tests.e2e.region import wait_for
from tests.lab.region import CEPH_POOL, DOWN_AFTER_S, NODE_UP_TIMEOUT_S, LabRegion

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 300  # TCG on a loaded machine
AGENT_DATA = "/var/lib/vauban/agent"


class Made:
    """What a test made in the region, deleted at its end (VMs first, then security groups
    and networks)."""

    def __init__(self, region: LabRegion) -> None:
        self.region = region
        self.vms: list[str] = []
        self.networks: list[str] = []
        self.security_groups: list[str] = []

    def vm(self, name: str, *args: str) -> dict[str, Any]:
        self.vms.append(name)
        self.region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1",
                        "--memory", "256", *args, "--wait")
        return self.region.vm(name)

    def network(self, name: str, subnet: str) -> dict[str, Any]:
        self.networks.append(name)
        self.region.cli("network", "create", name, "--kind", "tenant", "--subnet", subnet)
        shown = self.region.cli("network", "show", name, "-o", "json")
        return json.loads(shown)  # type: ignore[no-any-return]

    def security_group(self, name: str, *rule: str) -> None:
        """A security group with one rule (the `security-group rule add` options)."""
        self.security_groups.append(name)
        self.region.cli("security-group", "create", name)
        if rule:
            self.region.cli("security-group", "rule", "add", name, *rule)

    def delete_all(self) -> None:
        for name in self.vms:
            if self.region.run_cli("vm", "show", name).returncode == 0:
                self.region.cli("vm", "delete", name, "--wait")
        for name in self.security_groups:
            if self.region.run_cli("security-group", "show", name).returncode == 0:
                self.region.cli("security-group", "delete", name)
        for name in self.networks:
            if self.region.run_cli("network", "show", name).returncode == 0:
                self.region.cli("network", "delete", name)


def _tag() -> str:
    return uuid.uuid4().hex[:6]


def prober(tmp_path: Path, target: str) -> Path:
    """User-data that pings `target` once a second for as long as the guest runs, printing
    each change on the console: `probe <target> answered by <MAC>` or `probe <target>
    silent`. It runs in the background (the seed's addresses are configured after
    user-data) and starts once eth0 has its address."""
    script = tmp_path / f"probe-{target}"
    script.write_text(f"""#!/bin/sh
(
until ip -4 addr show dev eth0 | grep -q inet; do sleep 1; done
last=
while :; do
    if ping -c 1 -W 1 {target} >/dev/null 2>&1; then
        now="answered by $(awk '$1 == "{target}" {{print $4}}' /proc/net/arp)"
    else
        now=silent
    fi
    [ "$now" != "$last" ] && echo "probe {target} $now"
    last=$now
    sleep 1
done
) > /dev/console 2>&1 &
""")
    return script


def probe_lines(region: LabRegion, vm: dict[str, Any]) -> list[str]:
    # from "probe " on: the guest's serial shell may have printed its prompt on that line
    return [line[line.index("probe "):].strip() for line in region.console(vm).splitlines()
            if "probe " in line]


def test_vms_on_different_nodes_talk_over_the_overlay_and_no_other_network_sees_it(
        lab_region: LabRegion, made: Made, tmp_path: Path) -> None:
    region, tag = lab_region, _tag()
    first = region.nodes[0].name
    blue, red = made.network(f"blue-{tag}", "10.77.0.0/24"), \
        made.network(f"red-{tag}", "10.77.0.0/24")
    assert blue["vni"] != red["vni"]
    a = made.vm(f"a-{tag}", "--network", f"{blue['name']}:10.77.0.10", "--node", first,
                "--user-data", str(prober(tmp_path, "10.77.0.11")))
    b = made.vm(f"b-{tag}", "--network", f"{blue['name']}:10.77.0.11",
                "--user-data", str(prober(tmp_path, "10.77.0.10")))
    assert a["node_name"] == first
    assert b["node_name"] != first  # the scheduler spread it: the most free memory
    # the other tenant's VM has A's address, on B's node: if the networks leaked, B's
    # probe would find it next door, and its own probe would find B
    c = made.vm(f"c-{tag}", "--network", f"{red['name']}:10.77.0.10", "--node",
                b["node_name"], "--user-data", str(prober(tmp_path, "10.77.0.11")))

    a_mac, b_mac = a["ports"][0]["mac"], b["ports"][0]["mac"]
    wait_for(lambda: f"probe 10.77.0.11 answered by {b_mac}" in probe_lines(region, a),
             BOOT_TIMEOUT, "A to reach B across the overlay")
    wait_for(lambda: f"probe 10.77.0.10 answered by {a_mac}" in probe_lines(region, b),
             BOOT_TIMEOUT, "B to reach A across the overlay")
    wait_for(lambda: "probe 10.77.0.11 silent" in probe_lines(region, c), BOOT_TIMEOUT,
             "C's probe to run")
    assert "vauban-testguest net eth0 10.77.0.10/24" in region.console(c)
    # C has probed for as long as A and B have answered each other: nothing answered it
    assert [line for line in probe_lines(region, c) if "answered" in line] == []
    assert all(line.endswith((a_mac, b_mac)) for line in probe_lines(region, a)
               + probe_lines(region, b) if "answered" in line)
    # each node carries the overlays of the networks it has VMs of, and no other
    assert blue["vni"] in vnis_on(region, first) and red["vni"] not in vnis_on(region, first)
    assert {blue["vni"], red["vni"]} <= vnis_on(region, b["node_name"])


def vnis_on(region: LabRegion, node: str) -> set[int]:
    status, out = region.on_node(node, "ip -d -j link show type vxlan")
    assert status == 0, out
    return {link["linkinfo"]["info_data"]["id"] for link in json.loads(out)}


def test_a_vm_boots_on_a_lab_node_from_an_rbd_clone_of_the_shared_cluster(
        lab_region: LabRegion, made: Made) -> None:
    region, tag = lab_region, _tag()
    node = region.nodes[2].name
    vm = made.vm(f"rbd-{tag}", "--node", node)
    assert vm["state"] == "running" and vm["node_name"] == node
    wait_for(lambda: "VAUBAN-TESTGUEST-READY" in region.console(vm), BOOT_TIMEOUT,
             "the guest to boot")
    status, xml = region.on_node(node, f"virsh -c qemu:///system dumpxml {vm['id']}")
    assert status == 0, xml
    assert f"protocol='rbd' name='{CEPH_POOL}/{root_disk_name(vm['id'])}'" in xml
    assert region.ceph is not None
    with region.ceph.admin() as admin, admin.open_ioctx(CEPH_POOL) as ioctx, \
            rbd.Image(ioctx, root_disk_name(vm["id"]), read_only=True) as root:
        parent = root.parent_info()  # a copy-on-write clone of the image's base snapshot
    assert parent[1] == image_name(vm["image_id"]) and parent[2] == "base"


def test_a_node_whose_agent_stops_is_down_its_vms_unknown_and_all_converge_when_back(
        lab_region: LabRegion, made: Made) -> None:
    region, tag = lab_region, _tag()
    node = region.nodes[2].name
    vm = made.vm(f"down-{tag}", "--node", node)
    assert vm["state"] == "running"

    status, out = region.on_node(node, "systemctl stop vauban-agent")
    assert status == 0, out
    stopped = time.monotonic()
    try:
        assert region.node_state(node) == "up"  # not at once: after the down delay
        wait_for(lambda: region.node_state(node) == "down", DOWN_AFTER_S * 4,
                 "the node to be shown down")
        assert time.monotonic() - stopped > DOWN_AFTER_S / 2
        assert region.vm(vm["name"])["state"] == "unknown"
        listed = json.loads(region.cli("vm", "list", "--json"))
        assert [v["state"] for v in listed if v["name"] == vm["name"]] == ["unknown"]
        # the VM itself runs on: only its agent is away
        status, out = region.on_node(node, f"virsh -c qemu:///system domstate {vm['id']}")
        assert (status, out.strip()) == (0, "running")
    finally:
        region.on_node(node, "systemctl start vauban-agent")
    wait_for(lambda: region.node_state(node) == "up", NODE_UP_TIMEOUT_S, "the node to be up")
    wait_for(lambda: region.vm(vm["name"])["state"] == "running", NODE_UP_TIMEOUT_S,
             "the VM to be shown running again")
    region.cli("vm", "stop", vm["name"], "--wait")  # and managed again
    assert region.vm(vm["name"])["state"] == "stopped"


def test_a_removed_node_is_refused_and_its_agent_says_why(
        lab_region: LabRegion, made: Made) -> None:
    region, tag = lab_region, _tag()
    lab_node = region.nodes[2]
    node = lab_node.name
    vm = made.vm(f"rm-{tag}", "--node", node)
    busy = region.run_cli("node", "remove", node)
    assert busy.returncode == 1
    assert f"node '{node}' still has 1 VM(s) ({vm['name']}); delete or move them first" in \
        busy.stderr
    region.cli("vm", "delete", vm["name"], "--wait")

    assert "removed from the region" in region.cli("node", "remove", node)

    gone = region.run_cli("node", "show", node)
    assert gone.returncode == 1 and f"node '{node}' does not exist" in gone.stderr
    trail = json.loads(region.cli("audit", "list", "--json", "--action", "node.remove"))
    assert [(e["actor"], e["detail"]["name"]) for e in trail][:1] == [("admin", node)]
    # the agent is refused at its next call, says why and stops; systemd leaves it stopped
    wait_for(lambda: region.on_node(node, "systemctl is-active vauban-agent")[1].strip()
             == "failed", DOWN_AFTER_S * 4, "the refused agent to stop")
    _, journal = region.on_node(node, "journalctl -u vauban-agent --no-pager -o cat")
    assert f"the controller refuses this agent: node '{node}'" in journal
    assert "was removed from the region by admin" in journal
    status, out = region.on_node(node, "systemctl show -p ExecMainStatus vauban-agent")
    assert out.strip() == "ExecMainStatus=3"

    # as the refusal says: without its old identity, the machine joins again
    status, out = region.on_node(node, f"rm -f {AGENT_DATA}/node.json {AGENT_DATA}/node.pem "
                                 f"{AGENT_DATA}/node.key {AGENT_DATA}/ca.pem")
    assert status == 0, out
    region.roll_out([lab_node])
    wait_for(lambda: region.node_state(node) == "up", NODE_UP_TIMEOUT_S, "the node back up")
