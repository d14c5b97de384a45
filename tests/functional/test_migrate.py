"""Live migration through the API and CLI, both nodes' agents played by their reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from agent.protocol import MigrationReport, ObservedVm, ObservedVmState
from controller.app import create_app
from controller.cli import main as cli
from controller.db.models import AuditEvent, Instance, Node, Operation, Volume
from controller.region import Region
from tests.functional.cli_helpers import cli_answered_by
from tests.functional.helpers import RAW_IMAGE, Api, FakeNode, inventory, storage
from tests.functional.test_instances import _create, _observed


@pytest.fixture
def api(rbd_region: Region) -> Api:
    a = Api(create_app(rbd_region).test_client(), rbd_region)
    assert a.import_image("tiny", RAW_IMAGE).status_code == 201
    return a


UNDERLAY = {"a": "10.0.0.1", "b": "10.0.0.2", "small": "10.0.0.3"}


def tell(api: Api, node: FakeNode, *vms: ObservedVm, applied: int = 0,
         ready: bool = True) -> None:
    """A report of `node`'s agent, its underlay address with it as always; `ready`: its
    libvirt TLS listener is up (it takes and makes migrations)."""
    api.report(node, list(vms), applied=applied, inv=inventory(
        underlay_ip=UNDERLAY[node.name]).model_copy(update={"migration_ready": ready}))


def running_vm(api: Api) -> tuple[FakeNode, FakeNode, dict[str, Any]]:
    """Nodes a (with web-1 running, reported) and b (empty), both with an underlay."""
    a = api.join_node("a", underlay_ip=UNDERLAY["a"])
    b = api.join_node("b", underlay_ip=UNDERLAY["b"])
    tell(api, b)
    assert _create(api, "web-1", node="a").status_code == 202
    d = api.desired(a)
    [vm] = d["vms"]
    tell(api, a, _observed(vm, ObservedVmState.RUNNING), applied=d["generation"])
    return a, b, vm


def moving(vm: dict[str, Any], state: ObservedVmState, report: MigrationReport) -> ObservedVm:
    return _observed(vm, state).model_copy(update={"migration": report})


def vms_of(api: Api, node: FakeNode) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in api.desired(node)["vms"]}


def audit(region: Region, action: str) -> list[tuple[str, dict[str, Any]]]:
    with region.sessions() as db:
        return [(e.outcome, e.detail) for e in db.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq))]


def test_a_live_migration_prepares_the_target_then_moves_and_hands_over(
        api: Api, rbd_region: Region) -> None:
    a, b, vm = running_vm(api)
    r = api.post("/api/v1/instances/web-1/migrate",
                 json={"to": "b", "bandwidth_mib_s": 200, "max_downtime_ms": 500})
    assert r.status_code == 202, r.json
    op_id = r.json["id"]  # type: ignore[index]
    shown = api.get("/api/v1/instances/web-1").json
    assert (shown["state"], shown["node_name"], shown["migrating_to"]) == \
        ("migrating", "a", "b")
    # phase 1: the target prepares; the source does not move it yet
    incoming = vms_of(api, b)["web-1"]
    # shared disks: none copied, and the message is as before copy_disks was added
    assert incoming["incoming_from"] == {"seq": 1, "source_node_id": a.id}
    assert vms_of(api, a)["web-1"]["migrate_to"] is None
    tell(api, b, moving(vm, ObservedVmState.INCOMING,
                          MigrationReport(seq=1, state="ready")))
    # phase 2: the source is told where and how
    order = vms_of(api, a)["web-1"]["migrate_to"]
    assert order["target_node_id"] == b.id and order["target_address"] == "10.0.0.2"
    assert (order["seq"], order["bandwidth_mib_s"], order["max_downtime_ms"]) == (1, 200, 500)
    assert "copy_disks" not in order
    tell(api, a, moving(vm, ObservedVmState.RUNNING,
                          MigrationReport(seq=1, state="running", progress=60)))
    op = api.get(f"/api/v1/operations/{op_id}").json
    assert op["state"] == "running" and op["progress"] >= 60
    # it runs on b, defined there: b's now; a lets go of it (its disks are kept)
    tell(api, b, moving(vm, ObservedVmState.RUNNING, MigrationReport(
        seq=1, state="completed", progress=100, downtime_ms=42)))
    op = api.get(f"/api/v1/operations/{op_id}").json
    assert (op["state"], op["error"]) == ("succeeded", None)
    shown = api.get("/api/v1/instances/web-1").json
    assert (shown["state"], shown["node_name"], shown["migrating_to"]) == \
        ("running", "b", None)
    desired_a = api.desired(a)
    assert desired_a["vms"] == [] and vm["id"] not in desired_a["delete_vm_disks"]
    assert vms_of(api, b)["web-1"]["incoming_from"] is None
    [accepted, done] = audit(rbd_region, "instance.migrate")
    assert accepted[0] == "accepted" and accepted[1]["to"] == "b"
    assert done[0] == "succeeded" and done[1]["downtime_ms"] == 42


def test_a_failed_migration_leaves_the_vm_where_it_was(api: Api, rbd_region: Region) -> None:
    a, b, vm = running_vm(api)
    op_id = api.post("/api/v1/instances/web-1/migrate", json={"to": "b"}).json["id"]  # type: ignore[index]
    tell(api, b, moving(vm, ObservedVmState.INCOMING, MigrationReport(seq=1, state="ready")))
    tell(api, a, moving(vm, ObservedVmState.RUNNING, MigrationReport(
        seq=1, state="failed", error="migration to 10.0.0.2 failed: connection refused; "
        "the VM kept running here")))
    op = api.get(f"/api/v1/operations/{op_id}").json
    assert op["state"] == "failed" and "connection refused" in op["error"]
    assert vms_of(api, a)["web-1"]["migrate_to"] is None
    # the target is let go once it says it does not run the VM (libvirt could have
    # failed after the switchover: then it would, and the move would complete)
    assert vms_of(api, b)["web-1"]["incoming_from"] is not None
    tell(api, b, moving(vm, ObservedVmState.INCOMING, MigrationReport(seq=1, state="ready")))
    shown = api.get("/api/v1/instances/web-1").json
    assert (shown["state"], shown["node_name"], shown["migrating_to"]) == ("running", "a", None)
    assert "web-1" not in vms_of(api, b) and vms_of(api, a)["web-1"]["migrate_to"] is None
    assert [outcome for outcome, _ in audit(rbd_region, "instance.migrate")] == \
        ["accepted", "failed"]
    # a new attempt is numbered anew
    assert api.post("/api/v1/instances/web-1/migrate", json={}).status_code == 202
    assert vms_of(api, b)["web-1"]["incoming_from"]["seq"] == 2


def test_a_stale_report_of_an_earlier_migration_decides_nothing(api: Api) -> None:
    a, b, vm = running_vm(api)
    api.post("/api/v1/instances/web-1/migrate", json={"to": "b"})
    tell(api, b, moving(vm, ObservedVmState.INCOMING, MigrationReport(seq=1, state="ready")))
    tell(api, a, moving(vm, ObservedVmState.RUNNING, MigrationReport(seq=1, state="failed")))
    tell(api, b)  # the target has no copy
    assert api.post("/api/v1/instances/web-1/migrate", json={"to": "b"}).status_code == 202
    # the source still shows the failure of move 1: move 2 stands
    tell(api, a, moving(vm, ObservedVmState.RUNNING, MigrationReport(seq=1, state="failed")))
    assert api.get("/api/v1/instances/web-1").json["migrating_to"] == "b"


def test_a_move_that_failed_after_the_switchover_completes_on_the_targets_word(
        api: Api) -> None:
    a, b, vm = running_vm(api)
    api.post("/api/v1/instances/web-1/migrate", json={"to": "b"})
    tell(api, b, moving(vm, ObservedVmState.INCOMING, MigrationReport(seq=1, state="ready")))
    tell(api, a, moving(vm, ObservedVmState.RUNNING, MigrationReport(seq=1, state="failed")))
    refused = api.post("/api/v1/instances/web-1/migrate", json={"to": "b"})
    assert refused.status_code == 409 and "still settling" in refused.json["detail"]  # type: ignore[index]
    tell(api, b, moving(vm, ObservedVmState.RUNNING, MigrationReport(seq=1, state="completed")))
    assert api.get("/api/v1/instances/web-1").json["node_name"] == "b"
    assert "web-1" not in vms_of(api, a)


def test_a_vm_on_a_node_that_is_down_does_not_move_live(api: Api, rbd_region: Region) -> None:
    running_vm(api)
    with rbd_region.sessions() as db, db.begin():
        db.execute(update(Node).where(Node.name == "a").values(
            last_seen_at=datetime.now(UTC) - timedelta(hours=1)))
    r = api.post("/api/v1/instances/web-1/migrate", json={"to": "b"})
    assert r.status_code == 409 and "which is not up" in r.json["detail"], r.json  # type: ignore[index]


def test_deleting_a_moving_vm_calls_the_move_off_and_lists_its_disks(api: Api) -> None:
    a, b, vm = running_vm(api)
    api.post("/api/v1/instances/web-1/migrate", json={"to": "b"})
    assert api.delete("/api/v1/instances/web-1").status_code == 202
    assert "web-1" not in vms_of(api, b)
    assert api.desired(a)["delete_vm_disks"] == [vm["id"]]
    tell(api, a)  # gone from the node: the record goes, its disks stay listed
    assert api.get("/api/v1/instances/web-1").status_code == 404
    assert api.desired(a)["delete_vm_disks"] == [vm["id"]]


@pytest.mark.parametrize(("body", "status", "detail"), [
    ({"to": "a"}, 409, "is already on node a"),
    ({"to": "nowhere"}, 404, "nowhere"),
    ({"bandwidth_mib_s": -1}, 422, "bandwidth_mib_s"),
    ({"max_downtime_ms": 0}, 422, "max_downtime_ms"),
    ({"to": "b", "extra": 1}, 422, "extra"),
])
def test_migrate_refusals(api: Api, body: dict[str, Any], status: int, detail: str) -> None:
    running_vm(api)
    r = api.post("/api/v1/instances/web-1/migrate", json=body)
    assert r.status_code == status and detail in str(r.json), r.json
    assert r.content_type == "application/problem+json"
    assert api.get("/api/v1/instances/web-1").json["migrating_to"] is None


def test_a_vm_already_moving_or_neither_running_nor_stopped_is_refused(api: Api) -> None:
    a, b, vm = running_vm(api)
    assert api.post("/api/v1/instances/web-1/migrate", json={}).status_code == 202
    r = api.post("/api/v1/instances/web-1/migrate", json={})
    assert r.status_code == 409 and "instance.migrate" in r.json["detail"]  # type: ignore[index]
    tell(api, b, moving(vm, ObservedVmState.INCOMING, MigrationReport(seq=1, state="ready")))
    tell(api, a, moving(vm, ObservedVmState.RUNNING, MigrationReport(seq=1, state="failed")))
    tell(api, b)
    # in error on its node (to run, seen neither running nor stopped): it does not move
    tell(api, a, _observed(vm, ObservedVmState.ERROR))
    r = api.post("/api/v1/instances/web-1/migrate", json={})
    assert r.status_code == 409, r.json
    assert "is in state error while it is to be running" in r.json["detail"]  # type: ignore[index]
    assert "wait for it" in r.json["detail"]  # type: ignore[index]
    assert "web-1" not in vms_of(api, b)


def stopped_vm(api: Api, a: FakeNode) -> dict[str, Any]:
    """web-2, made stopped on node a (beside web-1), reported so."""
    assert _create(api, "web-2", node="a", start=False).status_code == 202
    d = api.desired(a)
    tell(api, a, *[_observed(v, ObservedVmState.RUNNING if v["name"] == "web-1"
                             else ObservedVmState.STOPPED) for v in d["vms"]],
         applied=d["generation"])
    return vms_of(api, a)["web-2"]


def test_a_stopped_vm_on_shared_storage_is_given_to_the_other_node_at_once(
        api: Api, rbd_region: Region) -> None:
    a, b, _vm = running_vm(api)
    vm = stopped_vm(api, a)
    r = api.post("/api/v1/instances/web-2/migrate", json={"to": "b"})
    assert r.status_code == 202, r.json
    op = api.get(f"/api/v1/operations/{r.json['id']}").json  # type: ignore[index]
    assert (op["state"], op["error"]) == ("succeeded", None)
    shown = api.get("/api/v1/instances/web-2").json
    assert (shown["node_name"], shown["migrating_to"]) == ("b", None)
    there = vms_of(api, b)["web-2"]  # defined there on its disk, stopped; never copied
    assert there["power"] == "stopped" and there["incoming_from"] is None
    desired_a = api.desired(a)
    assert "web-2" not in {v["name"] for v in desired_a["vms"]}
    assert vm["id"] not in desired_a["delete_vm_disks"]  # a drops its definition only
    [(outcome, detail)] = audit(rbd_region, "instance.move")
    assert outcome == "succeeded" and (detail["to"], detail["cold"]) == ("b", True)


def test_nodes_not_ready_for_migration_are_refused_and_never_chosen(api: Api) -> None:
    a, b, vm = running_vm(api)
    tell(api, b, ready=False)
    r = api.post("/api/v1/instances/web-1/migrate", json={"to": "b"})
    assert r.status_code == 409 and "node b is not ready" in r.json["detail"], r.json  # type: ignore[index]
    r = api.post("/api/v1/instances/web-1/migrate", json={})
    assert r.status_code == 409 and "b is not ready for live migration" in r.json["detail"]  # type: ignore[index]
    tell(api, a, _observed(vm, ObservedVmState.RUNNING), ready=False)
    tell(api, b)
    r = api.post("/api/v1/instances/web-1/migrate", json={"to": "b"})
    assert r.status_code == 409 and "node a is not ready" in r.json["detail"], r.json  # type: ignore[index]


def test_no_node_fits(api: Api) -> None:
    a = api.join_node("a", underlay_ip=UNDERLAY["a"])
    small = api.join_node("small", memory_mib=512, underlay_ip=UNDERLAY["small"])
    api.report(small, [], inv=inventory(memory_mib=512, underlay_ip=UNDERLAY["small"])
               .model_copy(update={"migration_ready": True}))
    assert _create(api, "big", node="a", memory_mib=4096).status_code == 202
    d = api.desired(a)
    tell(api, a, _observed(d["vms"][0], ObservedVmState.RUNNING), applied=d["generation"])
    r = api.post("/api/v1/instances/big/migrate", json={})
    assert r.status_code == 409 and "small" in r.json["detail"], r.json  # type: ignore[index]


@pytest.fixture
def local_api(client: FlaskClient, region: Region) -> Api:
    """A region whose VM disks are each node's own (localfs)."""
    a = Api(client, region)
    assert a.import_image("tiny", RAW_IMAGE).status_code == 201
    return a


def test_a_vm_on_local_storage_moves_live_with_its_disk_copied(
        local_api: Api, region: Region) -> None:
    a, b, vm = running_vm(local_api)
    r = local_api.post("/api/v1/instances/web-1/migrate", json={"to": "b"})
    assert r.status_code == 202, r.json
    op_id = r.json["id"]  # type: ignore[index]
    # the target makes the image and a root disk for the copy, then says it is ready
    assert vms_of(local_api, b)["web-1"]["incoming_from"] == {
        "seq": 1, "source_node_id": a.id, "copy_disks": True}
    tell(local_api, b, moving(vm, ObservedVmState.INCOMING,
                              MigrationReport(seq=1, state="ready")))
    order = vms_of(local_api, a)["web-1"]["migrate_to"]
    assert order["copy_disks"] is True and order["target_address"] == "10.0.0.2"
    tell(local_api, b, moving(vm, ObservedVmState.RUNNING, MigrationReport(
        seq=1, state="completed", progress=100, downtime_ms=80)))
    assert local_api.get(f"/api/v1/operations/{op_id}").json["state"] == "succeeded"
    assert local_api.get("/api/v1/instances/web-1").json["node_name"] == "b"
    assert vms_of(local_api, b)["web-1"]["incoming_from"] is None
    # the source lets go of it; the controller lists no disk of it to delete there (the
    # source's agent drops its stale copy itself, having copied it away)
    assert local_api.desired(a)["vms"] == [] and local_api.desired(a)["delete_vm_disks"] == []
    [accepted, done] = audit(region, "instance.migrate")
    assert accepted[1]["copy_disks"] is True and done[0] == "succeeded"


def test_a_stopped_vm_on_local_storage_moves_cold_with_its_disk_copied(
        local_api: Api, region: Region) -> None:
    a, b, _vm = running_vm(local_api)
    vm = stopped_vm(local_api, a)
    r = local_api.post("/api/v1/instances/web-2/migrate", json={"to": "b"})
    assert r.status_code == 202, r.json
    op_id = r.json["id"]  # type: ignore[index]
    incoming = vms_of(local_api, b)["web-2"]
    assert incoming["incoming_from"] == {"seq": 1, "source_node_id": a.id,
                                         "copy_disks": True, "cold": True}
    assert incoming["power"] == "stopped"
    tell(local_api, b, moving(vm, ObservedVmState.INCOMING,
                              MigrationReport(seq=1, state="ready")))
    order = vms_of(local_api, a)["web-2"]["migrate_to"]
    assert (order["copy_disks"], order["cold"]) == (True, True)
    # arrived paused (the guest never ran): not the target's until turned off there
    tell(local_api, b, moving(vm, ObservedVmState.RUNNING, MigrationReport(
        seq=1, state="completed", progress=100)))
    assert local_api.get("/api/v1/instances/web-2").json["node_name"] == "a"
    tell(local_api, b, moving(vm, ObservedVmState.STOPPED, MigrationReport(
        seq=1, state="completed", progress=100)))
    op = local_api.get(f"/api/v1/operations/{op_id}").json
    assert (op["state"], op["error"]) == ("succeeded", None)
    shown = local_api.get("/api/v1/instances/web-2").json
    assert (shown["state"], shown["node_name"], shown["migrating_to"]) == \
        ("stopped", "b", None)
    assert "web-2" not in vms_of(local_api, a)
    [accepted, done] = audit(region, "instance.migrate")
    assert accepted[1]["cold"] is True and done[0] == "succeeded"


def test_a_vm_on_local_storage_with_a_volume_is_refused(local_api: Api, region: Region) -> None:
    a, b, vm = running_vm(local_api)
    with region.sessions() as db, db.begin():  # volumes cannot be made here any more
        project = db.scalar(select(Instance.project_id).where(Instance.id == vm["id"]))
        db.add(Volume(name="data", project_id=project, pool="localfs", size_gib=1,
                      steward_node_id=a.id, instance_id=vm["id"], target="vdc"))
    r = local_api.post("/api/v1/instances/web-1/migrate", json={"to": "b"})
    assert r.status_code == 409, r.json
    assert "volumes attached (data)" in r.json["detail"]  # type: ignore[index]
    assert "detach them first" in r.json["detail"]  # type: ignore[index]
    assert "web-1" not in vms_of(local_api, b)


def test_a_node_without_room_for_the_root_disk_cannot_take_a_vm_on_local_storage(
        local_api: Api) -> None:
    a, b, _vm = running_vm(local_api)
    local_api.report(b, [], applied=1, inv=inventory(underlay_ip=UNDERLAY["b"]).model_copy(
        update={"migration_ready": True}), disk=storage(total_bytes=0))  # applied: read anew
    r = local_api.post("/api/v1/instances/web-1/migrate", json={"to": "b"})
    assert r.status_code == 409 and "GiB of disk" in r.json["detail"], r.json  # type: ignore[index]
    assert "web-1" not in vms_of(local_api, b)


def test_a_disk_on_its_way_to_a_node_takes_its_room_there(local_api: Api) -> None:
    a, b, vm = running_vm(local_api)
    assert _create(local_api, "web-2", node="a").status_code == 202
    d = local_api.desired(a)
    tell(local_api, a, *[_observed(v, ObservedVmState.RUNNING) for v in d["vms"]],
         applied=d["generation"])
    # room for one 1 GiB root disk on b
    local_api.report(b, [], applied=1, inv=inventory(underlay_ip=UNDERLAY["b"]).model_copy(
        update={"migration_ready": True}), disk=storage(total_bytes=2**30))
    assert local_api.post("/api/v1/instances/web-1/migrate", json={"to": "b"}).status_code \
        == 202
    r = local_api.post("/api/v1/instances/web-2/migrate", json={"to": "b"})
    assert r.status_code == 409 and "needs 1 GiB of disk, 0 GiB free" in r.json["detail"], \
        r.json  # type: ignore[index]


def test_a_target_copying_disks_has_longer_to_get_ready(local_api: Api, region: Region) -> None:
    a, _b, vm = running_vm(local_api)
    op_id = local_api.post("/api/v1/instances/web-1/migrate", json={"to": "b"}).json["id"]  # type: ignore[index]

    def asked_ago(seconds: int, report: int) -> str:
        with region.sessions() as db, db.begin():
            db.execute(update(Operation).where(Operation.id == op_id).values(
                created_at=datetime.now(UTC) - timedelta(seconds=seconds)))
        # `report` tells the reports apart: a repeated one is only heard, not read
        tell(local_api, a, _observed(vm, ObservedVmState.RUNNING), applied=report)
        return str(local_api.get(f"/api/v1/operations/{op_id}").json["state"])

    # past the 120 s a target of shared disks gets: still preparing (it may download
    # the image first)
    assert asked_ago(300, report=1) != "failed"
    assert asked_ago(700, report=2) == "failed"
    assert "within 600 s" in local_api.get(f"/api/v1/operations/{op_id}").json["error"]


def test_a_target_that_cannot_prepare_says_why_on_the_operation(
        api: Api, rbd_region: Region) -> None:
    a, b, vm = running_vm(api)
    op_id = api.post("/api/v1/instances/web-1/migrate", json={"to": "b"}).json["id"]  # type: ignore[index]
    why = "network blue failed on this node: vxlan port in use"
    tell(api, b, _observed(vm, ObservedVmState.INCOMING).model_copy(update={"error": why}),
         applied=1)
    op = api.get(f"/api/v1/operations/{op_id}").json
    assert op["state"] != "failed"
    assert op["message"] == f"node b is not ready to take the VM: {why}"
    # past the limit: the move fails with the target's own words
    with rbd_region.sessions() as db, db.begin():
        db.execute(update(Operation).where(Operation.id == op_id).values(
            created_at=datetime.now(UTC) - timedelta(seconds=300)))
    tell(api, a, _observed(vm, ObservedVmState.RUNNING), applied=2)
    op = api.get(f"/api/v1/operations/{op_id}").json
    assert op["state"] == "failed"
    assert op["error"] == (f"node b did not get ready to take the VM within 120 s (node b is "
                           f"not ready to take the VM: {why})")


def test_a_target_ready_after_all_clears_what_it_said(api: Api) -> None:
    _a, b, vm = running_vm(api)
    op_id = api.post("/api/v1/instances/web-1/migrate", json={"to": "b"}).json["id"]  # type: ignore[index]
    tell(api, b, _observed(vm, ObservedVmState.INCOMING).model_copy(
        update={"error": "security groups not in force yet"}), applied=1)
    assert api.get(f"/api/v1/operations/{op_id}").json["message"]
    tell(api, b, moving(vm, ObservedVmState.INCOMING, MigrationReport(seq=1, state="ready")),
         applied=2)
    op = api.get(f"/api/v1/operations/{op_id}").json
    assert op["message"] is None and op["state"] != "failed"
    assert vms_of(api, _a)["web-1"]["migrate_to"] is not None  # the source is told to go


def test_a_project_member_cannot_move_vms_between_nodes(api: Api) -> None:
    running_vm(api)
    member = api.as_new_user("mia", ("project-admin", "default"))
    r = member.post("/api/v1/instances/web-1/migrate", json={})
    assert r.status_code in (403, 404), r.json


def test_cli_migrate(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, _vm = running_vm(api)
    cli_answered_by(api, monkeypatch)
    assert cli.main(["vm", "migrate", "web-1", "--to", "b", "--bandwidth", "64",
                     "--max-downtime", "250", "--no-wait"]) == 0
    assert vms_of(api, b)["web-1"]["incoming_from"]["source_node_id"] == a.id
    shown = api.get("/api/v1/instances/web-1").json
    assert shown["migrating_to"] == "b"


def test_an_agent_from_before_disk_copies_and_cold_moves_is_never_sent_one(
        local_api: Api) -> None:
    """It would refuse the whole desired state (unknown fields): the move is refused in
    words instead, naming the node and what to do, and such a node is never chosen."""
    a, b, _vm = running_vm(local_api)
    old = inventory(underlay_ip=UNDERLAY["b"]).model_copy(
        update={"migration_ready": True, "migration_features": []})
    local_api.report(b, [], inv=old)
    r = local_api.post("/api/v1/instances/web-1/migrate", json={"to": "b"})
    assert r.status_code == 409, r.json
    assert "node b's agent (test) cannot copy a local disk with a VM: upgrade it" in \
        r.json["detail"]  # type: ignore[index]
    r = local_api.post("/api/v1/instances/web-1/migrate", json={})
    assert r.status_code == 409 and "its agent (test) cannot copy a local disk" in \
        r.json["detail"], r.json  # type: ignore[index]
    vm = stopped_vm(local_api, a)
    r = local_api.post(f"/api/v1/instances/{vm['name']}/migrate", json={"to": "b"})
    assert r.status_code == 409 and "cannot copy a local disk with a VM or move a stopped " \
        "VM" in r.json["detail"], r.json  # type: ignore[index]
    assert "web-1" not in vms_of(local_api, b) and "web-2" not in vms_of(local_api, b)


def test_a_migration_called_off_ends_and_the_vm_stays(
        api: Api, rbd_region: Region, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    a, b, vm = running_vm(api)
    assert api.delete("/api/v1/instances/web-1/migrate").status_code == 409  # none under way
    op_id = api.post("/api/v1/instances/web-1/migrate", json={"to": "b"}).json["id"]  # type: ignore[index]
    tell(api, b, moving(vm, ObservedVmState.INCOMING, MigrationReport(seq=1, state="ready")))
    assert vms_of(api, a)["web-1"]["migrate_to"] is not None  # the source copies
    cli_answered_by(api, monkeypatch)
    assert cli.main(["vm", "migrate", "web-1", "--cancel", "--to", "b"]) == 2
    assert cli.main(["vm", "migrate", "web-1", "--cancel"]) == 0
    assert "called off by admin while copying" in capsys.readouterr().out
    op = api.get(f"/api/v1/operations/{op_id}").json
    assert op["state"] == "failed" and "the VM stays on node a" in op["error"]
    # the source's order is gone (its agent aborts the copy); the target lets go once it
    # says it does not run the VM
    assert vms_of(api, a)["web-1"]["migrate_to"] is None
    tell(api, b, moving(vm, ObservedVmState.INCOMING, MigrationReport(seq=1, state="ready")))
    shown = api.get("/api/v1/instances/web-1").json
    assert (shown["node_name"], shown["migrating_to"], shown["state"]) == ("a", None, "running")
    assert "web-1" not in vms_of(api, b)
    [(outcome, detail)] = audit(rbd_region, "instance.migrate-cancel")
    assert detail["phase"] == "migrating" and detail["to"] == "b"
    assert api.delete("/api/v1/instances/web-1/migrate").status_code == 409
