"""End to end on Ceph: a region whose VMs boot from RBD clones and use RBD volumes,
against the session's real Ceph cluster, driven with the CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import rbd

from agent.drivers.storage.rbd.minicluster import MiniCluster
from agent.drivers.storage.rbd.names import image_name, root_disk_name, volume_name
from controller.storage_settings import key_from_keyring
from tests.e2e.leaks import holds, leaks_in_files, run_logs
from tests.e2e.region import E2ERegion, console_has, domain_exists, is_running, rbd_env, wait_for

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 180


@pytest.fixture(scope="module")
def region(libvirtd: list[int], testguest_image: Path,
           ceph_minicluster: MiniCluster) -> Iterator[E2ERegion]:
    with E2ERegion.running(testguest_image, rbd_env(ceph_minicluster, "vauban,vauban-fast")) as r:
        yield r


def rbd_names(ceph_admin: Any, pool: str = "vauban") -> set[str]:
    with ceph_admin.open_ioctx(pool) as ioctx:
        return set(rbd.RBD().list(ioctx))


def domain_disk(vm_id: str, target: str) -> tuple[int | None, bool]:
    """(capacity in bytes the running domain shows for `target`, or None when it is not
    running; whether the persistent definition still holds a disk at `target`)."""
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.lookupByUUIDString(vm_id)
        capacity = int(dom.blockInfo(target)[0]) if dom.isActive() else None
        defined = f"dev='{target}'" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        return capacity, defined
    finally:
        conn.close()


def guest_disks(log: str) -> str | None:
    """The disks the guest printed last (`vauban-testguest disks=...` on its console)."""
    lines = [ln for ln in Path(log).read_text(errors="replace").splitlines() if "disks=" in ln]
    return lines[-1].split("disks=", 1)[1].strip() if lines else None


def test_vm_boots_from_an_rbd_clone_and_uses_volumes(region: E2ERegion, ceph_admin: Any,
                                                      tmp_path: Path) -> None:
    status = wait_for(lambda: (s := json.loads(region.cli("status", "--json")))["storage"]
                      and s, 30, "a storage report")
    assert status["storage_driver"] == "rbd" and status["storage"]["health"] == "HEALTH_OK"
    assert {p["pool"] for p in status["storage"]["pools"]} >= {"vauban", "vauban-fast"}

    name, vol = f"ceph-{uuid.uuid4().hex[:6]}", f"data-{uuid.uuid4().hex[:6]}"
    region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
               "--wait")
    vm = region.vm(name)
    assert is_running(vm["id"])
    log = str(vm["console_log"])
    wait_for(lambda: console_has(log, f"vauban-testguest hostname={name}"), BOOT_TIMEOUT,
             "the hostname from the seed")
    wait_for(lambda: guest_disks(log) == "vda,vdb", BOOT_TIMEOUT, "the guest's disks")
    with ceph_admin.open_ioctx("vauban") as ioctx, rbd.Image(ioctx, root_disk_name(vm["id"]),
                                                             read_only=True) as root:
        parent = root.parent_info()  # a copy-on-write clone of the image's base snapshot
    assert parent[1] == image_name(vm["image_id"]) and parent[2] == "base"
    region.cli("vm", "flatten", name, "--wait")  # live, while the guest runs
    with ceph_admin.open_ioctx("vauban") as ioctx, rbd.Image(ioctx, root_disk_name(vm["id"]),
                                                             read_only=True) as root:
        with pytest.raises(rbd.ImageNotFound):
            root.parent_info()  # no parent any more
    assert is_running(vm["id"])

    region.cli("volume", "create", vol, "--size", "1", "--pool", "vauban-fast", "--wait")
    shown = json.loads(region.cli("volume", "show", vol, "-o", "json"))
    assert shown["state"] == "available" and shown["size_bytes"] == 1024**3
    assert volume_name(shown["id"]) in rbd_names(ceph_admin, "vauban-fast")

    region.cli("volume", "attach", vol, "--vm", name, "--wait")
    wait_for(lambda: guest_disks(log) == "vda,vdb,vdc", 60, "the guest to see the volume")
    shown = json.loads(region.cli("volume", "show", vol, "-o", "json"))
    assert shown["state"] == "in-use" and shown["attached_to"] == name and shown["target"] == "vdc"
    refused = region.run_cli("volume", "delete", vol)
    assert refused.returncode == 1 and "detach it first" in refused.stderr

    region.cli("volume", "snapshot", vol, "s1", "--wait")
    assert domain_disk(vm["id"], "vdc")[0] == 1024**3
    region.cli("volume", "resize", vol, "--size", "2", "--wait")
    assert domain_disk(vm["id"], "vdc")[0] == 2 * 1024**3  # the running guest was told
    region.cli("volume", "detach", vol, "--wait")
    wait_for(lambda: guest_disks(log) == "vda,vdb", 60, "the guest to lose the volume")
    region.cli("volume", "rollback", vol, "s1", "--wait")
    copy = f"{vol}-copy"
    region.cli("volume", "create", copy, "--size", "2", "--from", f"{vol}@s1", "--wait")
    listed = {v["name"]: v for v in json.loads(region.cli("volume", "list", "--json"))}
    assert listed[vol]["size_gib"] == 2 and listed[vol]["snapshots"] == ["s1"]
    assert listed[copy]["source"] == f"{vol}@s1" and listed[copy]["state"] == "available"

    region.cli("volume", "delete", copy, "--wait")
    region.cli("volume", "delete", vol, "--wait")
    assert volume_name(shown["id"]) not in rbd_names(ceph_admin, "vauban-fast")
    region.cli("vm", "delete", name, "--wait")
    assert not domain_exists(vm["id"])
    assert root_disk_name(vm["id"]) not in rbd_names(ceph_admin)


def test_volume_detaches_from_a_stopped_vm(region: E2ERegion, ceph_admin: Any) -> None:
    """Regression: the API refused it (volumes detached from running VMs only)."""
    name, vol = f"stop-{uuid.uuid4().hex[:6]}", f"data-{uuid.uuid4().hex[:6]}"
    region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
               "--wait")
    vm = region.vm(name)
    region.cli("volume", "create", vol, "--size", "1", "--wait")
    region.cli("volume", "attach", vol, "--vm", name, "--wait")
    region.cli("vm", "stop", name, "--wait")
    assert not is_running(vm["id"]) and domain_disk(vm["id"], "vdc") == (None, True)

    region.cli("volume", "detach", vol, "--wait")

    assert domain_disk(vm["id"], "vdc") == (None, False)  # gone from the definition
    shown = json.loads(region.cli("volume", "show", vol, "-o", "json"))
    assert shown["state"] == "available" and shown["attached_to"] is None
    region.cli("volume", "delete", vol, "--wait")  # free: nothing holds it any more
    assert volume_name(shown["id"]) not in rbd_names(ceph_admin)
    region.cli("vm", "delete", name, "--wait")
    assert not domain_exists(vm["id"])


def test_volume_bad_input(region: E2ERegion) -> None:
    out = region.run_cli("volume", "create", "v-bad", "--size", "1", "--pool", "rbd")
    assert out.returncode == 1 and "unknown pool 'rbd'" in out.stderr
    out = region.run_cli("volume", "attach", "nope", "--vm", "nope")
    assert out.returncode == 1 and "volume 'nope' does not exist" in out.stderr
    out = region.run_cli("volume", "create", "v-bad", "--size", "0")
    assert out.returncode == 1 and "'size_gib'" in out.stderr
    assert "v-bad" not in region.cli("volume", "list")


def test_ceph_unreachable_is_retried_and_the_agent_keeps_running(
        region: E2ERegion, ceph_minicluster: MiniCluster) -> None:
    name = f"ceph-{uuid.uuid4().hex[:6]}"
    agent_pid = region.layout.service("agent").pid()
    ceph_minicluster.stop()
    try:
        region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1",
                   "--memory", "256", "--no-wait")
        # storage is sampled on its own thread: the heartbeat goes on, saying Ceph is silent
        status = wait_for(lambda: (s := json.loads(region.cli("status", "--json")))["storage"]
                          ["health"] == "UNREACHABLE" and s, 60, "the node to report Ceph down")
        assert status["nodes_down"] == 0
        # the create's first Ceph call fails after its 30 s timeout; it is reported at once
        shown = wait_for(lambda: (v := region.vm(name))["error"] and v, 120,
                         "the node to report the Ceph error")
        assert shown["error"].startswith("retrying: ") and shown["state"] == "creating"
        assert json.loads(region.cli("status", "--json"))["nodes_down"] == 0
        assert region.layout.service("agent").pid() == agent_pid  # the agent keeps running
    finally:
        ceph_minicluster.start()
    wait_for(lambda: region.vm(name)["state"] == "running", 180, "the create to go through")
    region.cli("vm", "delete", name, "--wait")


def test_the_ceph_client_key_reaches_no_log_and_no_operator(
        region: E2ERegion, ceph_minicluster: MiniCluster) -> None:
    """Nodes get the key over mutual TLS (by design); operators never see it, and no log of
    the run holds it, in any encoding."""
    key = key_from_keyring(ceph_minicluster.client_keyring, "vauban").encode()
    node = json.loads(region.cli("node", "list", "--json"))[0]["name"]
    answers = [region.cli(*args) for args in (
        ("status", "--json"), ("node", "list", "--json"), ("node", "show", node, "--json"),
        ("vm", "list", "--json"), ("volume", "list", "--json"), ("audit", "list", "--json"))]
    assert not [a for a in answers if holds(a.encode(), key)]
    assert leaks_in_files({"ceph client key": key}, run_logs(region.root)) == []
