"""network-config for fixed addresses."""

from __future__ import annotations

import json

from agent.protocol import DesiredPort
from images.netconfig import network_config


def test_ports_become_matched_ethernets_with_routes_and_dns() -> None:
    ports = [
        DesiredPort(id="p1", network_id="n1", mac="52:54:00:00:00:01",
                    addresses=["10.0.0.5/24", "fd00::5/64"], gateways=["10.0.0.1", "fd00::1"],
                    dns=["10.0.0.2"], mtu=1450),
        DesiredPort(id="p2", network_id="n2", mac="52:54:00:00:00:02",
                    addresses=["192.168.7.9/24"], mtu=1500),
    ]
    doc = json.loads(network_config(ports))
    assert doc["version"] == 2
    eth0, eth1 = doc["ethernets"]["eth0"], doc["ethernets"]["eth1"]
    assert eth0["match"] == {"macaddress": "52:54:00:00:00:01"} and eth0["mtu"] == 1450
    assert eth0["addresses"] == ["10.0.0.5/24", "fd00::5/64"]
    assert eth0["routes"] == [{"to": "0.0.0.0/0", "via": "10.0.0.1"},
                              {"to": "::/0", "via": "fd00::1"}]
    assert eth0["nameservers"] == {"addresses": ["10.0.0.2"]}
    assert "routes" not in eth1 and "nameservers" not in eth1


def test_a_dhcp_port_takes_its_ipv4_settings_from_dhcp_and_keeps_ipv6_static() -> None:
    port = DesiredPort(id="p1", network_id="n1", mac="52:54:00:00:00:01",
                       addresses=["10.0.0.5/24", "fd00::5/64"], gateways=["10.0.0.1", "fd00::1"],
                       dns=["10.0.0.2", "fd00::2"], mtu=1450, dhcp=True)
    eth0 = json.loads(network_config([port]))["ethernets"]["eth0"]
    assert eth0["dhcp4"] is True and eth0["mtu"] == 1450
    assert eth0["addresses"] == ["fd00::5/64"]
    assert eth0["routes"] == [{"to": "::/0", "via": "fd00::1"}]
    assert eth0["nameservers"] == {"addresses": ["fd00::2"]}
