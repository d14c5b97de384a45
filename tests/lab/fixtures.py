"""One node lab per test session (three nodes), shared by every multi-node test."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from lab import main as lab_main
from lab import network
from lab.main import Lab
from lab.node import freezer_unavailable

# not make lab's (10.241), so a lab left up by hand does not collide
TEST_SUBNETS = ipaddress.IPv4Network("10.242.0.0/16")


def free_test_subnet() -> str:
    """VAUBAN_TEST_LAB_SUBNET if set, else the first /24 of TEST_SUBNETS that no interface
    here uses (a lab left by a killed run keeps its bridge until taken down)."""
    chosen = os.environ.get("VAUBAN_TEST_LAB_SUBNET")
    if chosen:
        return chosen
    for subnet in TEST_SUBNETS.subnets(new_prefix=24):
        if network.subnet_user(subnet) is None:
            return str(subnet)
    raise RuntimeError(f"every /24 of {TEST_SUBNETS} is in use on this machine")


def lab_unavailable() -> str | None:
    """Why a lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the node lab needs root (namespaces, overlays, systemd-nspawn)"
    for tool in ("/usr/bin/systemd-nspawn", "/usr/sbin/debootstrap"):
        if not Path(tool).exists():
            return f"{tool} is missing (make test installs it)"
    if not Path("/usr/bin/ipmi_sim").exists():
        return "/usr/bin/ipmi_sim is missing (make test installs openipmi)"
    return freezer_unavailable()


REGION_NODES = 3  # the lab's first three nodes join the region; then two spare servers


@pytest.fixture(scope="session")
def lab3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The session's lab: five nodes, the first three for the region (`lab_region`), the
    last two spare servers that tests add (or fail to add) themselves."""
    why = lab_unavailable()
    if why:
        pytest.skip(why)
    state = tmp_path_factory.mktemp("lab")
    try:
        yield lab_main.up(state, REGION_NODES + 2, name=f"t{os.getpid() % 10000}",
                          subnet=free_test_subnet())
    finally:
        lab_main.down(state)


def ssh(lab: Lab, address: str, known_hosts: Path | None = None) -> paramiko.SSHClient:
    """An SSH session as root on a lab node, its host key checked against known_hosts."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or lab.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(address, username="root", key_filename=str(lab.ssh_key),
                   look_for_keys=False, allow_agent=False, timeout=20)
    return client


def ssh_run(client: paramiko.SSHClient, command: str) -> str:
    """The command's output; AssertionError with its errors if it fails."""
    _, out, err = client.exec_command(command, timeout=60)
    text, status = out.read().decode(), out.channel.recv_exit_status()
    assert status == 0, f"{command!r} exited {status}: {err.read().decode()}"
    return text
