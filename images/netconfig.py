"""cloud-init network-config (version 2) for a VM's ports: fixed addresses, no DHCP needed."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from agent.protocol import DesiredPort


def network_config(ports: list[DesiredPort]) -> str:
    """The network-config of a VM whose NICs are `ports`, in their order (eth0, eth1, ...).

    Each NIC is matched by MAC and given its addresses, MTU, DNS servers and a default
    route per address family that has a gateway. Written as JSON, which YAML readers
    (cloud-init's among them) accept as it is.
    """
    ethernets: dict[str, Any] = {}
    for i, port in enumerate(ports):
        eth: dict[str, Any] = {
            "match": {"macaddress": port.mac},
            "set-name": f"eth{i}",
            "mtu": port.mtu,
            "addresses": list(port.addresses),
        }
        routes = [{"to": "0.0.0.0/0" if ipaddress.ip_address(gw).version == 4 else "::/0",
                   "via": gw} for gw in port.gateways]
        if routes:
            eth["routes"] = routes
        if port.dns:
            eth["nameservers"] = {"addresses": list(port.dns)}
        ethernets[f"eth{i}"] = eth
    return json.dumps({"version": 2, "ethernets": ethernets}, indent=2) + "\n"
