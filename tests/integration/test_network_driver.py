"""LinuxNetworkDriver against real kernel objects: nodes are network namespaces.

The underlay is a bridge in the root namespace (no address) with one veth per
node namespace; every address lives inside namespaces this test made (198.18.0.x
on the nodes' eth0, 10.0.0.x in the "VM" port namespaces), and all traffic stays
between them.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from agent.drivers.network.base import (
    IFNAMSIZ,
    NetworkError,
    bridge_name,
    vlan_name,
    vxlan_name,
)
from agent.drivers.network.linux import LinuxNetworkDriver
from agent.drivers.registry import load_network
from agent.networks import NetworkKeeper
from agent.protocol import DesiredNetwork, NetworkKind
from tests.integration.netns_helpers import lookup, wait_until

pytestmark = pytest.mark.integration

NODE_IPS = ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
ZERO_MAC = "00:00:00:00:00:00"
ECHO_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4)
while True:
    c, _ = s.accept()
    c.sendall(c.recv(64).upper())
    c.close()
"""
ECHO_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
c.sendall(b"hello")
print(c.recv(64).decode())
"""


@dataclass
class Underlay:
    """Three nodes (namespaces) on one root-namespace bridge, plus what tests add."""

    tag: str
    nodes: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)  # every namespace made, to remove
    root_links: list[str] = field(default_factory=list)  # root-namespace devices, to remove
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: int = 0

    def driver(self, node: int) -> LinuxNetworkDriver:
        return LinuxNetworkDriver(netns=self.nodes[node])

    def add_port(self, node: int, network_id: str, address: str, mtu: int) -> str:
        """A "VM": a namespace whose eth0 is a veth plugged into the network's bridge."""
        self.ports += 1
        port_ns = f"vbt-{self.tag}-p{self.ports}"
        netns.create(port_ns)
        self.namespaces.append(port_ns)
        with IPRoute(netns=self.nodes[node]) as ipr:
            tap = f"vbt{self.tag}p{self.ports}"
            ipr.link("add", ifname=tap, kind="veth",
                     peer={"ifname": "eth0", "net_ns_fd": port_ns})
            ipr.link("set", index=lookup(ipr, tap), mtu=mtu, state="up",
                     master=lookup(ipr, bridge_name(network_id)))
        with IPRoute(netns=port_ns) as ipr:
            eth0 = lookup(ipr, "eth0")
            ipr.addr("add", index=eth0, address=address.split("/")[0],
                     prefixlen=int(address.split("/")[1]))
            ipr.link("set", index=eth0, mtu=mtu, state="up")
            ipr.link("set", index=lookup(ipr, "lo"), state="up")
        return port_ns

    def ping(self, ns: str, address: str) -> bool:
        return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", address],
                              capture_output=True, timeout=10).returncode == 0

    def serve_echo(self, ns: str, address: str, port: int) -> None:
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", ECHO_SERVER, address, str(port)]))

    def echo(self, ns: str, address: str, port: int) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", ECHO_CLIENT, address, str(port)],
            capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else ""

    def links(self, node: int) -> dict[str, Any]:
        with IPRoute(netns=self.nodes[node]) as ipr:
            return {link.get("IFLA_IFNAME"): link for link in ipr.get_links()}

    def fdb_peers(self, node: int, ifname: str, learned: bool = False) -> list[str]:
        """Destinations of the all-zeros entries (or, with `learned`, of per-MAC ones)."""
        with IPRoute(netns=self.nodes[node]) as ipr:
            index = lookup(ipr, ifname)
            return sorted(e.get("NDA_DST") for e in ipr.fdb("dump", ifindex=index)
                          if e["ifindex"] == index and e.get("NDA_DST")
                          and (e.get("NDA_LLADDR") != ZERO_MAC) == learned)

    def teardown(self) -> None:
        for proc in self.procs:  # only the processes this test started, by their PID
            proc.kill()
            proc.wait(timeout=10)
        with IPRoute() as ipr:
            for name in self.root_links:
                for index in ipr.link_lookup(ifname=name):
                    try:
                        ipr.link("del", index=index)
                    except NetlinkError:
                        pass
        for name in self.namespaces:
            try:
                netns.remove(name)
            except OSError:
                pass


@pytest.fixture
def underlay() -> Iterator[Underlay]:
    u = Underlay(tag=secrets.token_hex(3))
    try:
        with IPRoute() as ipr:
            bridge = f"vbt{u.tag}u"
            ipr.link("add", ifname=bridge, kind="bridge", br_stp_state=0, br_forward_delay=0)
            u.root_links.append(bridge)
            ipr.link("set", index=lookup(ipr, bridge), state="up")
            for i, ip in enumerate(NODE_IPS, start=1):
                node = f"vbt-{u.tag}-n{i}"
                netns.create(node)
                u.namespaces.append(node)
                u.nodes.append(node)
                host = f"vbt{u.tag}h{i}"
                ipr.link("add", ifname=host, kind="veth",
                         peer={"ifname": "eth0", "net_ns_fd": node})
                u.root_links.append(host)
                ipr.link("set", index=lookup(ipr, host), master=lookup(ipr, bridge),
                         state="up")
                with IPRoute(netns=node) as nipr:
                    eth0 = lookup(nipr, "eth0")
                    nipr.addr("add", index=eth0, address=ip, prefixlen=24)
                    nipr.link("set", index=eth0, state="up")
                    nipr.link("set", index=lookup(nipr, "lo"), state="up")
        yield u
    finally:
        u.teardown()


def tenant(network_id: str, vni: int, peers: list[str], mtu: int = 1450) -> DesiredNetwork:
    return DesiredNetwork(id=network_id, name=network_id, kind=NetworkKind.TENANT, mtu=mtu,
                          vni=vni, peers=peers)


def others(me: int, among: tuple[int, ...] = (0, 1, 2)) -> list[str]:
    return [NODE_IPS[i] for i in among if i != me]


def test_names_fit_ifnamsiz_and_are_deterministic() -> None:
    long_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    for name in (bridge_name(long_id), vxlan_name(long_id), vlan_name(long_id)):
        assert len(name) <= IFNAMSIZ
    assert bridge_name(long_id) == bridge_name(long_id) != bridge_name(long_id + "x")
    assert isinstance(load_network("linux", netns="x"), LinuxNetworkDriver)
    with pytest.raises(ValueError, match="linux"):
        load_network("nope")


def test_tenant_network_spans_nodes_and_vnis_are_isolated(underlay: Underlay) -> None:
    a, b = f"neta-{underlay.tag}", f"netb-{underlay.tag}"
    for node in (0, 1):
        driver = underlay.driver(node)
        driver.ensure_network(tenant(a, 1001, others(node, (0, 1))), NODE_IPS[node])
        driver.ensure_network(tenant(b, 1002, others(node, (0, 1))), NODE_IPS[node])
        assert driver.list_networks() == sorted([a, b])
        links = underlay.links(node)
        for network_id in (a, b):
            assert links[bridge_name(network_id)].get("IFLA_MTU") == 1450
            assert links[vxlan_name(network_id)].get("IFLA_MTU") == 1450
        assert underlay.fdb_peers(node, vxlan_name(a)) == others(node, (0, 1))
        vxlan = links[vxlan_name(a)].get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
        assert vxlan.get("IFLA_VXLAN_ID") == 1001
        assert vxlan.get("IFLA_VXLAN_LOCAL") == NODE_IPS[node]
        assert vxlan.get("IFLA_VXLAN_PORT") == 4789
        assert vxlan.get("IFLA_VXLAN_LEARNING") and not vxlan.get("IFLA_VXLAN_GROUP")
    # Overlapping tenant ranges: 10.0.0.1 exists on both networks.
    a1 = underlay.add_port(0, a, "10.0.0.1/24", 1450)
    a2 = underlay.add_port(1, a, "10.0.0.2/24", 1450)
    b1 = underlay.add_port(0, b, "10.0.0.1/24", 1450)
    b2 = underlay.add_port(1, b, "10.0.0.4/24", 1450)

    assert wait_until(lambda: underlay.ping(a1, "10.0.0.2"))
    assert wait_until(lambda: underlay.ping(b1, "10.0.0.4"))
    underlay.serve_echo(a2, "10.0.0.2", 8080)
    assert wait_until(lambda: underlay.echo(a1, "10.0.0.2", 8080) == "HELLO")
    # Network b never reaches network a, nor the other way round.
    assert not underlay.ping(b1, "10.0.0.2")
    assert not underlay.ping(a1, "10.0.0.4")
    assert not underlay.ping(b2, "10.0.0.2")
    # Ensuring again changes nothing and traffic still flows.
    underlay.driver(0).ensure_network(tenant(a, 1001, others(0, (0, 1))), NODE_IPS[0])
    assert underlay.fdb_peers(0, vxlan_name(a)) == [NODE_IPS[1]]
    assert underlay.ping(a1, "10.0.0.2")


def _kernel_has_vlan(underlay: Underlay) -> bool:
    with IPRoute(netns=underlay.nodes[0]) as ipr:
        probe = f"vbt{underlay.tag}v"
        try:
            ipr.link("add", ifname=probe, kind="vlan", link=lookup(ipr, "eth0"), vlan_id=4094)
        except NetlinkError:
            return False
        ipr.link("del", index=lookup(ipr, probe))
        return True


def test_provider_network_bridges_ports_across_nodes(underlay: Underlay) -> None:
    if not _kernel_has_vlan(underlay):
        pytest.skip("this kernel cannot make VLAN devices (CONFIG_VLAN_8021Q)")
    net = DesiredNetwork(id=f"prov-{underlay.tag}", name="prov", kind=NetworkKind.PROVIDER,
                         mtu=1500, vlan=100, physical="eth0")
    for node in (0, 1):
        underlay.driver(node).ensure_network(net, None)
        links = underlay.links(node)
        vlan = links[vlan_name(net.id)]
        assert vlan.get("IFLA_MASTER") == links[bridge_name(net.id)]["index"]
        assert vlan.get("IFLA_LINKINFO").get("IFLA_INFO_DATA").get("IFLA_VLAN_ID") == 100
        assert vlan.get("IFLA_LINK") == links["eth0"]["index"]
        assert vlan.get("IFLA_MTU") == links[bridge_name(net.id)].get("IFLA_MTU") == 1500
    p1 = underlay.add_port(0, net.id, "10.0.0.1/24", 1500)
    p2 = underlay.add_port(1, net.id, "10.0.0.2/24", 1500)
    assert wait_until(lambda: underlay.ping(p1, "10.0.0.2"))
    underlay.serve_echo(p2, "10.0.0.2", 8081)
    assert wait_until(lambda: underlay.echo(p1, "10.0.0.2", 8081) == "HELLO")


def test_reconcile_recreates_removes_and_spares_foreign_devices(underlay: Underlay) -> None:
    keep, drop = f"keep-{underlay.tag}", f"drop-{underlay.tag}"
    driver = underlay.driver(0)
    with IPRoute(netns=underlay.nodes[0]) as ipr:
        # Neither carries both marks: one has our prefix, the other our alias.
        ipr.link("add", ifname="vbr-handmade", kind="bridge")
        ipr.link("add", ifname="handbr0", kind="bridge")
        ipr.link("set", index=lookup(ipr, "handbr0"), ifalias=f"vauban:{drop}")
    nets = [tenant(keep, 1001, [NODE_IPS[1]]), tenant(drop, 1002, [NODE_IPS[1]])]
    driver.reconcile(nets, NODE_IPS[0])
    assert driver.list_networks() == sorted([keep, drop])

    with IPRoute(netns=underlay.nodes[0]) as ipr:  # an operator deletes a device by hand
        ipr.link("del", index=lookup(ipr, vxlan_name(keep)))
    driver.reconcile(nets[:1], NODE_IPS[0])
    links = underlay.links(0)
    assert driver.list_networks() == [keep]
    assert vxlan_name(keep) in links
    assert links[vxlan_name(keep)].get("IFLA_MASTER") == links[bridge_name(keep)]["index"]
    assert underlay.fdb_peers(0, vxlan_name(keep)) == [NODE_IPS[1]]
    assert bridge_name(drop) not in links and vxlan_name(drop) not in links
    assert "vbr-handmade" in links and "handbr0" in links

    driver.reconcile([], NODE_IPS[0])
    links = underlay.links(0)
    assert driver.list_networks() == []
    assert not any(name.startswith(("vbr-", "vvx-")) for name in links if name != "vbr-handmade")
    assert "vbr-handmade" in links and "handbr0" in links
    driver.remove_network("never-existed")  # a no-op


def test_node_leaving_drops_its_forwarding_entries(underlay: Underlay) -> None:
    net_id = f"leave-{underlay.tag}"
    for node in range(3):
        underlay.driver(node).reconcile([tenant(net_id, 1003, others(node))], NODE_IPS[node])
    assert underlay.fdb_peers(0, vxlan_name(net_id)) == [NODE_IPS[1], NODE_IPS[2]]
    p1 = underlay.add_port(0, net_id, "10.0.0.1/24", 1450)
    underlay.add_port(2, net_id, "10.0.0.3/24", 1450)
    assert wait_until(lambda: underlay.ping(p1, "10.0.0.3"))

    underlay.driver(2).reconcile([], NODE_IPS[2])  # node 3 leaves the network...
    for node in (0, 1):  # ...and the controller tells the others
        underlay.driver(node).reconcile([tenant(net_id, 1003, others(node, (0, 1)))],
                                        NODE_IPS[node])
    assert underlay.fdb_peers(0, vxlan_name(net_id)) == [NODE_IPS[1]]
    assert underlay.fdb_peers(1, vxlan_name(net_id)) == [NODE_IPS[0]]
    assert NODE_IPS[2] not in underlay.fdb_peers(0, vxlan_name(net_id), learned=True)
    assert not underlay.ping(p1, "10.0.0.3")


def test_too_large_mtu_is_refused_and_leaves_nothing(underlay: Underlay) -> None:
    driver = underlay.driver(0)
    net = tenant(f"big-{underlay.tag}", 1004, [NODE_IPS[1]], mtu=1451)
    with pytest.raises(NetworkError, match=r"MTU 1451 is too large.*at most 1450"):
        driver.ensure_network(net, NODE_IPS[0])
    links = underlay.links(0)
    assert bridge_name(net.id) not in links and vxlan_name(net.id) not in links
    assert driver.list_networks() == []

    with pytest.raises(NetworkError, match="no interface"):
        driver.ensure_network(tenant("x", 1005, [], mtu=1400), "198.18.0.99")
    assert driver.list_networks() == []

    # A failure after the bridge was made removes the bridge again.
    squatted = tenant(f"sq-{underlay.tag}", 1006, [NODE_IPS[1]])
    with IPRoute(netns=underlay.nodes[0]) as ipr:
        ipr.link("add", ifname=vxlan_name(squatted.id), kind="bridge")
    with pytest.raises(NetworkError, match="not made by this driver"):
        driver.ensure_network(squatted, NODE_IPS[0])
    links = underlay.links(0)
    assert bridge_name(squatted.id) not in links and vxlan_name(squatted.id) in links


def test_a_vni_taken_by_another_device_is_reported_with_its_cause(
        underlay: Underlay, tmp_path: Path) -> None:
    """Regression: the VM failed with "Cannot get interface MTU on 'vbr-…'" and nothing
    said that the network's VXLAN device could not be made."""
    foreign = f"vxo{underlay.tag}"
    with IPRoute(netns=underlay.nodes[0]) as ipr:  # someone else's VXLAN, same VNI and port
        ipr.link("add", ifname=foreign, kind="vxlan", vxlan_id=1042, vxlan_port=4789,
                 vxlan_local=NODE_IPS[0])
    net_id = f"netv-{underlay.tag}"
    keeper = NetworkKeeper(underlay.driver(0), NODE_IPS[0], tmp_path / "networks.json")
    assert keeper.apply([tenant(net_id, 1042, others(0))]) is False
    [failure] = keeper.ledger.report()
    assert (failure.kind, failure.object_id, failure.action) == ("network", net_id, "ensure")
    assert f"VNI 1042 is already used by device {foreign}" in failure.message
    assert failure.final and not failure.retryable
    assert keeper.network_blocker(net_id) == failure.message
    links = underlay.links(0)  # nothing half-made is left; the foreign device is untouched
    assert bridge_name(net_id) not in links and vxlan_name(net_id) not in links
    assert foreign in links
