"""SecurityGroupFirewall against real kernel objects.

A node namespace holds a bridge (named as `bridge_name` would) with three veths whose
node-side ends stand in for VM taps (named as `tap_name` would): VM1 and VM2 in group
"web", a client in no group. Every address (10.99.0.0/24) lives in namespaces this
test made; all traffic stays between them.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from agent.drivers.network.base import bridge_name
from agent.drivers.network.linux import LinuxNetworkDriver
from agent.drivers.network.secgroups import (
    TABLE,
    PortFilter,
    SecurityGroupFirewall,
)
from agent.networks import NetworkKeeper, tap_name
from agent.protocol import (
    CloudInitSeed,
    DesiredPort,
    DesiredSecurityGroup,
    DesiredState,
    DesiredVm,
    ImageRef,
    PowerState,
    SecurityRule,
)
from tests.integration.netns_helpers import lookup, wait_until

pytestmark = pytest.mark.integration

VM1, VM2, CLIENT = "10.99.0.1", "10.99.0.2", "10.99.0.3"
SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
while True:
    c, _ = s.accept()
    c.sendall(c.recv(64).upper())
    c.close()
"""
CLIENT_CODE = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
c.sendall(b"hello")
print(c.recv(64).decode())
"""


def _capability() -> str | None:
    """Why bridged traffic cannot be filtered here, or None if it can."""
    try:
        import nftables  # noqa: F401
    except ImportError:
        return "python3-nftables (libnftables) is not installed"
    if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        return "br_netfilter is not available (no /proc/sys/net/bridge)"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "cannot create network namespaces"
    return None


@dataclass
class Lab:
    tag: str
    node: str = ""
    vms: dict[str, str] = field(default_factory=dict)  # address -> namespace
    taps: dict[str, str] = field(default_factory=dict)  # address -> tap name
    macs: dict[str, str] = field(default_factory=dict)  # address -> its NIC's MAC
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def add_vm(self, label: str, address: str) -> None:
        ns = f"vsg-{self.tag}-{label}"
        netns.create(ns)
        self.namespaces.append(ns)
        tap = tap_name(f"port-{self.tag}-{label}")
        with IPRoute(netns=self.node) as ipr:
            ipr.link("add", ifname=tap, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
            ipr.link("set", index=lookup(ipr, tap), state="up",
                     master=lookup(ipr, bridge_name(f"net-{self.tag}")))
        mac = f"52:54:00:99:00:{int(address.rsplit('.', 1)[1]):02x}"
        with IPRoute(netns=ns) as ipr:
            eth0 = lookup(ipr, "eth0")
            ipr.link("set", index=eth0, address=mac)
            ipr.addr("add", index=eth0, address=address, prefixlen=24)
            ipr.link("set", index=eth0, state="up")
            ipr.link("set", index=lookup(ipr, "lo"), state="up")
        self.vms[address] = ns
        self.taps[address] = tap
        self.macs[address] = mac

    def ping(self, src: str, dst: str) -> bool:
        return subprocess.run(
            ["ip", "netns", "exec", self.vms[src], "ping", "-c", "1", "-W", "1", dst],
            capture_output=True, timeout=10).returncode == 0

    def serve(self, at: str, port: int) -> None:
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", self.vms[at], sys.executable, "-c", SERVER, at, str(port)]))

    def connect(self, src: str, dst: str, port: int) -> bool:
        done = subprocess.run(
            ["ip", "netns", "exec", self.vms[src], sys.executable, "-c", CLIENT_CODE, dst,
             str(port)], capture_output=True, text=True, timeout=10)
        return done.returncode == 0 and done.stdout.strip() == "HELLO"

    def teardown(self) -> None:
        for proc in self.procs:  # only the processes this test started, by their PID
            proc.kill()
            proc.wait(timeout=10)
        for name in reversed(self.namespaces):  # veths and the bridge go with them
            try:
                netns.remove(name)
            except OSError:
                pass


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = _capability()
    if reason:
        pytest.skip(reason)
    lab = Lab(tag=secrets.token_hex(3))
    try:
        lab.node = f"vsg-{lab.tag}-node"
        netns.create(lab.node)
        lab.namespaces.append(lab.node)
        with IPRoute(netns=lab.node) as ipr:
            br = bridge_name(f"net-{lab.tag}")
            ipr.link("add", ifname=br, kind="bridge", br_stp_state=0, br_forward_delay=0)
            ipr.link("set", index=lookup(ipr, br), state="up")
            ipr.link("set", index=lookup(ipr, "lo"), state="up")
        lab.add_vm("vm1", VM1)
        lab.add_vm("vm2", VM2)
        lab.add_vm("cl", CLIENT)
        yield lab
    finally:
        lab.teardown()


def web_group(*rules: SecurityRule) -> dict[str, DesiredSecurityGroup]:
    return {"web": DesiredSecurityGroup(id="web", name="web", rules=list(rules),
                                        member_addresses=[f"{VM1}/24", f"{VM2}/24"])}


HTTP = SecurityRule(direction="ingress", protocol="tcp", port_min=8080, port_max=8080,
                    remote_cidr="0.0.0.0/0")
SAME_GROUP = SecurityRule(direction="ingress", remote_group="web")


def test_security_groups_filter_bridged_traffic_statefully(lab: Lab) -> None:
    fw = SecurityGroupFirewall(netns=lab.node)
    if not fw.bridge_netfilter_enabled():
        pytest.skip("net.bridge.bridge-nf-call-iptables/ip6tables is not 1 in a new netns")
    lab.serve(VM1, 8080)
    lab.serve(VM1, 22)
    lab.serve(CLIENT, 9000)
    # Unfiltered: everything reachable (also waits for the servers to listen).
    assert wait_until(lambda: lab.connect(CLIENT, VM1, 8080) and lab.connect(CLIENT, VM1, 22)
                      and lab.connect(VM1, CLIENT, 9000))
    assert lab.ping(CLIENT, VM1)

    ports = [PortFilter(lab.taps[VM1], lab.macs[VM1], (f"{VM1}/24",), ("web",)),
             PortFilter(lab.taps[VM2], lab.macs[VM2], (f"{VM2}/24",), ("web",)),
             PortFilter(lab.taps[CLIENT], lab.macs[CLIENT], (f"{CLIENT}/24",), ())]
    fw.apply(ports, web_group(HTTP, SAME_GROUP))
    tables = {(o["table"]["family"], o["table"]["name"])
              for o in fw.ruleset()["nftables"] if "table" in o}
    assert tables == {("bridge", TABLE), ("inet", TABLE)}

    assert lab.connect(CLIENT, VM1, 8080)
    assert not lab.connect(CLIENT, VM1, 22)
    assert not lab.ping(CLIENT, VM1)
    assert lab.ping(VM2, VM1)  # same group
    assert lab.connect(VM2, VM1, 22)
    assert lab.connect(VM1, CLIENT, 9000)  # outbound + stateful return traffic
    assert lab.ping(VM1, CLIENT)
    assert lab.ping(CLIENT, VM1) is False

    # Rule removed: new connections fail at once, nothing restarted.
    fw.apply(ports, web_group(SAME_GROUP))
    assert not lab.connect(CLIENT, VM1, 8080)
    assert lab.ping(VM2, VM1)

    # A failing apply (a tap name nft would reject is caught before; here a bad batch
    # from a bogus group address) leaves the previous ruleset in place.
    bad = {"web": DesiredSecurityGroup(id="web", name="web", rules=[HTTP, SAME_GROUP],
                                       member_addresses=["not-an-address"])}
    with pytest.raises(Exception, match="bad member address"):
        fw.apply(ports, bad)
    assert not lab.connect(CLIENT, VM1, 8080)
    assert lab.ping(VM2, VM1)

    fw.remove()
    assert fw.ruleset()["nftables"] == []
    assert lab.connect(CLIENT, VM1, 8080) and lab.connect(CLIENT, VM1, 22)
    assert lab.ping(CLIENT, VM1)
    fw.remove()  # idempotent


# receives UDP on port 68 (a DHCP client's) and prints each sender's port, until one
# from port 1067 (the control, sent last) arrives
DHCP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 68))
print("listening", flush=True)
while True:
    _data, (_addr, port) = s.recvfrom(64)
    print(port, flush=True)
    if port == 1067:
        break
"""
SEND_FROM = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.sendto(b"offer", (sys.argv[3], 68))
"""


def test_ports_without_groups_are_not_filtered_but_may_not_answer_dhcp(lab: Lab) -> None:
    fw = SecurityGroupFirewall(netns=lab.node)
    if not fw.bridge_netfilter_enabled():
        pytest.skip("net.bridge.bridge-nf-call-iptables/ip6tables is not 1 in a new netns")
    lab.serve(VM1, 22)
    fw.apply([PortFilter(lab.taps[VM1], lab.macs[VM1], (f"{VM1}/24",), ()),
              PortFilter(lab.taps[CLIENT], lab.macs[CLIENT], (f"{CLIENT}/24",), ())],
             web_group(HTTP))
    tables = {(o["table"]["family"], o["table"]["name"])
              for o in fw.ruleset()["nftables"] if "table" in o}
    assert tables == {("bridge", TABLE)}  # the guard only: nothing is filtered
    assert wait_until(lambda: lab.connect(CLIENT, VM1, 22))
    assert lab.ping(CLIENT, VM1)

    receiver = subprocess.Popen(["ip", "netns", "exec", lab.vms[VM1], sys.executable, "-c",
                                 DHCP_CLIENT], stdout=subprocess.PIPE, text=True)
    lab.procs.append(receiver)  # type: ignore[arg-type]
    assert receiver.stdout is not None and receiver.stdout.readline() == "listening\n"
    for port in (67, 1067):  # a forged DHCP answer from the guest, then the control
        subprocess.run(["ip", "netns", "exec", lab.vms[CLIENT], sys.executable, "-c",
                        SEND_FROM, CLIENT, str(port), VM1], check=True, timeout=10)
    with receiver.stdout:
        heard = [line.strip() for line in receiver.stdout]
    assert receiver.wait(timeout=10) == 0
    assert heard == ["1067"]


def test_a_port_may_not_send_from_an_address_or_mac_not_its_own(lab: Lab) -> None:
    fw = SecurityGroupFirewall(netns=lab.node)
    fw.apply([PortFilter(lab.taps[a], lab.macs[a], (f"{a}/24",), ()) for a in (VM1, CLIENT)],
             {})
    assert wait_until(lambda: lab.ping(CLIENT, VM1))  # its own address and MAC pass
    forged = "10.99.0.77"  # an address the client's port was not given
    ip("-n", lab.vms[CLIENT], "addr", "add", f"{forged}/24", "dev", "eth0")
    spoofed = subprocess.run(
        ["ip", "netns", "exec", lab.vms[CLIENT], "ping", "-c", "1", "-W", "1", "-I", forged,
         VM1], capture_output=True, timeout=10)
    assert spoofed.returncode != 0, "a ping from a forged source address got an answer"
    ip("-n", lab.vms[CLIENT], "addr", "del", f"{forged}/24", "dev", "eth0")
    ip("-n", lab.vms[CLIENT], "link", "set", "eth0", "address", "52:54:00:99:00:ee")
    assert not lab.ping(CLIENT, VM1), "a frame from a forged MAC passed"
    ip("-n", lab.vms[CLIENT], "link", "set", "eth0", "address", lab.macs[CLIENT])
    assert wait_until(lambda: lab.ping(CLIENT, VM1))


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _set_bridge_netfilter(node: str, on: bool) -> None:
    """Set br_netfilter's sysctls inside the test's node namespace (they are per namespace)."""
    for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
        subprocess.run(["ip", "netns", "exec", node, "sysctl", "-qw",
                        f"net.bridge.{name}={int(on)}"], check=True, capture_output=True)


def test_security_groups_that_cannot_be_applied_isolate_the_ports(lab: Lab,
                                                                   tmp_path: Path) -> None:
    """Regression: a failed apply was logged and kept in memory, the VMs ran unfiltered."""
    fw = SecurityGroupFirewall(netns=lab.node)
    if not fw.bridge_netfilter_enabled():
        pytest.skip("net.bridge.bridge-nf-call-iptables/ip6tables is not 1 in a new netns")
    lab.serve(VM1, 22)
    assert wait_until(lambda: lab.connect(CLIENT, VM1, 22))
    group = web_group(SAME_GROUP)["web"]
    desired = DesiredState(node_id="n", generation=1, security_groups=[group], vms=[
        _vm(f"port-{lab.tag}-vm1", VM1, ["web"], lab.macs[VM1]),
        _vm(f"port-{lab.tag}-vm2", VM2, ["web"], lab.macs[VM2]),
        _vm(f"port-{lab.tag}-cl", CLIENT, [], lab.macs[CLIENT])])
    keeper = NetworkKeeper(LinuxNetworkDriver(netns=lab.node), None, tmp_path / "n.json", fw)
    _set_bridge_netfilter(lab.node, False)  # the inet rules would never see bridged traffic

    assert keeper.apply_security_groups(desired) is False
    assert not lab.ping(CLIENT, VM1) and not lab.connect(CLIENT, VM1, 22)
    assert not lab.ping(VM2, VM1)  # isolated: not even its own group reaches it
    [failure] = keeper.ledger.report()
    assert (failure.kind, failure.object_id) == ("firewall", "security-groups")
    assert "load br_netfilter" in failure.message and "isolated" in failure.message
    assert keeper.filters_blocker() == failure.message

    _set_bridge_netfilter(lab.node, True)
    desired = desired.model_copy(update={"generation": 2, "security_groups": [
        group.model_copy(update={"name": "web2"})]})  # a changed request is tried afresh
    assert keeper.apply_security_groups(desired) is True
    assert keeper.ledger.report() == [] and keeper.filters_blocker() is None
    # same group: reachable again once ARP, dropped while isolated, resolves anew
    assert wait_until(lambda: lab.ping(VM2, VM1)) and lab.connect(VM2, VM1, 22)
    assert not lab.connect(CLIENT, VM1, 22)  # filtered, as the rules say


def _vm(port_id: str, address: str, groups: list[str], mac: str) -> DesiredVm:
    return DesiredVm(
        id=port_id, name=port_id, vcpus=1, memory_mib=64, power=PowerState.RUNNING,
        power_seq=1, seed=CloudInitSeed(instance_id=port_id, hostname="h"),
        image=ImageRef(id="i", name="i", disk_format="raw", size_bytes=0, sha256="0" * 64),
        ports=[DesiredPort(id=port_id, network_id="net", mac=mac,
                           addresses=[f"{address}/24"], mtu=1500, security_groups=groups)])
