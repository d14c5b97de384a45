"""Bring a node lab up and take it down: `make lab NODES=3`, `make lab-down`.

    python -m lab up --nodes 3 [--state var/lab] [--name lab] [--subnet 10.241.0.0/24]
    python -m lab down [--state var/lab]
    python -m lab power NODE on|off|status [--state var/lab]   (through the node's BMC)

The state folder's lab.json lists everything the lab made (bridge, namespaces, node
folders and overlays, nspawn PIDs with their start times) and is written before each
thing is made, so `down` removes exactly that, also after an `up` that failed halfway.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import bmc, network, rootfs
from lab.node import (
    LabNode,
    ask_to_halt,
    freezer_unavailable,
    group_for,
    is_running,
    mount_overlay,
    power_cut,
    reap,
    remove_group,
    start,
    stop,
    thaw,
    unmount_overlay,
    wait_ready,
    write_identity,
)

DEFAULT_STATE = Path("var/lab")
DEFAULT_SUBNET = "10.241.0.0/24"
FIRST_NODE_HOST = 11  # node i has the subnet's address 10 + i; the host has the first
# how long down lets the nodes power off in order before it kills them: their folders are
# removed next, so nothing on them is kept either way
DOWN_GRACE_S = 10.0


@dataclass
class Lab:
    """A lab's record: what it made, where. Saved as STATE/lab.json."""

    state: Path
    name: str
    subnet: str
    root: str
    bridge: str
    nodes: list[LabNode] = field(default_factory=list)
    bmc_password: str | None = None  # the admin password of every node's BMC

    @property
    def host_address(self) -> ipaddress.IPv4Interface:
        net = ipaddress.IPv4Network(self.subnet)
        return ipaddress.IPv4Interface(f"{net.network_address + 1}/{net.prefixlen}")

    @property
    def ssh_key(self) -> Path:
        return self.state / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state / "known_hosts"

    def save(self) -> None:
        data = {"name": self.name, "subnet": self.subnet, "root": self.root,
                "bridge": self.bridge, "bmc_password": self.bmc_password,
                "nodes": [n.to_json() for n in self.nodes]}
        tmp = self.state / f"lab.json.{os.getpid()}.tmp"  # a BMC's process saves too
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(self.state / "lab.json")

    @classmethod
    def load(cls, state: Path) -> Lab | None:
        try:
            data: dict[str, Any] = json.loads((state / "lab.json").read_text())
        except FileNotFoundError:
            return None
        nodes = [LabNode(**n) for n in data.pop("nodes")]
        return cls(state=state, nodes=nodes, **data)

    def reload_power(self) -> None:
        """Take each node's nspawn PID as lab.json records it now: a node switched on
        by its BMC runs under a PID that the BMC's process recorded there."""
        saved = Lab.load(self.state)
        for node in self.nodes:
            fresh = next((n for n in saved.nodes if n.name == node.name), None) \
                if saved else None
            if fresh is not None:
                if node.pid is not None and node.pid != fresh.pid:
                    reap(node.pid)  # the node's earlier nspawn, if this process started it
                node.pid, node.pid_start = fresh.pid, fresh.pid_start

    def stop_bmc(self, node: LabNode) -> None:
        """Stop the node's BMC (it then answers nothing; the node runs on)."""
        self.reload_power()
        bmc.stop(node)
        self.save()

    def start_bmc(self, node: LabNode) -> None:
        """Start the node's BMC again; its new PID is recorded for `down`."""
        self.reload_power()
        bmc.start(node)
        self.save()

    def node(self, name: str) -> LabNode:
        found = next((n for n in self.nodes if n.name == name), None)
        if found is None:
            raise ValueError(f"no node {name} in lab {self.name} (nodes: "
                             f"{', '.join(n.name for n in self.nodes)})")
        return found

    def node_address(self, index: int) -> str:
        net = ipaddress.IPv4Network(self.subnet)
        return f"{net.network_address + FIRST_NODE_HOST - 1 + index}/{net.prefixlen}"


def up(state: Path, nodes: int, name: str = "lab", subnet: str = DEFAULT_SUBNET,
       cache: Path = rootfs.DEFAULT_CACHE) -> Lab:
    """Make a lab of `nodes` booted nodes. Refuses when the state folder holds a lab
    already or the subnet is in use on this machine. On failure, what was made stays
    recorded for `down` (and the error says what failed)."""
    if not 1 <= nodes <= 200:
        raise ValueError(f"a lab has 1 to 200 nodes, not {nodes}")
    if len(name) > 6 or not name.isalnum():
        raise ValueError(f"lab name {name!r}: 1 to 6 letters or digits (interface names "
                         "are at most 15 characters)")
    state.mkdir(parents=True, exist_ok=True)
    if Lab.load(state) is not None:
        raise FileExistsError(f"a lab is recorded in {state}: take it down first")
    net = ipaddress.IPv4Network(subnet)
    if net.num_addresses < FIRST_NODE_HOST + nodes + 1:
        raise ValueError(f"subnet {subnet} has no room for {nodes} nodes")
    user = network.subnet_user(net)
    if user is not None:  # two bridges on one subnet: the host's routes reach only one
        raise FileExistsError(f"subnet {net} is in use on interface {user}: another lab is "
                              "up (take it down, or choose another subnet)")
    why = freezer_unavailable() or (None if shutil.which("ipmi_sim") else
                                    "ipmi_sim is missing: the nodes' BMCs need openipmi")
    if why:
        raise RuntimeError(why)
    root = rootfs.ensure_root(cache, state / "rootfs-build.log")
    lab = Lab(state=state.resolve(), name=name, subnet=str(net), root=str(root),
              bridge=f"vb-{name}", bmc_password=bmc.new_password())
    _refuse_taken(lab.bridge, None)  # what is not ours is never recorded, so never removed
    lab.save()
    network.make_bridge(lab.bridge, lab.host_address)
    _make_ssh_key(lab)
    for i in range(1, nodes + 1):
        node = LabNode(name=f"{name}{i}", namespace=f"vauban-{name}-{i}",
                       veth=f"vv-{name}-{i}", address=lab.node_address(i),
                       folder=str(lab.state / "nodes" / f"{name}{i}"),
                       cgroup=group_for(name, f"{name}{i}"))
        _refuse_taken(node.veth, node.namespace)
        lab.nodes.append(node)
        lab.save()
        network.make_node_namespace(node.namespace, node.veth, lab.bridge,
                                    ipaddress.IPv4Interface(node.address))
        mount_overlay(node, root)
        write_identity(node, (lab.ssh_key.with_suffix(".pub")).read_text())
        start(node)
        lab.save()
    for i, node in enumerate(lab.nodes, start=1):
        assert lab.bmc_password is not None
        bmc.configure(node, lab.state, str(lab.host_address.ip), bmc.port_of(i),
                      lab.bmc_password)
        lab.save()
        bmc.start(node)
        lab.save()
    for node in lab.nodes:
        wait_ready(node)
    _write_known_hosts(lab)
    return lab


def _refuse_taken(link: str, namespace: str | None) -> None:
    if network.link_exists(link):
        raise FileExistsError(f"interface {link} exists already: another lab uses this name")
    if namespace is not None and network.namespace_exists(namespace):
        raise FileExistsError(f"network namespace {namespace} exists already: another lab "
                              "uses this name")


def _make_ssh_key(lab: Lab) -> None:
    if not lab.ssh_key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        f"vauban-lab-{lab.name}", "-f", str(lab.ssh_key)], check=True)


def _write_known_hosts(lab: Lab) -> None:
    lines = []
    for node in lab.nodes:
        pub = (node.merged / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        lines.append(f"{node.ip},{node.name} {pub[0]} {pub[1]}")
    lab.known_hosts.write_text("\n".join(lines) + "\n")


def down(state: Path) -> list[str]:
    """Remove everything the lab in `state` recorded: nodes (by their nspawn PID: asked
    to power off, killed if they have not within DOWN_GRACE_S), overlays, node folders,
    namespaces, the bridge and the lab's keys. Returns what was removed, in words. The
    cached root stays (other labs and CI reuse it)."""
    lab = Lab.load(state)
    if lab is None:
        return []
    removed = []
    for node in lab.nodes:  # first, so that nothing switches a node on meanwhile
        if bmc.is_running(node):
            bmc.stop(node)
            removed.append(f"BMC of node {node.name}")
        if node.cgroup is not None and Path(node.cgroup).is_dir():
            thaw(node)  # a frozen node would not hear the halt request
    running = [n.name for n in lab.nodes if is_running(n)]
    for node in lab.nodes:  # every node shuts down at once; each is then waited for
        if node.name in running:
            ask_to_halt(node)
    deadline = time.monotonic() + DOWN_GRACE_S
    for node in lab.nodes:
        if node.name in running:
            orderly = stop(node, max(0.0, deadline - time.monotonic()), asked=True)
            removed.append(f"node {node.name} stopped" if orderly else
                           f"node {node.name} killed (not powered off within "
                           f"{DOWN_GRACE_S:.0f} s)")
        if node.cgroup is not None and Path(node.cgroup).is_dir():
            power_cut(node)  # whatever of the node outlived its nspawn
            remove_group(node)
        unmount_overlay(node)
        if network.remove_namespace(node.namespace):
            removed.append(f"namespace {node.namespace}")
        network.remove_link(node.veth)  # gone with its namespace, unless that failed
        if Path(node.folder).exists():
            shutil.rmtree(node.folder)
        lab.save()
    if (state / "nodes").is_dir() and not any((state / "nodes").iterdir()):
        (state / "nodes").rmdir()
    if network.remove_link(lab.bridge):
        removed.append(f"bridge {lab.bridge}")
    for made in (lab.ssh_key, lab.ssh_key.with_suffix(".pub"), lab.known_hosts,
                 state / "rootfs-build.log"):
        made.unlink(missing_ok=True)
    (state / "lab.json").unlink()
    return removed


def power(state: Path, name: str, action: str) -> int:
    """`python -m lab power`: ipmitool against the node's BMC, as an operator would;
    after "on", wait until the node has booted and its sshd answers."""
    lab = Lab.load(state)
    if lab is None:
        print(f"no lab is recorded in {state}", file=sys.stderr)
        return 1
    try:
        node = lab.node(name)
        done = bmc.ipmitool(node, "power", action)
    except (ValueError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"lab power failed: {e}", file=sys.stderr)
        return 1
    print((done.stdout + done.stderr).strip())
    if done.returncode != 0:
        return 1
    if action == "on":
        lab.reload_power()
        try:
            print(f"node {name}: systemd {wait_ready(node)}, sshd answers")
        except RuntimeError as e:
            print(f"lab power on: {e}", file=sys.stderr)
            return 1
    return 0


def describe(lab: Lab) -> str:
    lines = [f"Lab '{lab.name}': {len(lab.nodes)} node(s) on bridge {lab.bridge} "
             f"({lab.subnet}; this machine is {lab.host_address.ip})"]
    for node in lab.nodes:
        lines.append(f"  {node.name:8} {node.ip:15} ssh host key {node.host_key_sha256}"
                     f"  BMC {node.bmc_address}")
    lines.append(f"Log in: ssh -i {lab.ssh_key} -o UserKnownHostsFile={lab.known_hosts} "
                 f"root@{lab.nodes[0].ip if lab.nodes else '...'}")
    lines.append(f"Power: {sys.executable} -m lab power NODE on|off|status (BMC user "
                 f"{bmc.BMC_USER}, password in each node's folder, bmc/password)")
    lines.append("Take it down: make lab-down")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description="Vauban node lab")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="make and boot the nodes")
    p_up.add_argument("--nodes", type=int, default=3)
    p_up.add_argument("--name", default="lab")
    p_up.add_argument("--subnet", default=DEFAULT_SUBNET)
    p_up.add_argument("--cache", type=Path, default=rootfs.DEFAULT_CACHE)
    p_up.add_argument("--region", action="store_true",
                      help="also start a controller on the bridge and add every node to it")
    p_down = sub.add_parser("down", help="remove everything the lab made")
    p_power = sub.add_parser("power", help="switch a node's power through its BMC (IPMI)")
    p_power.add_argument("node")
    p_power.add_argument("action", choices=["on", "off", "status"])
    for p in (p_up, p_down, p_power):
        p.add_argument("--state", type=Path, default=DEFAULT_STATE)
    args = parser.parse_args(argv)
    if args.command == "power":
        return power(args.state, args.node, args.action)
    if args.command == "up":
        try:
            lab = up(args.state, args.nodes, args.name, args.subnet, args.cache)
        except (ValueError, FileExistsError, RuntimeError,
                subprocess.CalledProcessError) as e:
            print(f"lab up failed: {e}\n(make lab-down removes what was made)", file=sys.stderr)
            return 1
        print(describe(lab))
        if args.region:
            from lab import region as lab_region  # it needs the controller's packages

            try:
                print(lab_region.describe(lab_region.bring_up(lab)))
            except (RuntimeError, subprocess.CalledProcessError) as e:
                print(f"lab region failed: {e}\n(make lab-down removes what was made)",
                      file=sys.stderr)
                return 1
        return 0
    recorded = Lab.load(args.state)
    if recorded is not None:
        from lab import region as lab_region

        if lab_region.take_down(recorded):
            print("removed the lab's controller")
    for line in down(args.state):
        print("removed", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
