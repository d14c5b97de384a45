"""The node's DHCP responder answering a real DHCP client (busybox udhcpc) in a network
namespace wired like a VM: a veth whose node end is the port's tap on a bridge."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from agent.dhcp.packet import Lease
from agent.dhcp.responder import DhcpResponder
from tests.integration.netns_helpers import lookup

BUSYBOX = shutil.which("busybox")
SCRIPT = '#!/bin/sh\n[ "$1" = bound ] && env > "$LEASE_OUT"\nexit 0\n'


@dataclass
class Host:
    tag: str
    node: str = ""
    namespaces: list[str] = field(default_factory=list)
    taps: dict[str, str] = field(default_factory=dict)  # guest namespace -> its tap

    def add_guest(self, label: str, mac: str) -> str:
        ns = f"vdh-{self.tag}-{label}"
        netns.create(ns)
        self.namespaces.append(ns)
        tap = f"vtp-{self.tag}{label}"[:15]
        with IPRoute(netns=self.node) as ipr:
            ipr.link("add", ifname=tap, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
            ipr.link("set", index=lookup(ipr, tap), state="up",
                     master=lookup(ipr, "vbr-dhcp"))
        with IPRoute(netns=ns) as ipr:
            eth0 = lookup(ipr, "eth0")
            ipr.link("set", index=eth0, address=mac)
            ipr.link("set", index=eth0, state="up")
        self.taps[ns] = tap
        return ns

    def ask(self, guest: str, out: Path, tries: int = 3) -> dict[str, str] | None:
        """What udhcpc in `guest` was told, or None when it got no lease."""
        script = out.with_suffix(".sh")
        script.write_text(SCRIPT)
        script.chmod(0o755)
        assert BUSYBOX is not None
        done = subprocess.run(
            ["ip", "netns", "exec", guest, "env", f"LEASE_OUT={out}", BUSYBOX, "udhcpc",
             "-i", "eth0", "-f", "-q", "-n", "-t", str(tries), "-T", "1", "-O", "mtu",
             "-s", str(script)], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            return None
        return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


@pytest.fixture
def host() -> Iterator[Host]:
    if BUSYBOX is None:
        pytest.skip("busybox (its udhcpc is the DHCP client) is not installed")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    h = Host(tag=secrets.token_hex(3))
    try:
        h.node = f"vdh-{h.tag}-node"
        netns.create(h.node)
        h.namespaces.append(h.node)
        with IPRoute(netns=h.node) as ipr:
            ipr.link("add", ifname="vbr-dhcp", kind="bridge", br_stp_state=0,
                     br_forward_delay=0)
            ipr.link("set", index=lookup(ipr, "vbr-dhcp"), state="up")
        yield h
    finally:
        for name in reversed(h.namespaces):  # their veths and the bridge go with them
            try:
                netns.remove(name)
            except OSError:
                pass


MAC_A, MAC_B = "52:54:00:0d:00:0a", "52:54:00:0d:00:0b"


def test_a_port_gets_its_own_address_and_settings_and_no_other_port_gets_them(
        host: Host, tmp_path: Path) -> None:
    guest_a = host.add_guest("a", MAC_A)
    guest_b = host.add_guest("b", MAC_A)  # forges port a's MAC on another tap
    lease = Lease(mac=MAC_A, address=ipaddress.IPv4Interface("10.77.0.5/24"),
                  server_id=ipaddress.IPv4Address("10.77.0.1"),
                  router=ipaddress.IPv4Address("10.77.0.1"),
                  dns=(ipaddress.IPv4Address("10.77.0.53"),), mtu=1450, hostname="web-1")
    responder = DhcpResponder(netns=host.node)
    responder.set_leases({host.taps[guest_a]: lease})
    responder.start()
    try:
        told = host.ask(guest_a, tmp_path / "a.env")
        assert told is not None, "the port got no lease"
        assert (told["ip"], told["subnet"], told["router"], told["dns"].strip(),
                told["mtu"], told["hostname"], told["serverid"]) == \
            ("10.77.0.5", "255.255.255.0", "10.77.0.1", "10.77.0.53", "1450", "web-1",
             "10.77.0.1")
        assert told["lease"] == str(0xFFFFFFFF)  # a port's address is its own for ever
        answered = responder.answered
        assert answered == 2  # the offer and the ack

        assert host.ask(guest_b, tmp_path / "b.env", tries=2) is None
        assert responder.answered == answered

        host.ask(guest_a, tmp_path / "a2.env")  # the lease is given again, the same
        responder.set_leases({})  # the port went: nothing more for it
        assert host.ask(guest_a, tmp_path / "a3.env", tries=2) is None
    finally:
        responder.stop()
    assert not responder.running
