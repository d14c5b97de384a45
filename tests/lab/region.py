"""A real multi-node region on the node lab, one per test session.

The controller runs on this machine, listening on the lab bridge's address; the lab's
first three nodes are added to it as an operator adds servers (`vauban node add`: host
key pinned, hardware qualified) and one `vauban rollout run` installs the agent built
from this tree on all three; VM disks are RBD clones on a single-node Ceph cluster
listening on the bridge address too (the nodes reach nothing else). The tests drive it
with the `vauban` CLI, as an operator would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import pytest

from agent.drivers.storage.rbd.minicluster import MiniCluster
from controller import allinone
from lab.main import Lab
from lab.node import LabNode
from lab.region import controller_env, node_add_args
from tests.e2e.region import E2ERegion, free_port, wait_for
from tests.lab.fixtures import REGION_NODES, ssh

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
BIN = Path(sys.executable).parent
DOWN_AFTER_S = 15  # a node silent this long is shown down
FENCE_AFTER_S = 7.5  # + heartbeat 2 s + report 5 s stays under DOWN_AFTER_S (controller.config)
CEPH_POOL = "vauban"
ROLLOUT_TIMEOUT_S = 900
NODE_UP_TIMEOUT_S = 180
BOOTSTRAP_OSD_KEYRING = "ceph.client.bootstrap-osd.keyring"  # in the cluster's folder


@dataclass
class LabRegion(E2ERegion):
    """The E2E region's CLI helpers, with the agents on the lab's nodes."""

    lab: Lab | None = None
    ceph: MiniCluster | None = None
    ssh_clients: dict[str, paramiko.SSHClient] = field(default_factory=dict)

    @property
    def nodes(self) -> list[LabNode]:
        """The nodes the region was made of (the lab's spare servers are not)."""
        assert self.lab is not None
        return self.lab.nodes[:REGION_NODES]

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

    def json(self, *args: str) -> Any:
        """The CLI's JSON output of `args` (with --json)."""
        return json.loads(self.cli(*args, "--json"))

    def controller_log_tail(self, lines: int = 40) -> str:
        """The end of the controller's log, for a failure's message."""
        log = self.layout.service("controller").logfile
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no controller log)"

    def add_node(self, index: int, *extra: str) -> subprocess.CompletedProcess[str]:
        assert self.lab is not None
        return self.run_cli(*node_add_args(self.lab, index), *extra)

    def roll_out(self, nodes: list[LabNode]) -> None:
        """`vauban rollout run` on `nodes` (a node that left the region joins again)."""
        self.cli("rollout", "run", "--limit", ",".join(n.name for n in nodes))

    def stop(self) -> None:
        """Stop the controller by its PID, close SSH, remove the region's folder."""
        for client in self.ssh_clients.values():
            client.close()
        self.layout.service("controller").stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_ceph(lab: Lab) -> MiniCluster:
    """A single-node Ceph cluster on the lab bridge's address, pool `vauban`, the keyring
    of its client.bootstrap-osd (for nodes that make OSDs) and that of the controller's
    client.vauban-fence."""
    root = Path("/var/tmp") / f"vauban-lab-ceph-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o711)
    cluster = MiniCluster(root, address=str(lab.host_address.ip))
    try:
        cluster.start(pools=[CEPH_POOL])
        bootstrap_osd_keyring(cluster)
        cluster.ensure_fence_client()
    except BaseException:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def bootstrap_osd_keyring(cluster: MiniCluster) -> Path:
    """client.bootstrap-osd made on `cluster` (as `ceph auth get client.bootstrap-osd`
    gives it an operator), its keyring in the cluster's folder, 0600."""
    with cluster.admin() as admin:
        ret, out, err = admin.mon_command(json.dumps({
            "prefix": "auth get-or-create", "entity": "client.bootstrap-osd",
            "caps": ["mon", "allow profile bootstrap-osd"], "format": "json"}), b"")
    assert ret == 0, err
    keyring = cluster.dir / BOOTSTRAP_OSD_KEYRING
    fd = os.open(keyring, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"[client.bootstrap-osd]\n\tkey = {json.loads(out)[0]['key']}\n")
    return keyring


def stop_ceph(cluster: MiniCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.dir, ignore_errors=True)


def all_nodes_up(region: LabRegion) -> bool:
    nodes = json.loads(region.cli("node", "list", "--json"))
    return sorted(n["name"] for n in nodes if n["state"] == "up") == \
        sorted(n.name for n in region.nodes)


@contextmanager
def region_on(lab: Lab, image: Path) -> Iterator[LabRegion]:
    """The lab's first three nodes in one region, on a Ceph cluster of its own, with the
    test guest image `image`; everything stopped (by PID) and removed afterwards."""
    ceph = start_ceph(lab)
    root = Path("/var/tmp") / f"vauban-lab-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o711)
    region = LabRegion(
        root=root, layout=allinone.Layout(root, free_port(), host=str(lab.host_address.ip)),
        controller_env={
            "VAUBAN_NODE_DOWN_AFTER": str(DOWN_AFTER_S), "VAUBAN_STORAGE": "rbd",
            "VAUBAN_CEPH_CONF": str(ceph.conf),
            "VAUBAN_CEPH_KEYRING": str(ceph.client_keyring),
            "VAUBAN_CEPH_POOL": CEPH_POOL, "VAUBAN_CEPH_VOLUME_POOLS": CEPH_POOL,
            "VAUBAN_CEPH_BOOTSTRAP_OSD_KEYRING": str(ceph.dir / BOOTSTRAP_OSD_KEYRING),
            "VAUBAN_CEPH_FENCE_KEYRING": str(ceph.fence_keyring),
            # a node fences itself before it is counted down (controller.config)
            "VAUBAN_FENCE_AFTER": str(FENCE_AFTER_S),
            # a fencing step that died with its controller is retried this soon (the
            # lab's BMC answers within its 30 s retries, or not at all)
            "VAUBAN_FENCE_STEP_TIMEOUT": "45",
            "VAUBAN_STORAGE_DOWN_AFTER": str(DOWN_AFTER_S),
            **controller_env(lab, root)},
        lab=lab, ceph=ceph)
    try:
        region.start_controller()
        region.token = allinone.admin_token(region.layout)
        for i, node in enumerate(region.nodes):
            added = region.add_node(i, "--no-rollout")
            assert added.returncode == 0, f"node add {node.name}: {added.stderr}\n" \
                f"{region.controller_log_tail()}"
        region.cli("rollout", "run")
        wait_for(lambda: all_nodes_up(region), NODE_UP_TIMEOUT_S, "every lab node to be up")
        region.cli("image", "import", str(image), "--name", "testguest")
        yield region
    finally:
        region.stop()
        stop_ceph(ceph)


@pytest.fixture(scope="session")
def lab_region(lab3: Lab, testguest_image: Path) -> Iterator[LabRegion]:
    """The lab's first three nodes in one region, on Ceph, with the test guest image."""
    with region_on(lab3, testguest_image) as region:
        yield region
