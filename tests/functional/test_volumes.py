"""Volumes through the API on an rbd region, the steward node's side played by reports."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from agent.protocol import NodeStatus, ObservedVm, ObservedVmState, ObservedVolume
from controller.app import create_app
from controller.bootstrap import open_region
from controller.cli.main import main as cli_main
from controller.config import ControllerConfig
from controller.db.models import Volume
from controller.region import Region
from controller.storage_settings import StorageConfigError
from tests.functional.cli_helpers import cli_answered_by
from tests.functional.helpers import RAW_IMAGE, Api, FakeNode, ceph_files, inventory

GIB = 1024**3


@pytest.fixture
def api(rbd_region: Region) -> Api:
    return Api(create_app(rbd_region).test_client(), rbd_region)


def report(api: Api, node: FakeNode, volumes: list[ObservedVolume],
           vms: list[ObservedVm] | None = None) -> None:
    status = NodeStatus(applied_generation=0, inventory=inventory(), vms=vms or [],
                        volumes=volumes, sent_at=datetime.now(UTC))
    r = api.client.post(f"/agent/v1/nodes/{node.id}/status", data=status.model_dump_json(),
                        content_type="application/json", environ_overrides=node.environ())
    assert r.status_code == 204, r.json


def running_vm_and_volume(api: Api) -> tuple[FakeNode, ObservedVm, dict[str, Any]]:
    """Node n1 reporting VM vm1 running and volume data (1 GiB) made, not attached."""
    node = api.join_node("n1")
    assert api.import_image("tiny", RAW_IMAGE).status_code == 201
    r = api.post("/api/v1/instances", json={"name": "vm1", "image": "tiny", "vcpus": 1,
                                            "memory_mib": 128})
    assert r.status_code == 202, r.json
    vm = api.desired(node)["vms"][0]
    running = ObservedVm(id=vm["id"], name="vm1", state=ObservedVmState.RUNNING, power_seq=1)
    assert api.post("/api/v1/volumes", json={"name": "data", "size_gib": 1}).status_code == 202
    vol = api.desired(node)["volumes"][0]
    report(api, node, [observed(vol, 1)], [running])
    return node, running, vol


def observed(vol: dict[str, Any], size_gib: int, snapshots: list[str] | None = None,
             **kw: Any) -> ObservedVolume:
    return ObservedVolume(id=vol["id"], size_bytes=size_gib * GIB, used_bytes=0,
                          snapshots=snapshots or [], rollback_seq=kw.pop("rollback_seq", 0), **kw)


def op_state(api: Api, op: dict[str, Any]) -> str:
    return str(api.get(f"/api/v1/operations/{op['id']}").json["state"])


def test_nodes_get_the_ceph_settings_and_key(api: Api) -> None:
    node = api.join_node("n1")
    r = api.client.get(f"/agent/v1/nodes/{node.id}/storage", environ_overrides=node.environ())
    assert r.json["driver"] == "rbd"
    assert r.json["rbd"]["mon_host"] == "127.0.0.1:6789" and r.json["rbd"]["user"] == "vauban"
    assert r.json["rbd"]["key"].startswith("AQB")
    # one secret name per region: regions sharing a host never overwrite each other's key
    assert r.json["rbd"]["secret_usage"] == \
        f"vauban-{api.region.ca_sha256[:12]}-ceph-client.vauban"
    assert api.get(f"/agent/v1/nodes/{node.id}/storage").status_code == 401
    # a pool's agent run on a KVM node by mistake is refused, saying so
    pool = api.client.get(f"/agent/v1/nodes/{node.id}/xapi", environ_overrides=node.environ())
    assert pool.status_code == 409 and pool.json["type"].endswith("/wrong-agent")
    assert "not an XCP-ng pool" in pool.json["detail"]


def test_volume_lifecycle(api: Api, rbd_region: Region) -> None:
    node = api.join_node("n1")
    created = api.post("/api/v1/volumes", json={"name": "data", "size_gib": 2})
    assert created.status_code == 202
    d = api.desired(node)
    [want] = d["volumes"]
    assert want["name"] == "data" and want["present"] and want["pool"] == "vauban"
    assert api.get("/api/v1/volumes/data").json["state"] == "creating"
    report(api, node, [observed(want, 2)])
    assert op_state(api, created.json) == "succeeded"
    shown = api.get("/api/v1/volumes/data").json
    assert shown["state"] == "available" and shown["size_bytes"] == 2 * GIB
    assert shown["steward"] == "n1"

    grow = api.post("/api/v1/volumes/data/resize", json={"size_gib": 5})
    assert api.desired(node)["volumes"][0]["size_gib"] == 5
    report(api, node, [observed(want, 2)])
    assert op_state(api, grow.json) == "pending"
    report(api, node, [observed(want, 5)])
    assert op_state(api, grow.json) == "succeeded"

    snap = api.post("/api/v1/volumes/data/snapshots", json={"name": "s1"})
    assert api.desired(node)["volumes"][0]["snapshots"] == ["s1"]
    report(api, node, [observed(want, 5, ["s1"])])
    assert op_state(api, snap.json) == "succeeded"

    back = api.post("/api/v1/volumes/data/rollback", json={"snapshot": "s1"})
    assert api.desired(node)["volumes"][0]["rollback"] == {"snapshot": "s1", "seq": 1}
    report(api, node, [observed(want, 5, ["s1"], rollback_seq=1)])
    assert op_state(api, back.json) == "succeeded"

    clone = api.post("/api/v1/volumes", json={"name": "copy", "size_gib": 5,
                                              "source": "data@s1"})
    assert clone.status_code == 202
    copy = api.get("/api/v1/volumes/copy").json
    assert copy["source"] == "data@s1"
    refused = api.delete("/api/v1/volumes/data")
    assert refused.status_code == 409 and "copy" in refused.json["detail"]

    gone = api.delete("/api/v1/volumes/copy")
    assert gone.status_code == 202
    assert [v["present"] for v in api.desired(node)["volumes"]] == [True, False]
    report(api, node, [observed(want, 5, ["s1"], rollback_seq=1)])
    assert op_state(api, gone.json) == "succeeded"
    assert api.get("/api/v1/volumes/copy").status_code == 404
    with rbd_region.sessions() as db:
        assert db.scalar(select(func.count(Volume.id))) == 1


def test_attach_and_detach_follow_the_vm(api: Api) -> None:
    node, running, vol = running_vm_and_volume(api)

    attach = api.post("/api/v1/volumes/data/attach", json={"instance": "vm1"})
    assert attach.status_code == 202
    assert api.desired(node)["vms"][0]["volumes"] == [{"volume_id": vol["id"], "target": "vdc"}]
    report(api, node, [observed(vol, 1, attached_to=running.id, target="vdc")], [running])
    assert op_state(api, attach.json) == "succeeded"
    shown = api.get("/api/v1/volumes/data").json
    assert shown["state"] == "in-use" and shown["attached_to"] == "vm1"
    again = api.post("/api/v1/volumes/data/attach", json={"instance": "vm1"})
    assert again.status_code == 409 and "already attached to 'vm1'" in again.json["detail"]
    assert api.delete("/api/v1/volumes/data").status_code == 409

    detach = api.post("/api/v1/volumes/data/detach")
    assert api.desired(node)["vms"][0]["volumes"] == []
    report(api, node, [observed(vol, 1)], [running])
    assert op_state(api, detach.json) == "succeeded"


def test_detach_from_a_stopped_vm(api: Api) -> None:
    """Regression: the API refused it, though the node can take the volume out of the
    stopped VM's definition."""
    node, running, vol = running_vm_and_volume(api)
    api.post("/api/v1/volumes/data/attach", json={"instance": "vm1"})
    report(api, node, [observed(vol, 1, attached_to=running.id, target="vdc")], [running])
    assert api.post("/api/v1/instances/vm1/stop").status_code == 202
    stopped = ObservedVm(id=running.id, name="vm1", state=ObservedVmState.STOPPED, power_seq=2)
    report(api, node, [observed(vol, 1, attached_to=running.id, target="vdc")], [stopped])

    detach = api.post("/api/v1/volumes/data/detach")

    assert detach.status_code == 202, detach.json
    assert api.desired(node)["vms"][0]["volumes"] == []
    report(api, node, [observed(vol, 1, attached_to=running.id, target="vdc")], [stopped])
    assert op_state(api, detach.json) == "pending"  # still in the VM's definition
    report(api, node, [observed(vol, 1)], [stopped])
    assert op_state(api, detach.json) == "succeeded"
    shown = api.get("/api/v1/volumes/data").json
    assert shown["state"] == "available" and shown["attached_to"] is None


def test_detach_refused_while_the_vm_is_provisioning(api: Api) -> None:
    node, running, vol = running_vm_and_volume(api)
    api.post("/api/v1/volumes/data/attach", json={"instance": "vm1"})
    busy = ObservedVm(id=running.id, name="vm1", state=ObservedVmState.PROVISIONING, power_seq=1)
    report(api, node, [observed(vol, 1, attached_to=running.id, target="vdc")], [busy])

    r = api.post("/api/v1/volumes/data/detach")

    assert r.status_code == 409
    assert "detach from running or stopped VMs; 'vm1' is provisioning" in r.json["detail"]
    assert api.desired(node)["vms"][0]["volumes"] == [{"volume_id": vol["id"],
                                                       "target": "vdc"}]


def test_attach_refusals(api: Api) -> None:
    node = api.join_node("n1")
    api.import_image("tiny", RAW_IMAGE)
    api.post("/api/v1/instances", json={"name": "vm1", "image": "tiny", "vcpus": 1,
                                        "memory_mib": 128, "start": False})
    vm = api.desired(node)["vms"][0]
    api.post("/api/v1/volumes", json={"name": "data", "size_gib": 1})
    vol = api.desired(node)["volumes"][0]
    stopped = ObservedVm(id=vm["id"], name="vm1", state=ObservedVmState.STOPPED, power_seq=1)
    report(api, node, [observed(vol, 1)], [stopped])
    r = api.post("/api/v1/volumes/data/attach", json={"instance": "vm1"})
    assert r.status_code == 409 and "running VMs; 'vm1' is stopped" in r.json["detail"]
    r = api.post("/api/v1/volumes/data/attach", json={"instance": "ghost"})
    assert r.status_code == 422 and "instance 'ghost'" in r.json["detail"]
    running = ObservedVm(id=vm["id"], name="vm1", state=ObservedVmState.RUNNING, power_seq=1)
    report(api, node, [observed(vol, 1)], [running])
    with api.region.sessions() as db, db.begin():
        from controller.db.models import Instance
        db.scalars(select(Instance)).one().desired_power = "running"
    r = api.post("/api/v1/volumes/data/attach", json={"instance": "vm1", "target": "vda"})
    assert r.status_code == 422 and "root disk" in r.json["detail"]
    r = api.post("/api/v1/volumes/data/detach")
    assert r.status_code == 409 and "not attached" in r.json["detail"]


@pytest.mark.parametrize("body, status, detail", [
    ({"name": "v", "size_gib": 0}, 422, "'size_gib'"),
    ({"name": "v", "size_gib": 70000}, 422, "'size_gib'"),
    ({"name": "v", "size_gib": 1, "pool": "rbd"}, 422, "unknown pool 'rbd'; volumes may use: "
                                                       "vauban, vauban-fast"),
    ({"name": "v", "size_gib": 1, "source": "nope@s"}, 422, "volume 'nope' does not exist"),
    ({"name": "V", "size_gib": 1}, 422, "'name'"),
])
def test_create_refusals(api: Api, body: dict[str, Any], status: int, detail: str) -> None:
    api.join_node("n1")
    r = api.post("/api/v1/volumes", json=body)
    assert r.status_code == status and detail in r.json["detail"]
    assert api.get("/api/v1/volumes").json == []


def test_shrink_and_unknown_snapshot_are_refused(api: Api) -> None:
    node = api.join_node("n1")
    api.post("/api/v1/volumes", json={"name": "data", "size_gib": 4})
    report(api, node, [observed(api.desired(node)["volumes"][0], 4)])
    r = api.post("/api/v1/volumes/data/resize", json={"size_gib": 2})
    assert r.status_code == 422 and "only grow" in r.json["detail"]
    r = api.post("/api/v1/volumes/data/rollback", json={"snapshot": "never"})
    assert r.status_code == 404 and "no snapshot 'never'" in r.json["detail"]


def test_agent_error_fails_only_the_current_request(api: Api) -> None:
    node = api.join_node("n1")
    op = api.post("/api/v1/volumes", json={"name": "data", "size_gib": 1}).json
    d = api.desired(node)
    vol = d["volumes"][0]
    stale = ObservedVolume(id=vol["id"], size_bytes=0, used_bytes=0, snapshots=[],
                           rollback_seq=0, error="old", failed_generation=d["generation"] - 1)
    report(api, node, [stale])
    assert op_state(api, op) == "pending"
    fresh = stale.model_copy(update={"error": "pool full", "failed_generation": d["generation"]})
    report(api, node, [fresh])
    failed = api.get(f"/api/v1/operations/{op['id']}").json
    assert failed["state"] == "failed" and failed["error"] == "pool full"


def test_a_request_settles_while_an_older_requests_error_is_still_shown(api: Api) -> None:
    """Regression: a snapshot taken after a failed attach never settled, the node still
    showing the attach's error (its VM still wants the volume) beside the new snapshot."""
    node, running, vol = running_vm_and_volume(api)
    attach = api.post("/api/v1/volumes/data/attach", json={"instance": "vm1"}).json
    attach_failed = {"error": "QEMU did not answer",
                     "failed_generation": api.desired(node)["generation"]}
    report(api, node, [observed(vol, 1, **attach_failed)], [running])
    assert op_state(api, attach) == "failed"

    snap = api.post("/api/v1/volumes/data/snapshots", json={"name": "s1"}).json
    report(api, node, [observed(vol, 1, **attach_failed)], [running])
    assert op_state(api, snap) == "pending"  # not taken yet
    report(api, node, [observed(vol, 1, ["s1"], **attach_failed)], [running])
    assert op_state(api, snap) == "succeeded"
    assert api.get("/api/v1/volumes/data").json["state"] == "error"  # the attach's, still


def test_volumes_need_rbd(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    api.join_node("n1")
    r = api.post("/api/v1/volumes", json={"name": "v", "size_gib": 1})
    assert r.status_code == 409 and "this region uses localfs" in r.json["detail"]


def test_storage_settings_are_checked_at_start(tmp_path: Path) -> None:
    conf, keyring = ceph_files(tmp_path)
    with pytest.raises(StorageConfigError, match="not client.admin"):
        open_region(ControllerConfig(data_dir=tmp_path / "c", storage="rbd", ceph_conf=conf,
                                     ceph_keyring=keyring, ceph_client="admin"))
    with pytest.raises(StorageConfigError, match="no key for client.other"):
        open_region(ControllerConfig(data_dir=tmp_path / "c", storage="rbd", ceph_conf=conf,
                                     ceph_keyring=keyring, ceph_client="other"))
    with pytest.raises(StorageConfigError, match="unknown storage driver 'nfs'"):
        open_region(ControllerConfig(data_dir=tmp_path / "c", storage="nfs"))
    assert not (tmp_path / "c").exists()


def test_status_shows_storage_health_and_pools(api: Api) -> None:
    from agent.protocol import PoolUsage, StorageStatus

    node = api.join_node("n1")
    status = NodeStatus(applied_generation=0, inventory=inventory(), vms=[], volumes=[],
                        storage=StorageStatus(driver="rbd", health="HEALTH_WARN",
                                              detail="1 pool nearfull",
                                              pools=[PoolUsage(pool="vauban", used_bytes=5,
                                                               max_avail_bytes=7)]),
                        sent_at=datetime.now(UTC))
    api.client.post(f"/agent/v1/nodes/{node.id}/status", data=status.model_dump_json(),
                    content_type="application/json", environ_overrides=node.environ())
    s = api.get("/api/v1/status").json
    assert s["storage_driver"] == "rbd"
    assert s["storage"]["health"] == "HEALTH_WARN"
    assert s["storage"]["pools"] == [{"pool": "vauban", "used_bytes": 5, "max_avail_bytes": 7}]


def test_flatten_on_demand(api: Api) -> None:
    node = api.join_node("n1")
    api.import_image("tiny", RAW_IMAGE)
    api.post("/api/v1/instances", json={"name": "vm1", "image": "tiny", "vcpus": 1,
                                        "memory_mib": 128})
    vm = api.desired(node)["vms"][0]
    assert vm["flatten_root"] is False
    running = ObservedVm(id=vm["id"], name="vm1", state=ObservedVmState.RUNNING, power_seq=1)
    report(api, node, [], [running])
    op = api.post("/api/v1/instances/vm1/flatten")
    assert op.status_code == 202
    assert api.desired(node)["vms"][0]["flatten_root"] is True
    report(api, node, [], [running.model_copy(update={"root_cloned": True})])
    assert op_state(api, op.json) == "pending"
    report(api, node, [], [running.model_copy(update={"root_cloned": False})])
    assert op_state(api, op.json) == "succeeded"


def test_flatten_needs_rbd(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    api.join_node("n1")
    api.import_image("tiny", RAW_IMAGE)
    api.post("/api/v1/instances", json={"name": "vm1", "image": "tiny", "vcpus": 1,
                                        "memory_mib": 128})
    r = api.post("/api/v1/instances/vm1/flatten")
    assert r.status_code == 409 and "needs rbd storage" in r.json["detail"]


def test_unreadable_storage_settles_nothing(api: Api) -> None:
    node = api.join_node("n1")
    api.post("/api/v1/volumes", json={"name": "data", "size_gib": 1})
    report(api, node, [observed(api.desired(node)["volumes"][0], 1)])
    op = api.delete("/api/v1/volumes/data").json
    status = NodeStatus(applied_generation=0, inventory=inventory(), vms=[], volumes=None,
                        sent_at=datetime.now(UTC))
    api.client.post(f"/agent/v1/nodes/{node.id}/status", data=status.model_dump_json(),
                    content_type="application/json", environ_overrides=node.environ())
    assert op_state(api, op) == "pending"  # unknown is not absent
    report(api, node, [])
    assert op_state(api, op) == "succeeded"


def test_each_snapshot_shows_whether_it_is_filesystem_or_crash_consistent(
        api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    node = api.join_node("n1")
    assert api.post("/api/v1/volumes", json={"name": "data", "size_gib": 1}).status_code == 202
    [want] = api.desired(node)["volumes"]
    report(api, node, [observed(want, 1)])
    taken: list[str] = []
    for snap in ("frozen", "cut", "later"):  # one at a time: each waits for the last
        assert api.post("/api/v1/volumes/data/snapshots", json={"name": snap}).status_code \
            == 202
        if snap != "later":
            taken.append(snap)
            report(api, node, [observed(want, 1, taken)])
    # "later" is asked for and not taken yet; "ghost" is not asked for (being deleted)
    report(api, node, [observed(want, 1, ["frozen", "cut", "ghost"],
                                quiesced_snapshots=["frozen", "ghost"])])
    shown = api.get("/api/v1/volumes/data").json
    assert shown["snapshots"] == ["frozen", "cut", "later"]  # unchanged: what was asked for
    assert shown["snapshot_consistency"] == {"frozen": "filesystem", "cut": "crash"}

    cli_answered_by(api, monkeypatch)
    capsys.readouterr()
    assert cli_main(["volume", "show", "data"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+frozen: filesystem$", out, re.M), out
    assert re.search(r"^\s+cut: crash$", out, re.M), out

    # an agent that predates the field sends none: it never froze, so all are crash
    old = observed(want, 1, ["frozen", "cut"]).model_dump(mode="json")
    del old["quiesced_snapshots"]
    status = NodeStatus(applied_generation=0, inventory=inventory(), vms=[],
                        volumes=[], sent_at=datetime.now(UTC)).model_dump(mode="json")
    status["volumes"] = [old]
    r = api.client.post(f"/agent/v1/nodes/{node.id}/status", json=status,
                        environ_overrides=node.environ())
    assert r.status_code == 204, r.json
    shown = api.get("/api/v1/volumes/data").json
    assert shown["snapshot_consistency"] == {"frozen": "crash", "cut": "crash"}
