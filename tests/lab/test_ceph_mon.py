"""The ceph role's first monitor on the lab: a node in ceph_mons of a region without a
cluster bootstraps its monitor and manager; `ceph -s` from this machine, with the conf and
the controller's client keyring the role fetched, answers with one monitor in quorum; the
controller's settings take those files; a second run changes nothing; a node of a region
that has a cluster already is refused and left as it was.

The node is one of the lab's spare servers, and the site playbook runs on it alone as a
rollout runs it (ansible-runner, the lab's key and pinned host keys), with the variables a
rollout of a controller whose data_dir is the test's folder gives a node labelled
ceph=mon (controller.fleet.worker.ceph_vars, from the controller's settings): the agent's
roles are not needed for this, and the session's region keeps its own cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ansible_runner
import pytest

from controller import storage_settings
from controller.config import ControllerConfig
from controller.fleet.worker import ceph_vars
from lab import node as lab_node
from lab.main import Lab
from lab.node import LabNode
from tests.e2e.region import wait_for
from tests.lab.disks import LabDisk, inside, loop_disk
from tests.lab.fixtures import REGION_NODES

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
CLIENT = "vauban"
OSD_UP_TIMEOUT_S = 180  # a new OSD boots in seconds; a loaded 2-core machine takes longer
KEYRINGS = ("ceph.client.bootstrap-osd.keyring", f"ceph.client.{CLIENT}.keyring")


def _run_site(lab: Lab, config: ControllerConfig, mon: LabNode | None = None,
              osds: dict[str, Any] | None = None) -> tuple[ansible_runner.Runner, str]:
    """site.yml on `mon` alone in group ceph_mons, or on `osds` (LabDisk by node name) in
    ceph_osds, with the Ceph variables a rollout of the controller `config` gives them;
    the runner and what Ansible printed."""
    private = config.data_dir / f"run-{uuid.uuid4().hex[:8]}"
    private.mkdir(mode=0o700)
    osds = osds or {}
    groups: dict[str, Any] = {"ceph_mons": {"hosts": {} if mon is None else {
        mon.name: {"ansible_host": mon.ip, "ansible_user": "root"}}},
        "ceph_osds": {"hosts": {name: {
            "ansible_host": disk.node.ip, "ansible_user": "root",
            "ceph_osd_devices": [disk.device]} for name, disk in osds.items()}}}
    inventory = {"all": {
        "vars": {"ansible_ssh_private_key_file": str(lab.ssh_key),
                 "ansible_ssh_common_args": f"-o UserKnownHostsFile={lab.known_hosts} "
                                            "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
                 "ceph_volume_allow_loop_devices": True,
                 **ceph_vars(config, osds=bool(osds),
                             mon_nodes=[] if mon is None else [mon.name])},
        "children": groups,
    }}
    result = ansible_runner.run(
        private_data_dir=str(private), project_dir=str(PLAYBOOKS), playbook="site.yml",
        inventory=inventory, quiet=True,
        envvars={"ANSIBLE_CONFIG": str(PLAYBOOKS / "ansible.cfg"),
                 "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"})
    with result.stdout as out:
        return result, out.read()


@pytest.fixture
def mon_node(lab3: Lab) -> Iterator[LabNode]:
    """A spare lab server; afterwards its monitor, manager and Ceph files are gone."""
    node = lab3.nodes[REGION_NODES]
    try:
        yield node
    finally:
        for unit in (f"ceph-mgr@{node.name}", f"ceph-mon@{node.name}"):
            lab_node.run_inside(node, "systemctl", "disable", "--now", unit)
        for target in ("ceph-mon.target", "ceph-mgr.target", "ceph.target"):
            lab_node.run_inside(node, "systemctl", "disable", target)
        lab_node.run_inside(node, "sh", "-c",
                            "rm -rf /var/lib/ceph/mon/* /var/lib/ceph/mgr/* "
                            "/etc/ceph/ceph.conf /etc/ceph/*.keyring "
                            "/usr/local/sbin/vauban-ceph-mon")


@pytest.fixture
def osd_disk(lab3: Lab) -> Iterator[LabDisk]:
    """The other spare server with a disk: a loop device over a sparse file, its device
    node made in the node's /dev; afterwards its OSD and Ceph files are gone too."""
    node = lab3.nodes[REGION_NODES + 1]
    with loop_disk(node) as disk:
        try:
            yield disk
        finally:
            lab_node.run_inside(node, "sh", "-c",
                                "systemctl disable --now 'ceph-osd@*' ceph-osd.target "
                                "ceph.target; rm -rf /var/lib/ceph/osd/* "
                                "/etc/systemd/system/ceph-osd@*.service.d "
                                "/var/lib/ceph/bootstrap-osd/ceph.keyring "
                                "/etc/ceph/ceph.conf /usr/local/sbin/vauban-ceph-disk; "
                                "systemctl daemon-reload")


def _ceph(folder: Path, *command: str) -> Any:
    """`ceph` from this machine as the controller's client, with the fetched files."""
    out = subprocess.run(["ceph", "--conf", str(folder / "ceph.conf"), "--name",
                          f"client.{CLIENT}", "--keyring",
                          str(folder / f"ceph.client.{CLIENT}.keyring"),
                          "--connect-timeout", "30", *command, "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"ceph {command}: {out.stderr}"
    return json.loads(out.stdout)


def test_a_ceph_mon_node_bootstraps_the_first_monitor_and_a_second_run_changes_nothing(
        lab3: Lab, mon_node: LabNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VAUBAN_CEPH_CONF", "VAUBAN_CEPH_KEYRING", "VAUBAN_CEPH_BOOTSTRAP_OSD_KEYRING"):
        monkeypatch.delenv(var, raising=False)
    unconfigured = ControllerConfig.from_env(data_dir=tmp_path)  # a region without Ceph
    assert unconfigured.ceph_conf is None
    first, printed = _run_site(lab3, unconfigured, mon_node)
    assert first.rc == 0, printed[-6000:]
    assert first.stats["changed"].get(mon_node.name, 0) > 0
    for unit in (f"ceph-mon@{mon_node.name}", f"ceph-mgr@{mon_node.name}"):
        assert inside(mon_node, "systemctl", "is-active", unit).strip() == "active"

    folder = tmp_path / "ceph"  # what the controller received
    assert sorted(p.name for p in folder.iterdir()) == sorted(["ceph.conf", *KEYRINGS])
    assert (folder.stat().st_mode & 0o777) == 0o700
    for name in KEYRINGS:
        assert ((folder / name).stat().st_mode & 0o777) == 0o600
    fsid = storage_settings.fsid_from_conf(folder / "ceph.conf")
    assert storage_settings.mon_host_from_conf(folder / "ceph.conf") == \
        f"[v2:{mon_node.ip}:3300,v1:{mon_node.ip}:6789]"
    for name, client in zip(KEYRINGS, ("bootstrap-osd", CLIENT), strict=True):
        assert storage_settings.key_from_keyring(folder / name, client) not in printed
    status = _ceph(folder, "status")
    assert status["fsid"] == fsid
    assert status["health"]["status"] in ("HEALTH_OK", "HEALTH_WARN"), status["health"]
    assert status["monmap"]["num_mons"] == 1 and status["quorum_names"] == [mon_node.name]

    # the controller, given no cluster, takes the fetched one (the OSD nodes' key too)
    config = ControllerConfig.from_env(data_dir=tmp_path)
    assert (config.ceph_conf, config.ceph_keyring) == \
        (folder / "ceph.conf", folder / KEYRINGS[1])
    assert storage_settings.osd_vars(config.ceph_conf, config.ceph_bootstrap_osd_keyring)[
        "ceph_fsid"] == fsid

    # a second rollout, now with the cluster the controller has, changes nothing
    again, printed = _run_site(lab3, config, mon_node)
    assert again.rc == 0, printed[-6000:]
    assert again.stats["changed"].get(mon_node.name, 0) == 0, printed[-6000:]

    # a region whose cluster is another one: refused, nothing touched
    other = str(uuid.uuid4())
    other_conf = tmp_path / "other.conf"
    other_conf.write_text(f"[global]\nfsid = {other}\nmon_host = [v2:10.0.0.1:3300]\n")
    monkeypatch.setenv("VAUBAN_CEPH_CONF", str(other_conf))
    refused, printed = _run_site(lab3, ControllerConfig.from_env(data_dir=tmp_path),
                                 mon_node)
    assert refused.rc != 0
    assert f"the region's cluster is {other}" in printed, printed[-6000:]
    assert f"monitor of cluster {fsid}" in printed
    assert storage_settings.fsid_from_conf(folder / "ceph.conf") == fsid
    assert _ceph(folder, "status")["fsid"] == fsid
    assert os.path.exists(folder / KEYRINGS[0])


def test_osd_nodes_join_the_cluster_their_rollout_bootstraps_and_a_later_one_changes_nothing(
        lab3: Lab, mon_node: LabNode, osd_disk: LabDisk, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VAUBAN_CEPH_CONF", "VAUBAN_CEPH_KEYRING", "VAUBAN_CEPH_BOOTSTRAP_OSD_KEYRING"):
        monkeypatch.delenv(var, raising=False)
    osds = {osd_disk.node.name: osd_disk}
    first, printed = _run_site(lab3, ControllerConfig.from_env(data_dir=tmp_path), mon_node,
                               osds)
    assert first.rc == 0, printed[-6000:]
    folder = tmp_path / "ceph"
    try:
        wait_for(lambda: _ceph(folder, "status")["osdmap"]["num_up_osds"] == 1,
                 OSD_UP_TIMEOUT_S, f"the OSD of {osd_disk.node.name} to be up")
    except AssertionError as e:
        journal = lab_node.run_inside(osd_disk.node, "journalctl", "--no-pager", "-n", "40",
                                      "-u", "ceph-osd@*").stdout
        raise AssertionError(f"{e}\n{journal}") from None
    assert _ceph(folder, "status")["osdmap"]["num_in_osds"] == 1

    # a later rollout: the controller has the fetched cluster and key; nothing changes
    config = ControllerConfig.from_env(data_dir=tmp_path)
    assert config.ceph_bootstrap_osd_keyring == folder / KEYRINGS[0]
    again, printed = _run_site(lab3, config, mon_node, osds)
    assert again.rc == 0, printed[-6000:]
    assert not any(again.stats["changed"].values()), printed[-6000:]
    assert _ceph(folder, "status")["osdmap"]["num_osds"] == 1
