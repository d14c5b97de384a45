"""One node lab per test session (three nodes), shared by every multi-node test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from lab import main as lab_main
from lab import region as lab_region_module
from lab.main import Lab
from lab.region import LabRegion
from tests.e2e.region import wait_for

# not make lab's, so a lab left up by hand does not collide
TEST_SUBNET = os.environ.get("VAUBAN_TEST_LAB_SUBNET", "10.242.0.0/24")


def lab_unavailable() -> str | None:
    """Why a lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the node lab needs root (namespaces, overlays, systemd-nspawn)"
    for tool in ("/usr/bin/systemd-nspawn", "/usr/sbin/debootstrap"):
        if not Path(tool).exists():
            return f"{tool} is missing (make test installs it)"
    return None


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
                          subnet=TEST_SUBNET)
    finally:
        lab_main.down(state)


@pytest.fixture(scope="session")
def lab_region(lab3: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabRegion]:
    """A controller on the lab bridge, and the lab's first three nodes added to it with
    `vauban node add` (host keys pinned, qualified), then one rollout to all three at
    once: every node up."""
    root = Path("/var/tmp") / f"vauban-lab-region-{os.getpid()}"
    region = lab_region_module.start(lab3, root, env={"VAUBAN_NODE_DOWN_AFTER": "15"})
    try:
        for i in range(REGION_NODES):
            added = region.add_node(i, "--no-rollout")
            assert added.returncode == 0, f"node add {lab3.nodes[i].name}: {added.stderr}"
        region.cli("rollout", "run")
        wanted = [(n.name, "up") for n in lab3.nodes[:REGION_NODES]]
        wait_for(lambda: sorted((n["name"], n["state"]) for n in region.cli(
            "node", "list", "--json")) == wanted, 120, "every lab node to report")
        yield region
    finally:
        lab_region_module.stop(region)
        shutil.rmtree(root, ignore_errors=True)


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
