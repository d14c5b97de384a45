"""A real multi-node region on the node lab, one per test session.

The controller runs on this machine, listening on the lab bridge's address; the site
playbook is rolled out to every lab node by ansible-runner (each node joins with its own
one-time token) and runs the agent built from this tree; VM disks are RBD clones on a
single-node Ceph cluster listening on the bridge address too (the nodes reach nothing
else). The tests drive it with the `vauban` CLI, as an operator would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import pytest
import requests

from agent.drivers.storage.rbd.minicluster import MiniCluster
from controller import allinone
from lab.main import Lab
from lab.node import LabNode
from tests.e2e.region import E2ERegion, free_port, wait_for
from tests.lab.fixtures import ssh

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
BIN = Path(sys.executable).parent
DOWN_AFTER_S = 15  # a node silent this long is shown down
CEPH_POOL = "vauban"
ROLLOUT_TIMEOUT_S = 900
NODE_UP_TIMEOUT_S = 180


@dataclass
class LabRegion(E2ERegion):
    """The E2E region's CLI helpers, with the agents on the lab's nodes."""

    lab: Lab | None = None
    ceph: MiniCluster | None = None
    wheels: Path | None = None
    version: str = ""
    ssh_clients: dict[str, paramiko.SSHClient] = field(default_factory=dict)

    @property
    def nodes(self) -> list[LabNode]:
        assert self.lab is not None
        return self.lab.nodes

    def node(self, name: str) -> LabNode:
        return next(n for n in self.nodes if n.name == name)

    def on_node(self, name: str, command: str) -> tuple[int, str]:
        """Run `command` as root on node `name` over SSH: (exit status, output and errors)."""
        client = self.ssh_clients.get(name)
        if client is None or not client.get_transport() or \
                not client.get_transport().is_active():  # type: ignore[union-attr]
            assert self.lab is not None
            client = self.ssh_clients[name] = ssh(self.lab, self.node(name).ip)
        _, out, err = client.exec_command(command, timeout=120)
        text = out.read().decode() + err.read().decode()
        return out.channel.recv_exit_status(), text

    def node_state(self, name: str) -> str:
        return str(json.loads(self.cli("node", "show", name, "--json"))["state"])

    def console(self, vm: dict[str, Any]) -> str:
        """The VM's serial console log, as its node wrote it (read through the node's root)."""
        path = self.node(vm["node_name"]).merged / str(vm["console_log"]).lstrip("/")
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    def join_token(self, description: str) -> dict[str, Any]:
        r = requests.post(f"{self.layout.url}/api/v1/join-tokens", verify=str(self.layout.ca_file),
                          timeout=10, json={"description": description},
                          headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def roll_out(self, nodes: list[LabNode]) -> None:
        """The site playbook on `nodes`, each with its own one-time join token."""
        assert self.lab is not None and self.wheels is not None
        tokens = {n.name: self.join_token(f"lab rollout {n.name}") for n in nodes}
        roll_out(self.lab, nodes, self.layout, tokens, self.wheels, self.version,
                 self.root / "rollout")

    def stop(self) -> None:
        """Stop the controller by its PID, close SSH, remove the region's folder."""
        for client in self.ssh_clients.values():
            client.close()
        self.layout.service("controller").stop()
        shutil.rmtree(self.root, ignore_errors=True)


def roll_out(lab: Lab, nodes: list[LabNode], layout: allinone.Layout,
             tokens: dict[str, dict[str, Any]], wheels: Path, version: str,
             work: Path) -> None:
    """Run playbooks/site.yml on `nodes` with ansible-runner, as `vauban rollout run` will.

    `tokens` holds each node's join token answer (its `token` and the CA's `ca_sha256`).
    After success every node runs the agent, joined to the region. AssertionError with
    ansible's output when a host failed."""
    import ansible_runner

    work.mkdir(parents=True, exist_ok=True)
    hosts = {n.name: {"ansible_host": n.ip, "vauban_join_token": tokens[n.name]["token"]}
             for n in nodes}
    ca_sha256 = next(iter(tokens.values()))["ca_sha256"]
    inventory = {"all": {"vars": {
        "ansible_user": "root", "ansible_ssh_private_key_file": str(lab.ssh_key),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={lab.known_hosts} "
                                   "-o StrictHostKeyChecking=yes",
        "vauban_version": version, "vauban_wheels": str(wheels),
        "vauban_controller_url": layout.url, "vauban_ca_sha256": ca_sha256,
        # the lab's nodes share the host's clock and cannot make cgroups of their own
        "base_clock_owner": False, "hypervisor_libvirt_cgroup_controllers": [],
    }, "children": {"vauban_nodes": {"hosts": hosts}}}}
    result = ansible_runner.run(
        private_data_dir=str(work), project_dir=str(PLAYBOOKS), playbook="site.yml",
        inventory=inventory, quiet=True, timeout=ROLLOUT_TIMEOUT_S,
        envvars={"ANSIBLE_CONFIG": str(PLAYBOOKS / "ansible.cfg"),
                 "PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin"})
    if result.status != "successful":
        output = result.stdout.read() if result.stdout else ""
        raise AssertionError(f"rollout {result.status} (rc {result.rc}): {result.stats}\n"
                             f"{output[-6000:]}")


def wheels_archive(work: Path) -> tuple[Path, str]:
    """The rollout's wheel archive of the code under test, as `make dist` makes it: the
    vauban wheel built from this tree beside every wheel it needs (taken from dist/, which
    `make dist` fills, when it is there). Returns (archive, vauban's version)."""
    house = work / "wheelhouse"
    pip = [str(BIN / "python"), "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", "--no-build-isolation", "-w", str(work), str(REPO)],
                   check=True, capture_output=True)
    wheel = next(work.glob("vauban-*.whl"))
    deps = REPO / "dist" / "wheelhouse"
    offline = ["--no-index", "--find-links", str(deps)] if deps.is_dir() else []
    subprocess.run([*pip, *offline, "-w", str(house), str(wheel)], check=True,
                   capture_output=True)
    version = wheel.name.split("-")[1]
    archive = work / f"vauban-{version}-wheels.tar"
    with tarfile.open(archive, "w") as tar:
        for f in sorted(house.iterdir()):
            tar.add(f, arcname=f"./{f.name}")
    return archive, version


def start_ceph(lab: Lab) -> MiniCluster:
    """A single-node Ceph cluster on the lab bridge's address, pool `vauban`."""
    root = Path("/var/tmp") / f"vauban-lab-ceph-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o711)
    cluster = MiniCluster(root, address=str(lab.host_address.ip))
    try:
        cluster.start(pools=[CEPH_POOL])
    except BaseException:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def stop_ceph(cluster: MiniCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.dir, ignore_errors=True)


def all_nodes_up(region: LabRegion) -> bool:
    nodes = json.loads(region.cli("node", "list", "--json"))
    return sorted(n["name"] for n in nodes if n["state"] == "up") == \
        sorted(n.name for n in region.nodes)


@pytest.fixture(scope="session")
def lab_region(lab3: Lab, testguest_image: Path) -> Iterator[LabRegion]:
    """The lab's three nodes in one region, on Ceph, with the test guest image."""
    ceph = start_ceph(lab3)
    root = Path("/var/tmp") / f"vauban-lab-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o711)
    region = LabRegion(
        root=root, layout=allinone.Layout(root, free_port(), host=str(lab3.host_address.ip)),
        controller_env={
            "VAUBAN_NODE_DOWN_AFTER": str(DOWN_AFTER_S), "VAUBAN_STORAGE": "rbd",
            "VAUBAN_CEPH_CONF": str(ceph.conf),
            "VAUBAN_CEPH_KEYRING": str(ceph.client_keyring),
            "VAUBAN_CEPH_POOL": CEPH_POOL, "VAUBAN_CEPH_VOLUME_POOLS": CEPH_POOL},
        lab=lab3, ceph=ceph)
    try:
        region.wheels, region.version = wheels_archive(root / "dist")
        region.start_controller()
        region.token = allinone.admin_token(region.layout)
        region.roll_out(region.nodes)
        wait_for(lambda: all_nodes_up(region), NODE_UP_TIMEOUT_S, "every lab node to be up")
        region.cli("image", "import", str(testguest_image), "--name", "testguest")
        yield region
    finally:
        region.stop()
        stop_ceph(ceph)
