"""VM lifecycle through the API, with the agent's side played by status reports."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from agent.protocol import GuestInfo, GuestInterface, ObservedVm, ObservedVmState, StorageStatus
from controller.app import create_app
from controller.bootstrap import open_region
from controller.config import ControllerConfig
from controller.db.models import AuditEvent, Instance, Node, Operation
from controller.region import Region
from controller.services.housekeeping import expire_operations
from tests.functional.helpers import RAW_IMAGE, Api, storage
from tests.functional.test_volumes import ceph_files

GB, GIB = 10**9, 1024**3


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    a = Api(client, region)
    assert a.import_image("tiny", RAW_IMAGE).status_code == 201
    return a


def _create(api: Api, name: str = "web-1", **extra: Any) -> Any:
    body = {"name": name, "image": "tiny", "vcpus": 1, "memory_mib": 256, **extra}
    return api.post("/api/v1/instances", json=body)


def _observed(vm: dict[str, Any], state: ObservedVmState, power_seq: int | None = None,
              error: str | None = None, failed_power_seq: int | None = None) -> ObservedVm:
    return ObservedVm(id=vm["id"], name=vm["name"], state=state,
                      power_seq=vm["power_seq"] if power_seq is None else power_seq, error=error,
                      failed_power_seq=failed_power_seq)


def _count(region: Region, model: Any) -> int:
    with region.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


def test_create_reaches_the_node_and_finishes_when_running(api: Api) -> None:
    node = api.join_node("n1")
    before = api.desired(node)["generation"]
    r = _create(api, user_data="#!/bin/sh\necho hi\n")
    assert r.status_code == 202
    op = r.json
    assert op["kind"] == "instance.create" and op["state"] == "pending"
    desired = api.desired(node, after=before)
    assert desired["generation"] == before + 1
    [vm] = desired["vms"]
    assert vm["name"] == "web-1" and vm["power"] == "running"
    assert vm["seed"] == {"instance_id": vm["id"], "hostname": "web-1",
                          "user_data": "#!/bin/sh\necho hi\n", "public_keys": [],
                          "default_user": None}
    assert vm["image"]["name"] == "tiny" and len(vm["image"]["sha256"]) == 64
    assert api.get("/api/v1/instances/web-1").json["state"] == "creating"
    api.report(node, [_observed(vm, ObservedVmState.RUNNING)], applied=desired["generation"])
    done = api.get(f"/api/v1/operations/{op['id']}").json
    assert done["state"] == "succeeded" and done["progress"] == 100
    shown = api.get("/api/v1/instances/web-1").json
    assert shown["state"] == "running" and shown["node_name"] == "n1"


def test_long_poll_wakes_on_create(api: Api) -> None:
    node = api.join_node("n1")
    gen = api.desired(node)["generation"]
    got: dict[str, Any] = {}
    waiter = threading.Thread(
        target=lambda: got.update(api.desired(node, after=gen, wait=20)))
    waiter.start()
    assert _create(api).status_code == 202
    waiter.join(timeout=20)
    assert not waiter.is_alive()
    assert got["generation"] == gen + 1 and got["vms"][0]["name"] == "web-1"


def test_long_poll_ends_with_nothing_new_after_its_wait(api: Api) -> None:
    node = api.join_node("n1")
    gen = api.desired(node)["generation"]
    r = api.client.get(f"/agent/v1/nodes/{node.id}/desired?after={gen}&wait=0.3",
                       environ_overrides=node.environ())
    assert (r.status_code, r.data) == (204, b"")


def test_stop_start_and_delete(api: Api, region: Region) -> None:
    node = api.join_node("n1")
    _create(api)
    vm = api.desired(node)["vms"][0]
    api.report(node, [_observed(vm, ObservedVmState.RUNNING)], applied=99)
    stop = api.post("/api/v1/instances/web-1/stop")
    assert stop.status_code == 202
    d = api.desired(node)
    assert d["vms"][0]["power"] == "stopped" and d["vms"][0]["power_seq"] == 2
    api.report(node, [_observed(vm, ObservedVmState.RUNNING, 1)], applied=d["generation"])
    # the node still shows the old power action: the stop is not done yet
    assert api.get(f"/api/v1/operations/{stop.json['id']}").json["state"] == "pending"
    api.report(node, [_observed(vm, ObservedVmState.STOPPED, 2)], applied=d["generation"])
    assert api.get(f"/api/v1/operations/{stop.json['id']}").json["state"] == "succeeded"
    start = api.post("/api/v1/instances/web-1/start")
    d = api.desired(node)
    api.report(node, [_observed(vm, ObservedVmState.RUNNING, 3)], applied=d["generation"])
    assert api.get(f"/api/v1/operations/{start.json['id']}").json["state"] == "succeeded"
    delete = api.delete("/api/v1/instances/web-1")
    assert delete.status_code == 202
    d = api.desired(node)
    assert d["vms"] == []
    assert api.get("/api/v1/instances/web-1").json["state"] == "deleting"
    api.report(node, [], applied=d["generation"])
    assert api.get(f"/api/v1/operations/{delete.json['id']}").json["state"] == "succeeded"
    assert api.get("/api/v1/instances/web-1").status_code == 404
    with region.sessions() as db:
        actions = [e.action for e in db.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert actions[-4:] == ["instance.stop", "instance.start", "instance.delete",
                            "instance.delete"]


def test_agent_error_fails_the_operation(api: Api) -> None:
    node = api.join_node("n1")
    op = _create(api).json
    d = api.desired(node)
    vm = d["vms"][0]
    # an error about an older power action does not decide this operation
    api.report(node, [_observed(vm, ObservedVmState.ERROR, 0, error="old", failed_power_seq=0)])
    assert api.get(f"/api/v1/operations/{op['id']}").json["state"] == "pending"
    api.report(node, [_observed(vm, ObservedVmState.ERROR, 0, error="disk full",
                                failed_power_seq=1)], applied=d["generation"])
    failed = api.get(f"/api/v1/operations/{op['id']}").json
    assert failed["state"] == "failed" and failed["error"] == "disk full"
    shown = api.get("/api/v1/instances/web-1").json
    assert shown["state"] == "error" and shown["error"] == "disk full"


def test_guest_poweroff_is_adopted_not_undone(api: Api) -> None:
    node = api.join_node("n1")
    _create(api)
    d = api.desired(node)
    vm = d["vms"][0]
    api.report(node, [_observed(vm, ObservedVmState.RUNNING)], applied=d["generation"])
    api.report(node, [_observed(vm, ObservedVmState.STOPPED)], applied=d["generation"])
    after = api.desired(node, after=d["generation"])
    assert after["vms"][0]["power"] == "stopped"
    assert api.get("/api/v1/instances/web-1").json["desired_power"] == "stopped"


def test_power_action_while_busy_is_a_conflict(api: Api) -> None:
    api.join_node("n1")
    _create(api)
    r = api.post("/api/v1/instances/web-1/stop")
    assert r.status_code == 409 and "instance.create" in r.json["detail"]


@pytest.mark.parametrize("body, field", [
    ({"vcpus": 0}, "vcpus"),
    ({"memory_mib": 10}, "memory_mib"),
    ({"name": "Web_1"}, "name"),
    ({"root_disk_gib": 0}, "root_disk_gib"),
    ({"vcpus": "two"}, "vcpus"),
])
def test_out_of_range_input_is_refused(api: Api, region: Region, body: dict[str, Any],
                                       field: str) -> None:
    api.join_node("n1")
    r = _create(api, **body)
    assert r.status_code == 422
    assert f"'{field}'" in r.json["detail"]
    assert _count(region, Instance) == 0


ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def test_the_default_users_keys_and_name_reach_the_seed(api: Api) -> None:
    node = api.join_node("n1")
    before = api.desired(node)["generation"]
    r = _create(api, ssh_keys=[f"  {ED25519} alice@laptop\n"], default_user="ops",
                hostname="web-host")
    assert r.status_code == 202, r.json
    [vm] = api.desired(node, after=before)["vms"]
    assert vm["seed"]["public_keys"] == [f"{ED25519} alice@laptop"]  # stripped, comment kept
    assert (vm["seed"]["default_user"], vm["seed"]["hostname"]) == ("ops", "web-host")
    shown = api.get("/api/v1/instances/web-1").json
    assert shown["ssh_keys"] == [f"{ED25519} alice@laptop"] and shown["default_user"] == "ops"


def test_the_virtual_hardware_asked_for_reaches_the_node(api: Api) -> None:
    node = api.join_node("n1")
    r = api.import_image("efi", RAW_IMAGE, extra="&firmware=bios,uefi&secure_boot=true")
    assert r.status_code == 201 and (r.json["firmware"], r.json["secure_boot"]) == (
        "bios,uefi", True)
    before = api.desired(node)["generation"]
    assert _create(api, image="efi", firmware="uefi", secure_boot=True, machine="q35",
                   disk_bus="virtio-scsi").status_code == 202
    [vm] = api.desired(node, after=before)["vms"]
    machine = {"firmware": "uefi", "secure_boot": True, "machine": "q35",
               "disk_bus": "virtio-scsi"}
    assert vm["machine"] == machine
    assert api.get("/api/v1/instances/web-1").json["machine"] == machine
    assert _create(api, "web-2").status_code == 202  # the defaults: BIOS, i440fx, virtio-blk
    assert api.get("/api/v1/instances/web-2").json["machine"] == {
        "firmware": "bios", "secure_boot": False, "machine": "i440fx", "disk_bus": "virtio-blk"}


@pytest.mark.parametrize("body, words", [
    ({"firmware": "uefi"}, "image 'tiny' boots with BIOS only (as imported); ask for "
     "firmware bios, or import the image again with firmware uefi if it can"),
    ({"firmware": "uefi", "machine": "q35", "secure_boot": True, "image": "efi"},
     "image 'efi' is not signed for Secure Boot (as imported)"),
    ({"firmware": "uefi", "secure_boot": True}, "secure_boot needs firmware uefi and "
     "machine q35"),
    ({"machine": "pc"}, "body field 'machine'"),
    ({"disk_bus": "ide"}, "body field 'disk_bus'"),
])
def test_hardware_the_image_cannot_boot_on_is_refused(api: Api, region: Region,
                                                       body: dict[str, Any], words: str) -> None:
    api.join_node("n1")
    assert api.import_image("efi", RAW_IMAGE, extra="&firmware=uefi").status_code == 201
    r = _create(api, **body)
    assert r.status_code == 422, r.json
    assert words in r.json["detail"], r.json["detail"]
    assert _count(region, Instance) == 0


def test_an_image_said_signed_but_not_uefi_is_refused(api: Api) -> None:
    r = api.import_image("bad", RAW_IMAGE, extra="&secure_boot=true")
    assert r.status_code == 422 and "secure_boot is a UEFI feature" in r.json["detail"]


def test_what_the_guest_agent_says_is_shown_and_goes_with_it(api: Api, region: Region) -> None:
    node = api.join_node("n1")
    before = api.desired(node)["generation"]
    assert _create(api).status_code == 202
    [vm] = api.desired(node, after=before)["vms"]
    guest = GuestInfo(os_id="debian", os_name="Debian GNU/Linux 12 (bookworm)",
                      os_version="12", interfaces=[GuestInterface(
                          name="eth0", mac="52:54:00:00:00:01", addresses=["10.77.0.10/24"])])
    running = _observed(vm, ObservedVmState.RUNNING)
    api.report(node, [running.model_copy(update={"guest": guest})], applied=before + 1)
    shown = api.get("/api/v1/instances/web-1").json
    assert shown["guest"] == guest.model_dump(mode="json")
    with region.reads() as db:
        updated = db.scalars(select(Instance.updated_at)).one()
    api.report(node, [running.model_copy(update={"guest": guest})], applied=before + 1)
    with region.reads() as db:  # the same word again writes nothing
        assert db.scalars(select(Instance.updated_at)).one() == updated
    api.report(node, [running], applied=before + 1)  # the agent stopped answering
    assert api.get("/api/v1/instances/web-1").json["guest"] is None


@pytest.mark.parametrize("body, words", [
    ({"ssh_keys": ["-----BEGIN OPENSSH PRIVATE KEY-----"]},
     "ssh key 1 ('-----BEGIN OPENSSH PRIVATE KEY-----'): not an SSH public key of a known "
     "type"),
    ({"ssh_keys": [ED25519, "ssh-ed25519 AAAA!!!"]}, "ssh key 2 ('ssh-ed25519 AAAA!!!'): the "
     "key's base64 is damaged"),
    ({"ssh_keys": [ED25519.replace("ssh-ed25519", "ssh-rsa")]}, "is not a ssh-rsa key"),
    ({"ssh_keys": [f'command="/bin/sh" {ED25519}']}, "not an SSH public key"),
    ({"ssh_keys": [f"{ED25519}\n{ED25519}"]}, "ssh key 1: one line"),
    ({"user_data": "#cloud-config\nusers: [\n"}, "user-data is #cloud-config but not valid "
     "YAML at line 3, column 1"),
    ({"user_data": "#cloud-config\n- a list\n"}, "its YAML is not a mapping of keys"),
    ({"user_data": "#cloud-config\n" + "a: b\n" * 14000}, "body field 'user_data'"),
    ({"user_data": "#!/bin/sh\n# " + "é" * 33000}, "user-data is 66012 bytes; a VM's seed "
     "takes at most 65536"),
    ({"default_user": "Root!"}, "body field 'default_user'"),
])
def test_keys_and_user_data_that_cloud_init_cannot_use_are_refused(
        api: Api, region: Region, body: dict[str, Any], words: str) -> None:
    api.join_node("n1")
    r = _create(api, **body)
    assert r.status_code == 422, r.json
    assert words in r.json["detail"], r.json["detail"]
    assert _count(region, Instance) == 0


def test_unknown_image_is_refused(api: Api, region: Region) -> None:
    api.join_node("n1")
    r = _create(api, image="nope")
    assert r.status_code == 422 and "image 'nope' does not exist" in r.json["detail"]
    assert _count(region, Instance) == 0


def test_name_clash_is_a_conflict(api: Api, region: Region) -> None:
    api.join_node("n1")
    assert _create(api).status_code == 202
    r = _create(api)
    assert r.status_code == 409 and "web-1" in r.json["detail"]
    # named as the field's error too, so a form shows it next to the name
    assert r.json["errors"] == [{"field": "name", "message": r.json["detail"]}]
    assert _count(region, Instance) == 1


def test_no_node_fits_explains_why_and_changes_nothing(api: Api, region: Region) -> None:
    node = api.join_node("small", cpus=1, memory_mib=1024)
    gen = api.desired(node)["generation"]
    r = _create(api, memory_mib=4096)
    assert r.status_code == 409
    assert r.json["type"].endswith("/no-valid-host")
    assert "small has 512 MiB memory free, 4096 asked" in r.json["detail"]
    r = _create(api, vcpus=5)
    assert "small has 4 vCPUs free, 5 asked" in r.json["detail"]
    assert _count(region, Instance) == 0
    assert api.desired(node)["generation"] == gen


def test_disk_smaller_than_image_minimum_is_refused(api: Api) -> None:
    api.join_node("n1")
    assert api.import_image("big", RAW_IMAGE, sha256=None).status_code == 201
    with api.region.sessions() as db, db.begin():
        from controller.db.models import Image
        db.scalars(select(Image).where(Image.name == "big")).one().min_disk_gib = 5
    r = _create(api, image="big", root_disk_gib=2)
    assert r.status_code == 422 and "needs (5 GiB)" in r.json["detail"]


def test_a_disk_larger_than_the_node_has_is_refused(api: Api, region: Region) -> None:
    node = api.join_node("n1", disk=storage(total_bytes=100 * GB, free_bytes=84 * GB))
    gen = api.desired(node)["generation"]
    r = _create(api, "huge", root_disk_gib=65536)
    assert r.status_code == 409, r.json
    assert r.json["type"].endswith("/no-valid-host")
    assert r.json["reasons"] == {"n1": "needs 65536 GiB of disk, 93 GiB free of 93 GiB "
                                       "at ratio 1.0"}
    assert "n1 needs 65536 GiB of disk" in r.json["detail"]
    assert _count(region, Instance) == 0
    assert api.desired(node)["generation"] == gen


def test_allocated_root_disks_count_against_the_node(api: Api, region: Region) -> None:
    api.join_node("n1", disk=storage(total_bytes=10 * GIB))
    assert _create(api, "a", root_disk_gib=6).status_code == 202
    r = _create(api, "b", root_disk_gib=5)
    assert r.status_code == 409
    assert r.json["reasons"] == {"n1": "needs 5 GiB of disk, 4 GiB free of 10 GiB at ratio 1.0"}
    # a disk of the image's size (1 MiB, rounded up to 1 GiB) fits, then counts too
    assert _create(api, "c").status_code == 202
    assert _create(api, "d", root_disk_gib=3).status_code == 202
    assert _create(api, "e").json["reasons"] == {
        "n1": "needs 1 GiB of disk, 0 GiB free of 10 GiB at ratio 1.0"}
    # the node with room is chosen; the full one says why it was not
    api.join_node("n2", disk=storage(total_bytes=2 * GIB))
    assert _create(api, "f").status_code == 202
    assert api.get("/api/v1/instances/f").json["node_name"] == "n2"


def test_a_node_that_reports_no_storage_is_refused(api: Api) -> None:
    api.join_node("n1", disk=StorageStatus(driver="localfs", health="ERROR",
                                           detail="/var/lib/vauban is not writable"))
    r = _create(api)
    assert r.status_code == 409
    assert r.json["reasons"] == {"n1": "has not reported its disk capacity (ERROR: "
                                       "/var/lib/vauban is not writable)"}


def test_rbd_root_disks_and_volumes_share_the_ceph_pool(tmp_path: Path) -> None:
    conf, keyring = ceph_files(tmp_path)
    region = open_region(ControllerConfig(
        data_dir=tmp_path / "controller", storage="rbd", ceph_conf=conf, ceph_keyring=keyring,
        ceph_volume_pools=("vauban", "vauban-fast"), disk_allocation_ratio=2.0))
    try:
        api = Api(create_app(region).test_client(), region)
        assert api.import_image("tiny", RAW_IMAGE).status_code == 201
        pool = storage("vauban", total_bytes=20 * GIB, free_bytes=15 * GIB)
        api.join_node("n1", disk=pool)
        api.join_node("n2", disk=pool)
        assert api.post("/api/v1/volumes", json={"name": "data", "size_gib": 10}).status_code == 202
        assert api.post("/api/v1/volumes", json={"name": "elsewhere", "size_gib": 100,
                                                  "pool": "vauban-fast"}).status_code == 202
        # 20 GiB at ratio 2.0 is 40 GiB: 10 for the volume, 25 for this VM, 5 left
        assert _create(api, "a", root_disk_gib=25).status_code == 202
        r = _create(api, "b", root_disk_gib=6)
        assert r.status_code == 409
        assert r.json["reasons"] == {n: "needs 6 GiB of disk, Ceph pool vauban has 5 GiB free "
                                        "of 40 GiB at ratio 2.0" for n in ("n1", "n2")}
        assert _create(api, "c", root_disk_gib=5).status_code == 202
        assert _count(region, Instance) == 2
    finally:
        region.engine.dispose()


def test_scheduler_spreads_and_skips_down_nodes(api: Api, region: Region) -> None:
    api.join_node("a", memory_mib=4096)
    b = api.join_node("b", memory_mib=4096)
    assert _create(api, "vm-1", memory_mib=1024).status_code == 202
    assert _create(api, "vm-2", memory_mib=1024).status_code == 202
    placed = {i["name"]: i["node_name"] for i in api.get("/api/v1/instances").json}
    assert sorted(placed.values()) == ["a", "b"]
    with region.sessions() as db, db.begin():
        db.get(Node, b.id).last_seen_at = None  # type: ignore[union-attr]
    assert _create(api, "vm-3", memory_mib=512).status_code == 202
    assert api.get("/api/v1/instances/vm-3").json["node_name"] == "a"


def test_pinned_node_unknown(api: Api) -> None:
    api.join_node("n1")
    r = _create(api, node="elsewhere")
    assert r.status_code == 404 and "elsewhere" in r.json["detail"]




def test_operations_on_a_silent_node_fail(api: Api, region: Region) -> None:
    node = api.join_node("n1")
    op = _create(api).json
    started = datetime.now(UTC) - timedelta(hours=1)
    with region.sessions() as db, db.begin():
        assert expire_operations(db, datetime.now(UTC), timedelta(seconds=120), started) == 0
        db.get(Node, node.id).last_seen_at = datetime.now(UTC) - timedelta(minutes=5)  # type: ignore[union-attr]
        assert expire_operations(db, datetime.now(UTC), timedelta(seconds=120), started) == 1
    failed = api.get(f"/api/v1/operations/{op['id']}").json
    assert failed["state"] == "failed" and "n1 stopped reporting" in failed["error"]
    with region.sessions() as db:
        assert db.get(Operation, op["id"]).finished_at is not None  # type: ignore[union-attr]


def test_a_restarted_controller_gives_nodes_time_to_report(api: Api, region: Region) -> None:
    node = api.join_node("n1")
    _create(api)
    with region.sessions() as db, db.begin():
        db.get(Node, node.id).last_seen_at = datetime.now(UTC) - timedelta(hours=2)  # type: ignore[union-attr]
        # the controller itself just started: silence is counted from then
        assert expire_operations(db, datetime.now(UTC), timedelta(seconds=120),
                                 datetime.now(UTC) - timedelta(seconds=10)) == 0
