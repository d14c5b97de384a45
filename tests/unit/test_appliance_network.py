"""The management network as systemd-networkd files, and which NIC the answer means."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from appliance.answers import NetworkAnswers
from appliance.network import (
    Link,
    NetworkError,
    links_with_carrier,
    render,
    resolve_interface,
)

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


def _sysfs(root: Path, name: str, mac: str, carrier: str, physical: bool = True) -> Path:
    node = root / "sys/class/net" / name
    node.mkdir(parents=True)
    (node / "address").write_text(mac + "\n")
    (node / "carrier").write_text(carrier + "\n")
    if physical:
        (node / "device").mkdir()
    return node


def test_auto_brings_the_nics_up_to_see_their_link(tmp_path: Path) -> None:
    # the live system configures no NIC: a NIC left down has no carrier to read, and the
    # install refused "no physical NIC has a link" on a machine with a cable in
    ens3 = _sysfs(tmp_path, "ens3", MAC, "0")
    _sysfs(tmp_path, "lo", "00:00:00:00:00:00", "1", physical=False)
    ran: list[list[str]] = []

    def runner(argv: Sequence[str], **_kw: object) -> str:
        ran.append(list(argv))
        (ens3 / "carrier").write_text("1\n")  # the link comes up once the NIC is
        return ""
    links = links_with_carrier(runner, tmp_path, sleep=lambda _s: None)
    assert ran == [["ip", "link", "set", "dev", "ens3", "up"]]
    assert resolve_interface("auto", links).name == "ens3"


def test_auto_waits_for_a_link_then_names_the_nics_it_saw(tmp_path: Path) -> None:
    _sysfs(tmp_path, "ens3", MAC, "0")
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s
    links = links_with_carrier(lambda argv, **_kw: "", tmp_path, wait_s=5.0,
                               clock=lambda: now[0], sleep=sleep)
    assert now[0] >= 5.0
    with pytest.raises(NetworkError, match=r"no physical NIC has a link \(NICs: ens3"):
        resolve_interface("auto", links)
