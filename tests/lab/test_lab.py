"""The node lab: real Debian nodes booted by systemd-nspawn, reachable by SSH with their
host keys pinned, on a private bridge that leads nowhere else."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import paramiko
import pytest
from pyroute2 import IPRoute, netns

from lab import main as lab_main
from lab import network
from lab.main import Lab
from lab.node import is_running, run_inside
from tests.lab.fixtures import lab_unavailable, ssh, ssh_run

pytestmark = pytest.mark.e2e


def test_every_node_is_a_booted_debian_with_its_own_identity(lab3: Lab) -> None:
    seen: dict[str, set[str]] = {"machine-id": set(), "host key": set(), "host uuid": set()}
    for node in lab3.nodes:
        with ssh(lab3, node.ip) as client:
            presented = client.get_transport().get_remote_server_key()
            assert f"SHA256:{presented.fingerprint.split(':', 1)[1]}" == node.host_key_sha256
            assert ssh_run(client, "hostname").strip() == node.name
            assert ssh_run(client, "cat /etc/debian_version").startswith("12.")
            assert ssh_run(client, "systemctl is-active ssh").strip() == "active"
            # Debian's libvirtd leaves after 120 s without clients and its socket brings it
            # back: a node up for a while may show it inactive, and must answer all the same
            assert ssh_run(client, "systemctl is-enabled libvirtd").strip() == "enabled"
            assert "QEMU" in ssh_run(client, "virsh -c qemu:///system version")
            assert ssh_run(client, "systemctl is-active libvirtd").strip() == "active"
            seen["machine-id"].add(ssh_run(client, "cat /etc/machine-id").strip())
            seen["host uuid"].add(ssh_run(client, "grep ^host_uuid /etc/libvirt/libvirtd.conf"))
        seen["host key"].add(str(node.host_key_sha256))
    assert all(len(values) == len(lab3.nodes) for values in seen.values()), seen


def test_a_node_presenting_another_host_key_is_refused(lab3: Lab, tmp_path: Path) -> None:
    first, second = lab3.nodes[0], lab3.nodes[1]
    key_line = next(line for line in lab3.known_hosts.read_text().splitlines()
                    if line.startswith(f"{first.ip},"))
    wrong = tmp_path / "known_hosts"
    wrong.write_text(key_line.replace(f"{first.ip},{first.name}", second.ip) + "\n")
    with pytest.raises(paramiko.BadHostKeyException):
        ssh(lab3, second.ip, known_hosts=wrong)
    unknown = tmp_path / "empty"
    unknown.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        ssh(lab3, second.ip, known_hosts=unknown)


def _host_addresses_outside(subnet: str) -> list[str]:
    lab_net = ipaddress.IPv4Network(subnet)
    with IPRoute() as ipr:
        found = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)]
    return [a for a in found if not ipaddress.IPv4Address(a).is_loopback
            and ipaddress.IPv4Address(a) not in lab_net]


def test_nodes_reach_the_host_and_each_other_and_nothing_else(lab3: Lab) -> None:
    node, other = lab3.nodes[0], lab3.nodes[2]
    with ssh(lab3, node.ip) as client:
        ssh_run(client, f"ping -c 1 -W 5 {lab3.host_address.ip}")
        ssh_run(client, f"ping -c 1 -W 5 {other.ip}")
        assert "default" not in ssh_run(client, "ip route")
        for address in _host_addresses_outside(lab3.subnet):  # no route: nothing is sent
            _, out, err = client.exec_command(f"ip route get {address}")
            assert out.channel.recv_exit_status() != 0
            assert "unreachable" in err.read().decode()


def test_a_nodes_writes_stay_in_its_own_layer(lab3: Lab) -> None:
    marker = f"/root/written-by-test-{os.getpid()}"
    first, second = lab3.nodes[0], lab3.nodes[1]
    with ssh(lab3, first.ip) as client:
        ssh_run(client, f"echo hello > {marker}")
    try:
        assert run_inside(second, "test", "-e", marker).returncode == 1
        assert not (Path(lab3.root) / marker.lstrip("/")).exists()
        assert (Path(first.folder) / "upper" / marker.lstrip("/")).read_text() == "hello\n"
    finally:
        run_inside(first, "rm", "-f", marker)


def test_down_removes_exactly_what_the_lab_made_even_after_a_failed_up(
        tmp_path: Path) -> None:
    why = lab_unavailable()
    if why:
        pytest.skip(why)
    name = f"d{os.getpid() % 10000}"
    taken = f"vauban-{name}-2"  # not the lab's: its second node cannot be made
    netns.create(taken)
    try:
        with pytest.raises(FileExistsError, match=taken):
            lab_main.up(tmp_path, 2, name=name, subnet="10.243.0.0/24")
        lab = Lab.load(tmp_path)
        assert lab is not None and [n.name for n in lab.nodes] == [f"{name}1"]
        first = lab.nodes[0]
        assert is_running(first) and network.link_exists(lab.bridge)
        with pytest.raises(FileExistsError, match="take it down first"):
            lab_main.up(tmp_path, 1, name=name, subnet="10.243.0.0/24")

        removed = lab_main.down(tmp_path)

        assert removed == [f"node {name}1 stopped", f"namespace vauban-{name}-1",
                           f"bridge vb-{name}"]
        assert not is_running(first) and not Path(first.folder).exists()
        assert not network.link_exists(lab.bridge) and not network.link_exists(first.veth)
        assert not network.namespace_exists(first.namespace)
        assert network.namespace_exists(taken)  # not the lab's: left as it was
        assert Path(lab.root, ".vauban-lab-root.json").is_file()  # the cache stays
        assert sorted(p.name for p in tmp_path.iterdir()) == []
    finally:
        lab_main.down(tmp_path)
        network.remove_namespace(taken)


def test_a_lab_on_a_subnet_in_use_is_refused_before_anything_is_made(
        lab3: Lab, tmp_path: Path) -> None:
    # seen in CI: a lab left by a killed run held the subnet, and the new lab's nodes were
    # unreachable (the host's route led to the old bridge) until the boot wait ran out
    name = f"s{os.getpid() % 10000}"
    inside = str(next(ipaddress.IPv4Network(lab3.subnet).subnets(new_prefix=28)))

    with pytest.raises(FileExistsError, match=f"in use on interface {lab3.bridge}"):
        lab_main.up(tmp_path, 1, name=name, subnet=inside)

    assert Lab.load(tmp_path) is None and not network.link_exists(f"vb-{name}")
    assert not network.namespace_exists(f"vauban-{name}-1")
