"""Network benchmark: a tenant network (VXLAN overlay) against a direct veth pair.

    .venv/bin/python bench/network.py [--seconds 5] [--repeat 3] [--pings 50] [--json F]

Run as root on a Linux host with `iperf3` and `ping` (apt-get install iperf3). One run
builds, in network namespaces it makes itself (unique names `vbn-<tag>-*`), and
measures three paths between two endpoints:

- overlay: an underlay bridge in the root namespace (no address) with three "nodes"
  (namespaces, eth0 198.18.0.1-3/24, MTU 1500) and two tenant networks built by the
  real `LinuxNetworkDriver(netns=node)` (a bridge plus a VXLAN device with one
  all-zeros forwarding entry per peer, MTU 1450): "pair" (VNI 4243) on nodes 1 and 2
  only, "wide" (VNI 4242) on all three. Each network gets a "VM" on node 1 and one on
  node 2: a namespace whose eth0 (MTU 1450; 10.0.1.1/.2 on pair, 10.0.0.1/.2 on wide)
  is a veth plugged into the network's bridge. Path "overlay" is pair's two VMs;
  "overlay+bystander" is wide's, where node 3 carries the network but has no VM: the
  bytes its eth0 receives show what head-end replication sends to an uninvolved node.
- overlay+firewall: pair's two VMs again, while nodes 1 and 2 apply the real
  `SecurityGroupFirewall` to their VM ports, as an agent does: each port's anti-spoofing
  guard chain (one verdict-map lookup by tap) and a security group admitting the subnet
  (the inet table, connection tracking through br_netfilter). It is applied before each
  of this path's turns and removed after, so the other paths run without it.
- direct (the baseline): two namespaces joined by one veth pair (10.1.0.1 / 10.1.0.2,
  MTU 1450, the same MTU as the VMs' NICs).

Per path, taking turns (direct, overlay, overlay+bystander, overlay+firewall) so that drift of the
shared host falls on all of them:
`--repeat` TCP throughput runs of `--seconds` s each (iperf3, one stream, client in
endpoint 1, server in endpoint 2 started with `iperf3 -s -1` for exactly one test),
median; then `--pings` ICMP echo requests every 10 ms (after one unmeasured ping that
fills the ARP and forwarding tables), median and p99 RTT. Printed: both tables, the
throughput and latency ratios of each overlay path against direct, and the bytes the
bystander node 3 received during each throughput run. Every process is started by this
script and stopped by its PID; every namespace and root-namespace device it made is
removed at the end (also on failure or Ctrl-C). Traffic goes only to addresses inside
these namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.drivers.network.base import bridge_name, vxlan_name  # noqa: E402
from agent.drivers.network.linux import LinuxNetworkDriver  # noqa: E402
from agent.drivers.network.secgroups import PortFilter, SecurityGroupFirewall  # noqa: E402
from agent.protocol import (  # noqa: E402
    DesiredNetwork,
    DesiredSecurityGroup,
    NetworkKind,
    SecurityRule,
)

NODE_IPS = ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
UNDERLAY_MTU = 1500
TENANT_MTU = 1450
VNI = 4242
DIRECT_IPS = ("10.1.0.1", "10.1.0.2")
IPERF_PORT = 5201
READY_TIMEOUT_S = 10.0
RTT_RE = re.compile(r"time=([0-9.]+) ms")


class BenchError(Exception):
    """The benchmark could not run."""


def _lookup(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise BenchError(f"no interface {ifname}")
    return int(found[0])


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


@dataclass
class Lab:
    """Everything this run made, so that it can all be removed by name or PID."""

    tag: str
    namespaces: list[str] = field(default_factory=list)
    root_links: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def new_ns(self, suffix: str) -> str:
        name = f"vbn-{self.tag}-{suffix}"
        netns.create(name)
        self.namespaces.append(name)
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=_lookup(ipr, "lo"), state="up")
        return name

    def teardown(self) -> None:
        for proc in self.procs:  # only processes this run started, by PID
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"cleanup: PID {proc.pid} did not exit", file=sys.stderr)
        with IPRoute() as ipr:
            for name in self.root_links:
                for index in ipr.link_lookup(ifname=name):
                    try:
                        ipr.link("del", index=index)
                    except NetlinkError as e:
                        print(f"cleanup: delete {name}: {e}", file=sys.stderr)
        for name in self.namespaces:
            try:
                netns.remove(name)
            except OSError as e:
                print(f"cleanup: remove namespace {name}: {e}", file=sys.stderr)


def set_addr(ns: str, ifname: str, address: str, mtu: int) -> None:
    with IPRoute(netns=ns) as ipr:
        index = _lookup(ipr, ifname)
        ipr.addr("add", index=index, address=address, prefixlen=24)
        ipr.link("set", index=index, mtu=mtu, state="up")


def build_overlay(lab: Lab) -> tuple[list[str], list[str], list[str]]:
    """Underlay + three nodes; network "wide" on all three, "pair" on nodes 1 and 2 only.

    Returns the VM namespaces (wide VM on node 1, node 2; pair VM on node 1, node 2),
    the network ids and the node namespaces.
    """
    nodes: list[str] = []
    with IPRoute() as ipr:
        bridge = f"vbn{lab.tag}u"
        ipr.link("add", ifname=bridge, kind="bridge", br_stp_state=0, br_forward_delay=0)
        lab.root_links.append(bridge)
        ipr.link("set", index=_lookup(ipr, bridge), mtu=UNDERLAY_MTU, state="up")
        for i, ip in enumerate(NODE_IPS, start=1):
            node = lab.new_ns(f"n{i}")
            nodes.append(node)
            host = f"vbn{lab.tag}h{i}"
            ipr.link("add", ifname=host, kind="veth", peer={"ifname": "eth0", "net_ns_fd": node})
            lab.root_links.append(host)
            ipr.link("set", index=_lookup(ipr, host), master=_lookup(ipr, bridge),
                     mtu=UNDERLAY_MTU, state="up")
            set_addr(node, "eth0", ip, UNDERLAY_MTU)
    wide, pair = f"bench-{lab.tag}-wide", f"bench-{lab.tag}-pair"
    for network_id, vni, members in ((wide, VNI, (0, 1, 2)), (pair, VNI + 1, (0, 1))):
        for i in members:
            net = DesiredNetwork(id=network_id, name=network_id, kind=NetworkKind.TENANT,
                                 mtu=TENANT_MTU, vni=vni,
                                 peers=[NODE_IPS[j] for j in members if j != i])
            LinuxNetworkDriver(netns=nodes[i]).ensure_network(net, NODE_IPS[i])
    vms: list[str] = []
    for n, (network_id, subnet) in enumerate(((wide, "10.0.0"), (pair, "10.0.1"))):
        for i in (0, 1):
            vm = lab.new_ns(f"vm{n}{i + 1}")
            vms.append(vm)
            with IPRoute(netns=nodes[i]) as ipr:
                tap = f"vbn{lab.tag}t{n}{i + 1}"
                ipr.link("add", ifname=tap, kind="veth",
                         peer={"ifname": "eth0", "net_ns_fd": vm})
                ipr.link("set", index=_lookup(ipr, tap), mtu=TENANT_MTU, state="up",
                         master=_lookup(ipr, bridge_name(network_id)))
            set_addr(vm, "eth0", f"{subnet}.{i + 1}", TENANT_MTU)
    return vms, [wide, pair], nodes


def mac_of(ns: str, ifname: str) -> str:
    with IPRoute(netns=ns) as ipr:
        return str(ipr.link("get", index=_lookup(ipr, ifname))[0].get("IFLA_ADDRESS"))


@contextmanager
def firewall(lab: Lab, nodes: list[str], vms: list[str]) -> Iterator[None]:
    """The agent's firewall on nodes 1 and 2 for pair's VM ports while the block runs."""
    group = DesiredSecurityGroup(id="bench", name="bench", member_addresses=[
        "10.0.1.1", "10.0.1.2"], rules=[SecurityRule(direction="ingress",
                                                     remote_cidr="10.0.1.0/24")])
    walls = []
    for i in (0, 1):
        subprocess.run(in_ns(nodes[i], "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1",
                             "net.bridge.bridge-nf-call-ip6tables=1"), check=True, timeout=10)
        wall = SecurityGroupFirewall(netns=nodes[i])
        wall.apply([PortFilter(f"vbn{lab.tag}t1{i + 1}", mac_of(vms[2 + i], "eth0"),
                               (f"10.0.1.{i + 1}/24",), ("bench",))], {"bench": group})
        walls.append(wall)
    try:
        yield
    finally:
        for wall in walls:
            wall.remove()


def build_direct(lab: Lab) -> tuple[str, str]:
    a, b = lab.new_ns("d1"), lab.new_ns("d2")
    with IPRoute(netns=a) as ipr:
        ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": b})
    set_addr(a, "eth0", DIRECT_IPS[0], TENANT_MTU)
    set_addr(b, "eth0", DIRECT_IPS[1], TENANT_MTU)
    return a, b


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def ping_once(ns: str, address: str) -> bool:
    return subprocess.run(in_ns(ns, "ping", "-c", "1", "-W", "1", address),
                          capture_output=True, timeout=10).returncode == 0


def listening(ns: str, port: int) -> bool:
    out = subprocess.run(in_ns(ns, "ss", "-Hltn", f"sport = :{port}"),
                         capture_output=True, text=True, timeout=10).stdout
    return bool(out.strip())


def iperf(lab: Lab, client: str, server: str, address: str, seconds: int) -> float:
    """One iperf3 TCP test client -> server; returns received Gbit/s."""
    proc = subprocess.Popen(in_ns(server, "iperf3", "-s", "-1", "-B", address,
                                  "-p", str(IPERF_PORT)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(proc)
    if not wait_until(lambda: listening(server, IPERF_PORT), READY_TIMEOUT_S):
        raise BenchError(f"iperf3 server in {server} did not start listening")
    done = subprocess.run(in_ns(client, "iperf3", "-c", address, "-p", str(IPERF_PORT),
                                "-t", str(seconds), "-J"),
                          capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise BenchError(f"iperf3 client in {client} failed: {done.stdout[-500:]}"
                         f"{done.stderr[-500:]}")
    proc.wait(timeout=15)  # -1: the server exits after its one test
    result = json.loads(done.stdout)
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9


def ping_rtts(ns: str, address: str, count: int, interval: float) -> list[float]:
    done = subprocess.run(in_ns(ns, "ping", "-n", "-c", str(count), "-i", f"{interval:g}",
                                "-W", "1", address),
                          capture_output=True, text=True, timeout=count * interval + 30)
    rtts = [float(m) for m in RTT_RE.findall(done.stdout)]
    if len(rtts) < count:
        raise BenchError(f"ping from {ns}: {len(rtts)} of {count} replies")
    return rtts


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]


def rx_bytes(ns: str, ifname: str) -> int:
    with IPRoute(netns=ns) as ipr:
        link = ipr.link("get", index=_lookup(ipr, ifname))[0]
        return int(link.get("IFLA_STATS64")["rx_bytes"])


def check_driver_state(nodes: list[str], network_id: str) -> list[str]:
    """What the driver built on node 1, as lines for the report."""
    lines = []
    with IPRoute(netns=nodes[0]) as ipr:
        vx = ipr.link("get", index=_lookup(ipr, vxlan_name(network_id)))[0]
        br = ipr.link("get", index=_lookup(ipr, bridge_name(network_id)))[0]
        data = vx.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
        fdb = sorted(str(e.get("NDA_DST")) for e in ipr.fdb("dump", ifindex=vx["index"])
                     if e["ifindex"] == vx["index"] and e.get("NDA_DST"))
        lines.append(f"node 1: bridge {br.get('IFLA_IFNAME')} MTU {br.get('IFLA_MTU')}, "
                     f"vxlan {vx.get('IFLA_IFNAME')} MTU {vx.get('IFLA_MTU')} VNI "
                     f"{data.get('IFLA_VXLAN_ID')} port {data.get('IFLA_VXLAN_PORT')} "
                     f"learning {data.get('IFLA_VXLAN_LEARNING')}, remote entries {fdb}")
    return lines


def measure(args: argparse.Namespace) -> dict[str, Any]:
    lab = Lab(tag=secrets.token_hex(3))
    try:
        vms, network_ids, nodes = build_overlay(lab)
        d1, d2 = build_direct(lab)
        paths = {"direct": (d1, d2, DIRECT_IPS[1]),
                 "overlay": (vms[2], vms[3], "10.0.1.2"),  # 2 nodes carry it
                 "overlay+bystander": (vms[0], vms[1], "10.0.0.2"),  # 3 nodes
                 "overlay+firewall": (vms[2], vms[3], "10.0.1.2")}

        def guarded(name: str) -> AbstractContextManager[None]:
            return firewall(lab, nodes, vms) if name == "overlay+firewall" else nullcontext()
        for name, (a, _b, dst) in paths.items():
            with guarded(name):
                if not wait_until(lambda a=a, dst=dst: ping_once(a, dst), READY_TIMEOUT_S):
                    raise BenchError(f"{name}: {dst} does not answer")
        state = [line for n in network_ids for line in check_driver_state(nodes, n)]
        print("\n".join(state))
        gbps: dict[str, list[float]] = {name: [] for name in paths}
        bystander: dict[str, list[int]] = {name: [] for name in paths}
        for rep in range(1, args.repeat + 1):
            for name, (a, b, dst) in paths.items():
                before = rx_bytes(nodes[2], "eth0")
                with guarded(name):
                    g = iperf(lab, a, b, dst, args.seconds)
                bystander[name].append(rx_bytes(nodes[2], "eth0") - before)
                gbps[name].append(g)
                print(f"throughput {name} run {rep}: {g:.2f} Gbit/s", flush=True)
        rtts: dict[str, list[float]] = {}
        for name, (a, _b, dst) in paths.items():
            with guarded(name):
                ping_once(a, dst)  # ARP / forwarding entries warm, not counted
                rtts[name] = ping_rtts(a, dst, args.pings, args.interval)
        return report(gbps, rtts, bystander, args, state)
    finally:
        lab.teardown()


def report(gbps: dict[str, list[float]], rtts: dict[str, list[float]],
           bystander: dict[str, list[int]],
           args: argparse.Namespace, state: list[str]) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in gbps.items()}
    lat = {k: (statistics.median(v), p99(v), min(v), max(v)) for k, v in rtts.items()}
    print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, kernel {platform.release()}, "
          f"{os.cpu_count()} CPUs; MTU: underlay {UNDERLAY_MTU}, tenant/VM NICs and "
          f"direct veth {TENANT_MTU}")
    print(f"\nTCP throughput, iperf3 1 stream, {args.seconds} s x {args.repeat}, Gbit/s")
    print("| path | runs | median |\n|---|---|---:|")
    for k, v in gbps.items():
        print(f"| {k} | {', '.join(f'{x:.2f}' for x in v)} | {med[k]:.2f} |")
    print(f"\nICMP RTT, {args.pings} pings every {args.interval * 1000:g} ms, ms")
    print("| path | median | p99 | min | max |\n|---|---:|---:|---:|---:|")
    for k, (m, p, lo, hi) in lat.items():
        print(f"| {k} | {m:.3f} | {p:.3f} | {lo:.3f} | {hi:.3f} |")
    ratios: dict[str, dict[str, float]] = {}
    for k in gbps:
        if k == "direct":
            continue
        ratios[k] = {"throughput": med[k] / med["direct"],
                     "rtt_median": lat[k][0] / lat["direct"][0],
                     "rtt_p99": lat[k][1] / lat["direct"][1]}
        print(f"\n{k}/direct: throughput {ratios[k]['throughput']:.2f}, RTT median "
              f"{ratios[k]['rtt_median']:.2f}, RTT p99 {ratios[k]['rtt_p99']:.2f}")
    print("\nbytes received by node 3's eth0 (carries only the wide network, no VM) per "
          "run, as a share of the TCP payload of that run:")
    for k, received in bystander.items():
        payload = [g * 1e9 / 8 * args.seconds for g in gbps[k]]
        print(f"  {k}: " + ", ".join(f"{b / 1e6:.0f} MB ({b / s:.0%})"
                                     for b, s in zip(received, payload, strict=True)))
    return {"gbps": gbps, "rtt_ms": rtts, "median_gbps": med,
            "rtt_median_p99_min_max": lat, "ratios": ratios,
            "bystander_rx_bytes": bystander, "driver_state": state}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/network.py",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=int, default=5, help="seconds per iperf3 run (default 5)")
    p.add_argument("--repeat", type=int, default=3, help="iperf3 runs per path (default 3)")
    p.add_argument("--pings", type=int, default=50, help="pings per path (default 50)")
    p.add_argument("--interval", type=float, default=0.01,
                   help="seconds between pings (default 0.01)")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    args = p.parse_args(argv)
    if not (1 <= args.seconds <= 60 and 1 <= args.repeat <= 20 and 1 <= args.pings <= 10000):
        p.error("--seconds 1..60, --repeat 1..20, --pings 1..10000")
    if args.interval < 0.01:
        p.error("--interval must be at least 0.01")
    if os.geteuid() != 0:
        print("bench/network.py: run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    for tool in ("iperf3", "ping", "ss"):
        if shutil.which(tool) is None:
            print(f"bench/network.py: {tool} not found (apt-get install iperf3 iputils-ping "
                  "iproute2)", file=sys.stderr)
            return 1
    try:
        results = measure(args)
    except KeyboardInterrupt:
        print("bench/network.py: interrupted (cleaned up)", file=sys.stderr)
        return 130
    except (BenchError, OSError, NetlinkError, subprocess.SubprocessError, ValueError,
            KeyError) as e:
        print(f"bench/network.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
