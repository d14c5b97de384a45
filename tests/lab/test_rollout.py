"""Servers added with `vauban node add` and rolled out to from the controller, on the
lab: pinned host keys, bad input named precisely, idempotent rollouts, a failed batch
that stops the rollout, labels in the inventory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lab import release
from tests.e2e.region import wait_for
from tests.lab.fixtures import REGION_NODES, ssh, ssh_run
from tests.lab.region import LabRegion

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
TESTGUEST = REPO / "var" / "images" / "testguest.raw"


def _refused(out: subprocess.CompletedProcess[str], *words: str) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    assert all(w in out.stderr for w in words), out.stderr
    return out.stderr


def test_added_servers_are_nodes_with_their_host_keys_pinned(lab_region: LabRegion) -> None:
    lab = lab_region.lab
    hosts = {h["name"]: h for h in lab_region.json("fleet", "list")}
    members = lab.nodes[:REGION_NODES]
    assert {name: h["host_key_sha256"] for name, h in hosts.items()} == \
        {n.name: n.host_key_sha256 for n in members}
    assert all(h["qualification"]["profile"] == "lab" for h in hosts.values())
    inventory = json.loads(lab_region.cli("inventory", "--list"))
    assert sorted(inventory["vauban_nodes"]["hosts"]) == sorted(n.name for n in members)
    assert inventory["_meta"]["hostvars"][lab.nodes[0].name]["ansible_host"] == lab.nodes[0].ip
    actions = [e["action"] for e in lab_region.json("audit", "list", "--limit", "200")]
    assert actions.count("fleet.add") == REGION_NODES and "rollout.run" in actions
    for node in members:  # the agent runs from the rollout's unit, its settings file
        with ssh(lab, node.ip) as client:
            assert ssh_run(client, "systemctl is-active vauban-agent").strip() == "active"
            assert "vauban-fleet" in ssh_run(client, "cat /root/.ssh/authorized_keys")


def test_a_second_rollout_changes_nothing(lab_region: LabRegion) -> None:
    out = lab_region.cli("rollout", "run")
    job_id = out.splitlines()[0].split()[1].rstrip(":")
    job = lab_region.json("rollout", "show", job_id)
    assert job["state"] == "succeeded"
    assert [(h["state"], h["changed"]) for h in job["hosts"]] == [("ok", 0)] * REGION_NODES
    log = lab_region.cli("rollout", "show", job_id, "--log")
    assert "PLAY RECAP" in log and "changed=0" in log and "changed=1" not in log


def test_bad_onboarding_is_refused_naming_the_server_and_the_cause(
        lab_region: LabRegion, tmp_path: Path) -> None:
    lab, member = lab_region.lab, lab_region.lab.nodes[1]
    first, second = lab.nodes[0], lab.nodes[REGION_NODES]  # a member, and the spare server
    # the host key of another server pinned for this one
    wrong_pin = _refused(lab_region.run_cli(
        "node", "add", second.ip, "--name", "other", "--ssh-key", str(lab.ssh_key),
        "--host-key-sha256", str(first.host_key_sha256)), second.ip, "presents host key",
        str(second.host_key_sha256), "not the one pinned")
    assert "refused" in wrong_pin
    # an SSH key the server does not accept
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    _refused(lab_region.run_cli(
        "node", "add", second.ip, "--name", "other", "--ssh-key", str(stranger),
        "--host-key-sha256", str(second.host_key_sha256)), f"root@{second.ip}:22",
        "refused the SSH key")
    # nobody at this address of the lab's own subnet
    empty = str(lab.host_address.ip).rsplit(".", 1)[0] + ".250"
    _refused(lab_region.run_cli(
        "node", "add", empty, "--name", "ghost", "--ssh-key", str(lab.ssh_key),
        "--host-key-sha256", str(second.host_key_sha256)), f"cannot reach root@{empty}:22")
    # a server that does not fit the profile asked for: its report is shown
    unfit = _refused(lab_region.run_cli(
        "node", "add", second.ip, "--name", "other", "--profile", "gpu",
        "--ssh-key", str(lab.ssh_key), "--known-hosts", str(lab.known_hosts)),
        f"{second.ip} does not pass the gpu profile", "min_gpus")
    assert "qualification (gpu): FAIL" in unfit
    # a server already in the region
    _refused(lab_region.add_node(1), f"a server named {member.name} is in the region already")
    refusals = [e for e in lab_region.json("audit", "list", "--action", "fleet.add")
                if e["outcome"] == "refused"]
    assert len(refusals) >= 5
    assert any("presents host key" in e["detail"]["error"] for e in refusals)


def test_labels_group_the_nodes_in_the_inventory(lab_region: LabRegion) -> None:
    node = lab_region.lab.nodes[2].name
    out = lab_region.cli("node", "label", node, "rack=r12", "tier=gold")
    assert out.strip() == f"{node}: rack=r12, tier=gold"
    try:
        inventory = json.loads(lab_region.cli("inventory", "--list"))
        assert inventory["label_rack_r12"]["hosts"] == [node]
        assert inventory["_meta"]["hostvars"][node]["vauban_labels"] == \
            {"rack": "r12", "tier": "gold"}
    finally:
        lab_region.cli("node", "label", node, "rack-", "tier-")
    assert "label_rack_r12" not in json.loads(lab_region.cli("inventory", "--list"))


def test_a_failed_batch_stops_the_rollout_and_later_batches_are_untouched(
        lab_region: LabRegion) -> None:
    lab = lab_region.lab
    broken, later = lab.nodes[0], lab.nodes[1]
    with ssh(lab, broken.ip) as client:  # a file where the base role makes a folder
        ssh_run(client, "mv /etc/udev/rules.d /etc/udev/rules.d.saved && "
                        "touch /etc/udev/rules.d")
        try:
            out = lab_region.run_cli("rollout", "run", "--batch", "1",
                                     "--limit", f"{broken.name},{later.name}")
        finally:
            ssh_run(client, "rm /etc/udev/rules.d && mv /etc/udev/rules.d.saved "
                            "/etc/udev/rules.d")
    err = _refused(out, f"batch 1 failed on {broken.name}")
    job_id = err.split("rollout ", 1)[1].split()[0]
    job = lab_region.json("rollout", "show", job_id)
    rows = {h["host"]: h for h in job["hosts"]}
    assert rows[broken.name]["state"] == "failed"
    assert "udev" in rows[broken.name]["task"] or "rules.d" in rows[broken.name]["message"]
    assert (rows[later.name]["state"], rows[later.name]["tasks_done"]) == ("not run", 0)
    operation = lab_region.cli("operation", "show", job["operation_id"])
    assert "failed" in operation


def test_a_spare_server_added_joins_with_its_own_rollout(lab_region: LabRegion) -> None:
    spare = lab_region.lab.nodes[REGION_NODES]
    out = lab_region.add_node(REGION_NODES)
    assert out.returncode == 0, out.stderr
    assert f"{spare.name} ({spare.ip}) added: host key {spare.host_key_sha256}" in out.stdout
    assert "succeeded" in out.stdout.splitlines()[-1]
    wait_for(lambda: lab_region.json("node", "show", spare.name)["state"] == "up",
             120, "the new node to report")


def test_a_server_added_as_a_controller_runs_one_and_a_second_rollout_changes_nothing(
        lab_region: LabRegion) -> None:
    server = lab_region.lab.nodes[REGION_NODES + 1]
    out = lab_region.add_node(REGION_NODES + 1, "--role", "controller")
    assert out.returncode == 0, out.stderr
    with ssh(lab_region.lab, server.ip) as client:
        assert ssh_run(client, "systemctl is-active vauban-controller").strip() == "active"
        assert ssh_run(client, "stat -c %U /var/lib/vauban/controller").strip() == "vauban"
        fetch = ("python3 -c \"import ssl, urllib.request; print(urllib.request.urlopen("
                 "'https://127.0.0.1:8443/api/v1/ca.pem', timeout=5, "
                 "context=ssl._create_unverified_context()).read().decode())\" 2>&1 || true")
        try:
            wait_for(lambda: "BEGIN CERTIFICATE" in ssh_run(client, fetch), 120,
                     "the new controller to answer")
        except AssertionError as e:
            journal = ssh_run(client, "journalctl -u vauban-controller --no-pager | tail -20")
            raise AssertionError(f"{e}\n{journal}") from None
    again = lab_region.cli("rollout", "run", "--limit", server.name)
    assert f"{server.name}" in again and "succeeded" in again
    job = lab_region.json("rollout", "show", again.splitlines()[0].split()[1].rstrip(":"))
    assert [(h["state"], h["changed"]) for h in job["hosts"]] == [("ok", 0)]


def test_an_upgrade_goes_node_by_node_and_running_vms_keep_running_moved_live(
        lab_region: LabRegion, tmp_path: Path) -> None:
    lab = lab_region.lab
    host = lab.nodes[0]
    if "testguest" not in {i["name"] for i in lab_region.json("image", "list")}:
        lab_region.cli("image", "import", str(TESTGUEST), "--name", "testguest")
    lab_region.cli("vm", "create", "upgrade-witness", "--image", "testguest", "--cpus", "1",
                   "--memory", "96", "--node", host.name, "--wait")
    try:
        vm = lab_region.json("vm", "show", "upgrade-witness")
        with ssh(lab, host.ip) as client:
            before = ssh_run(client, f"virsh -c qemu:///system domid {vm['id']}").strip()
        version = release.build_next_release(lab_region.root / "releases", tmp_path)
        members = [n.name for n in lab.nodes if n.name in
                   {h["name"] for h in lab_region.json("fleet", "list")}]
        # the upgrade moves the VM live: every node's libvirt TLS must be up first (its
        # agent enables it once, restarting libvirtd, soon after it joined)
        wait_for(lambda: all(lab_region.json("node", "show", n.name)["inventory"].get(
            "migration_ready") for n in lab_region.nodes), 300,
            "every node ready for migrations")
        out = lab_region.cli("rollout", "run", "--upgrade", "--batch", "1", "--version",
                             version, "--limit", ",".join(members[:2]))
        assert f"version {version}, batches of 1" in out and "succeeded" in out
        for name in members[:2]:
            node = lab_region.json("node", "show", name)
            assert node["inventory"]["agent_version"] == version
        # each batch's node was emptied first: the VM moved live, and was never stopped
        moved = lab_region.json("vm", "show", "upgrade-witness")
        assert moved["state"] == "running"
        trail = lab_region.json("audit", "list", "--action", "instance.migrate")
        assert [e for e in trail if e["target"] == f"instance/{vm['id']}"
                and e["outcome"] == "succeeded"], "the upgrade did not move the VM away"
        # where it runs now it arrived by migration: its console there has no boot
        assert "VAUBAN-TESTGUEST-BOOTED" not in lab_region.console(moved)
        if moved["node_name"] == host.name:  # moved back: another QEMU than the first
            with ssh(lab, host.ip) as client:
                assert ssh_run(client, f"virsh -c qemu:///system domid {vm['id']}").strip() \
                    != before
    finally:
        lab_region.cli("vm", "delete", "upgrade-witness", "--wait")
