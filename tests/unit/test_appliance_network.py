"""The management network as systemd-networkd files, and which NIC the answer means."""

from __future__ import annotations

import pytest

from appliance.answers import NetworkAnswers
from appliance.network import Link, NetworkError, render, resolve_interface

MAC = "52:54:00:aa:bb:cc"


def net(**fields: object) -> NetworkAnswers:
    return NetworkAnswers.model_validate(fields)


def test_dhcp() -> None:
    files = render(net(), MAC)
    assert files == {"10-vauban-mgmt.network":
                     f"[Match]\nMACAddress={MAC}\nType=ether\n\n[Network]\nDHCP=yes\n"}


def test_static() -> None:
    files = render(net(mode="static", address="10.0.0.21/24", gateway="10.0.0.1",
                       dns=["10.0.0.53", "10.0.0.54"]), MAC)
    text = files["10-vauban-mgmt.network"]
    assert "Address=10.0.0.21/24\nGateway=10.0.0.1\nDNS=10.0.0.53\nDNS=10.0.0.54\n" in text
    assert "DHCP" not in text


def test_static_on_a_vlan() -> None:
    files = render(net(mode="static", address="10.0.0.21/24", vlan=42), MAC)
    assert sorted(files) == ["10-vauban-mgmt-vlan.netdev", "10-vauban-mgmt-vlan.network",
                             "10-vauban-mgmt.network"]
    nic = files["10-vauban-mgmt.network"]
    assert f"MACAddress={MAC}" in nic and "VLAN=vlan42" in nic and "\nAddress=" not in nic
    assert "[NetDev]\nName=vlan42\nKind=vlan\n\n[VLAN]\nId=42\n" == \
        files["10-vauban-mgmt-vlan.netdev"]
    assert files["10-vauban-mgmt-vlan.network"].startswith("[Match]\nName=vlan42\n")
    assert "Address=10.0.0.21/24" in files["10-vauban-mgmt-vlan.network"]


def test_dhcp_on_a_vlan() -> None:
    files = render(net(vlan=7), MAC)
    assert "DHCP=yes" in files["10-vauban-mgmt-vlan.network"]
    assert "DHCP=no" in files["10-vauban-mgmt.network"]


LINKS = [Link("eno1", "aa:00:00:00:00:01", True, False),
         Link("eno2", "aa:00:00:00:00:02", True, True),
         Link("virbr0", "aa:00:00:00:00:03", False, True)]


@pytest.mark.parametrize(("answer", "name"), [
    ("auto", "eno2"), ("eno1", "eno1"), ("mac:aa:00:00:00:00:01", "eno1")])
def test_resolve(answer: str, name: str) -> None:
    assert resolve_interface(answer, LINKS).name == name


def test_resolve_refuses_naming_the_nics() -> None:
    with pytest.raises(NetworkError, match="eth9: not on this machine.*eno1"):
        resolve_interface("eth9", LINKS)
    with pytest.raises(NetworkError, match="no physical NIC has a link"):
        resolve_interface("auto", LINKS[:1])
