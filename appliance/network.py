"""The management network as systemd-networkd files, and which NIC `auto` means.

Without a VLAN, one `.network` file configures the NIC. With one, the NIC's file
only carries the VLAN (no address of its own), a `.netdev` creates `vlan<id>`, and
a second `.network` gives that the address. The NIC is matched by MAC address, so
that a name that differs between the live and the installed system cannot matter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.answers import NetworkAnswers
from appliance.cmd import Runner

PREFIX = "10-vauban-mgmt"
# a NIC brought up negotiates its link within seconds; `auto` waits this long for one
CARRIER_WAIT_S = 15.0


class NetworkError(Exception):
    """The answers' interface is not on this machine; the message names what is."""


@dataclass(frozen=True)
class Link:
    name: str
    mac: str
    physical: bool
    carrier: bool


def list_links(sys_root: Path = Path("/")) -> list[Link]:
    """The machine's network interfaces (loopback left out), from /sys/class/net."""
    links = []
    base = sys_root / "sys/class/net"
    for node in sorted(base.iterdir()) if base.is_dir() else []:
        if node.name == "lo":
            continue

        def read(rel: str, node: Path = node) -> str:
            try:
                return (node / rel).read_text().strip()
            except OSError:
                return ""
        links.append(Link(name=node.name, mac=read("address").lower(),
                          physical=(node / "device").exists(), carrier=read("carrier") == "1"))
    return links


def links_with_carrier(runner: Runner, sys_root: Path = Path("/"),
                       wait_s: float = CARRIER_WAIT_S,
                       clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> list[Link]:
    """The machine's NICs once the physical ones are up: a NIC that is down has no
    carrier to read (the live system configures none), so each is brought up (no
    address), and the list is read again until one has carrier or `wait_s` passed."""
    for link in list_links(sys_root):
        if link.physical and not link.carrier:
            runner(["ip", "link", "set", "dev", link.name, "up"])
    deadline = clock() + wait_s
    while True:
        links = list_links(sys_root)
        if any(x.physical and x.carrier for x in links) or clock() >= deadline:
            return links
        sleep(0.2)  # sysfs has no change to wait on; negotiation takes seconds


def resolve_interface(answer: str, links: list[Link]) -> Link:
    """The NIC the answer designates: a name, `mac:...`, or `auto` (the first physical
    NIC with carrier, by name). NetworkError naming the NICs seen when none is."""
    seen = ", ".join(f"{x.name} ({x.mac}{', carrier' if x.carrier else ''})"
                     for x in links) or "none"
    if answer == "auto":
        found = [x for x in links if x.physical and x.carrier]
        if not found:
            raise NetworkError(f"interface auto: no physical NIC has a link (NICs: {seen})")
        return found[0]
    if answer.startswith("mac:"):
        found = [x for x in links if x.mac == answer[4:]]
    else:
        found = [x for x in links if x.name == answer]
    if not found:
        raise NetworkError(f"interface {answer}: not on this machine (NICs: {seen})")
    return found[0]


def _addressing(net: NetworkAnswers) -> list[str]:
    if net.mode == "dhcp":
        lines = ["DHCP=yes"]
    else:
        lines = [f"Address={net.address}"]
        if net.gateway:
            lines.append(f"Gateway={net.gateway}")
    lines += [f"DNS={d}" for d in net.dns]
    return lines


def render(net: NetworkAnswers, mac: str) -> dict[str, str]:
    """File name -> content of the systemd-networkd files for `net` on the NIC `mac`."""
    match = ["[Match]", f"MACAddress={mac}", "Type=ether", ""]
    if net.vlan is None:
        return {f"{PREFIX}.network": "\n".join(
            [*match, "[Network]", *_addressing(net), ""])}
    vlan = f"vlan{net.vlan}"
    return {
        f"{PREFIX}.network": "\n".join(
            [*match, "[Network]", f"VLAN={vlan}", "LinkLocalAddressing=no", "DHCP=no", ""]),
        f"{PREFIX}-vlan.netdev": "\n".join(
            ["[NetDev]", f"Name={vlan}", "Kind=vlan", "", "[VLAN]", f"Id={net.vlan}", ""]),
        f"{PREFIX}-vlan.network": "\n".join(
            ["[Match]", f"Name={vlan}", "", "[Network]", *_addressing(net), ""]),
    }
