"""cloud-init network-config (version 2) for a VM's ports: fixed addresses, or IPv4 by DHCP
(answered by the VM's node with the same fixed address, agent/dhcp) where a port asks."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from agent.protocol import DesiredPort


def network_config(ports: list[DesiredPort]) -> str:
    """The network-config of a VM whose NICs are `ports`, in their order (eth0, eth1, ...).

    Each NIC is matched by MAC and given its addresses, MTU, DNS servers and a default
    route per address family that has a gateway. A port with `dhcp` gets its IPv4
    address, route and name servers by DHCP instead (its IPv6 ones stay static).
    Written as JSON, which YAML readers (cloud-init's among them) accept as it is.
    """
    ethernets: dict[str, Any] = {}
    for i, port in enumerate(ports):
        def static(text: str, port: DesiredPort = port) -> bool:
            return not (port.dhcp and ipaddress.ip_interface(text).version == 4)

        eth: dict[str, Any] = {
            "match": {"macaddress": port.mac},
            "set-name": f"eth{i}",
            "mtu": port.mtu,
            "addresses": [a for a in port.addresses if static(a)],
        }
        if port.dhcp:
            eth["dhcp4"] = True
        routes = [{"to": "0.0.0.0/0" if ipaddress.ip_address(gw).version == 4 else "::/0",
                   "via": gw} for gw in port.gateways if static(gw)]
        if routes:
            eth["routes"] = routes
        dns = [d for d in port.dns if static(d)]
        if dns:
            eth["nameservers"] = {"addresses": dns}
        ethernets[f"eth{i}"] = eth
    return json.dumps({"version": 2, "ethernets": ethernets}, indent=2) + "\n"
