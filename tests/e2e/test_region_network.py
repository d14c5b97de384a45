"""End to end: a VM on a tenant network gets its fixed address from its seed and answers
pings on it, from a test namespace plugged into the node's bridge for that network."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.drivers.network.base import bridge_name
from tests.e2e.probes import ip, pings, probe_namespace  # noqa: F401  (a fixture)
from tests.e2e.region import E2ERegion, console_has, domain_exists, wait_for

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 180


@pytest.fixture(scope="module")
def region(libvirtd: list[int], testguest_image: Path) -> Iterator[E2ERegion]:
    with E2ERegion.running(testguest_image) as r:
        yield r


def test_vm_on_a_tenant_network_answers_ping_as_its_security_group_allows(
        region: E2ERegion, probe_namespace: tuple[str, str]) -> None:  # noqa: F811
    tag = uuid.uuid4().hex[:6]
    net, name, group = f"net-{tag}", f"nic-{tag}", f"sg-{tag}"
    region.cli("network", "create", net, "--kind", "tenant", "--subnet", "10.77.0.0/24",
               "--gateway", "10.77.0.1")
    network = json.loads(region.cli("network", "show", net, "-o", "json"))
    region.cli("security-group", "create", group)  # no rule: nothing may come in
    region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
               "--network", f"{net}:10.77.0.10", "--security-group", group, "--wait")
    vm = region.vm(name)
    assert [p["addresses"] for p in vm["ports"]] == [["10.77.0.10"]]
    wait_for(lambda: console_has(str(vm["console_log"]), "vauban-testguest net eth0 10.77.0.10/24"),
             BOOT_TIMEOUT, "the guest to configure its address from the seed")

    ns, host_end = probe_namespace
    bridge = bridge_name(network["id"])
    ip("link", "set", host_end, "master", bridge, "up")
    ip("-n", ns, "addr", "add", "10.77.0.200/24", "dev", "eth0")
    ip("-n", ns, "link", "set", "eth0", "up")
    assert not pings(ns, "10.77.0.10", count=3)  # default deny inbound

    # a rule takes effect on the running VM, and its removal too
    region.cli("security-group", "rule", "add", group, "--direction", "ingress",
               "--protocol", "icmp", "--remote-cidr", "10.77.0.200/32")
    wait_for(lambda: pings(ns, "10.77.0.10"), 60, "the VM to answer ping")
    shown = json.loads(region.cli("security-group", "show", group, "-o", "json"))
    rule_id = shown["rules"][0]["id"]
    region.cli("security-group", "rule", "delete", group, rule_id)
    wait_for(lambda: not pings(ns, "10.77.0.10"), 60, "the rule removal to take effect")

    region.cli("vm", "delete", name, "--wait")
    assert not domain_exists(vm["id"])
    region.cli("security-group", "delete", group)
    region.cli("network", "delete", net)
    # the node drops the bridge once no VM of it needs the network
    wait_for(lambda: subprocess.run(["ip", "link", "show", bridge], capture_output=True,
                                    check=False).returncode != 0, 30, "the bridge to go")
