"""Node maintenance through the API and CLI: the evacuator's rounds run as the controller
runs them, the nodes' agents are played by their reports."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event

from agent.protocol import MigrationReport, ObservedVmState
from controller.app import create_app
from controller.cli import main as cli
from controller.region import Region
from controller.services import maintenance
from tests.functional.cli_helpers import cli_answered_by
from tests.functional.helpers import RAW_IMAGE, Api, FakeNode, inventory
from tests.functional.test_instances import _create, _observed
from tests.functional.test_migrate import UNDERLAY, moving, tell, vms_of

UNDERLAY.update({"c": "10.0.0.4"})


@pytest.fixture
def api(rbd_region: Region) -> Api:
    a = Api(create_app(rbd_region).test_client(), rbd_region)
    assert a.import_image("tiny", RAW_IMAGE).status_code == 201
    return a


def node_with_vms(api: Api, **memory: int) -> tuple[dict[str, FakeNode],
                                                    dict[str, dict[str, Any]]]:
    """Node a with web-1 running and web-2 stopped (reported so); nodes b and c (memory
    in MiB as given, else 8 GiB) empty."""
    a = api.join_node("a", underlay_ip=UNDERLAY["a"])
    nodes = {"a": a} | {name: api.join_node(name, memory_mib=memory.get(name, 8192),
                                            underlay_ip=UNDERLAY[name]) for name in ("b", "c")}
    for name in ("b", "c"):  # ready for migrations
        api.report(nodes[name], [], memory_mib=memory.get(name, 8192), inv=inventory(
            memory_mib=memory.get(name, 8192), underlay_ip=UNDERLAY[name]).model_copy(
            update={"migration_ready": True}))
    assert _create(api, "web-1", node="a").status_code == 202
    assert _create(api, "web-2", node="a", start=False).status_code == 202
    d = api.desired(a)
    vms = {v["name"]: v for v in d["vms"]}
    tell(api, a, _observed(vms["web-1"], ObservedVmState.RUNNING),
         _observed(vms["web-2"], ObservedVmState.STOPPED), applied=d["generation"])
    return nodes, vms


def round_of(rbd_region: Region) -> None:
    maintenance.evacuate_all(rbd_region.sessions, rbd_region.config)


def test_maintenance_empties_the_node_and_completes_only_then(
        api: Api, rbd_region: Region) -> None:
    nodes, vms = node_with_vms(api)
    r = api.post("/api/v1/nodes/a/maintenance", json={"on": True})
    assert r.status_code == 202, r.json
    op_id = r.json["id"]  # type: ignore[index]
    assert api.get("/api/v1/nodes/a").json["maintenance"] is True
    refused = _create(api, "web-3", node="a")
    assert refused.status_code == 409 and "is in maintenance" in refused.json["detail"]
    round_of(rbd_region)
    # the stopped VM is another node's at once, defined there on its disk
    stopped = api.get("/api/v1/instances/web-2").json
    assert stopped["node_name"] in ("b", "c")
    assert vms_of(api, nodes[stopped["node_name"]])["web-2"]["adopt_disk"] is True
    # the running one moves live
    running = api.get("/api/v1/instances/web-1").json
    assert running["state"] == "migrating" and running["migrating_to"] in ("b", "c")
    op = api.get(f"/api/v1/operations/{op_id}").json
    assert op["state"] == "running" and "1 VM(s) left" in op["message"]
    target = nodes[running["migrating_to"]]
    tell(api, target, moving(vms["web-1"], ObservedVmState.INCOMING,
                             MigrationReport(seq=1, state="ready")))
    round_of(rbd_region)
    assert api.get(f"/api/v1/operations/{op_id}").json["state"] == "running"
    tell(api, target, moving(vms["web-1"], ObservedVmState.RUNNING,
                             MigrationReport(seq=1, state="completed")))
    round_of(rbd_region)
    op = api.get(f"/api/v1/operations/{op_id}").json
    assert (op["state"], op["message"]) == ("succeeded", "the node is empty")
    assert api.desired(nodes["a"])["vms"] == []
    # off: it takes VMs again
    r = api.post("/api/v1/nodes/a/maintenance", json={"on": False})
    assert r.status_code == 200 and r.json["maintenance"] is False  # type: ignore[index]
    assert _create(api, "web-3", node="a").status_code == 202


def test_a_vm_that_cannot_move_is_named_with_why_and_the_operation_waits(
        api: Api, rbd_region: Region) -> None:
    node_with_vms(api, b=512, c=512)
    op_id = api.post("/api/v1/nodes/a/maintenance", json={"on": True}).json["id"]  # type: ignore[index]
    round_of(rbd_region)
    op = api.get(f"/api/v1/operations/{op_id}").json
    assert op["state"] == "running"
    assert "web-1: no node can host" in op["message"] and "memory free" in op["message"]
    assert api.get("/api/v1/instances/web-1").json["node_name"] == "a"
    # turning it off ends the operation, failed, saying so
    api.post("/api/v1/nodes/a/maintenance", json={"on": False})
    op = api.get(f"/api/v1/operations/{op_id}").json
    assert op["state"] == "failed" and "before the node was empty" in op["error"]


def test_asking_twice_follows_the_same_operation(api: Api) -> None:
    node_with_vms(api)
    first = api.post("/api/v1/nodes/a/maintenance", json={"on": True}).json
    again = api.post("/api/v1/nodes/a/maintenance", json={"on": True}).json
    assert first["id"] == again["id"]  # type: ignore[index]


@pytest.mark.parametrize("body", [{}, {"on": "yes"}, {"on": True, "force": True}])
def test_maintenance_body_is_checked(api: Api, body: dict[str, Any]) -> None:
    api.join_node("a", underlay_ip=UNDERLAY["a"])
    r = api.post("/api/v1/nodes/a/maintenance", json=body)
    assert r.status_code == 422 and r.content_type == "application/problem+json"
    assert api.get("/api/v1/nodes/a").json["maintenance"] is False


def test_cli_node_maintenance(api: Api, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    node_with_vms(api)
    cli_answered_by(api, monkeypatch)
    assert cli.main(["node", "maintenance", "a", "on", "--no-wait"]) == 0
    assert "maintenance on" in capsys.readouterr().out
    assert cli.main(["node", "show", "a"]) == 0
    assert "maintenance: on" in capsys.readouterr().out
    assert cli.main(["node", "maintenance", "a", "off"]) == 0
    assert "takes new VMs again" in capsys.readouterr().out
    assert api.get("/api/v1/nodes/a").json["maintenance"] is False


def test_a_round_reads_the_region_once_and_counts_each_move_it_starts(
        api: Api, rbd_region: Region) -> None:
    """Many stopped VMs go at once: the round places them all from one reading of the
    region (not a scan of every instance per VM), each counted before the next."""
    reserved = rbd_region.config.reserved_host_memory_mib
    room = reserved + 2 * 1024 + 600  # b and c: two 1 GiB VMs each (and the small ones)
    nodes, _vms = node_with_vms(api, b=room, c=room)
    for i in range(5):
        assert _create(api, f"cold-{i}", node="a", start=False,
                       memory_mib=1024).status_code == 202
    d = api.desired(nodes["a"])
    tell(api, nodes["a"], *[_observed(v, ObservedVmState.RUNNING if v["name"] == "web-1"
                                      else ObservedVmState.STOPPED) for v in d["vms"]],
         applied=d["generation"])
    op_id = api.post("/api/v1/nodes/a/maintenance", json={"on": True}).json["id"]  # type: ignore[index]
    usage_reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "GROUP BY instances.node_id" in statement:
            usage_reads.append(statement)

    event.listen(rbd_region.engine, "before_cursor_execute", count)
    try:
        round_of(rbd_region)
    finally:
        event.remove(rbd_region.engine, "before_cursor_execute", count)
    assert len(usage_reads) == 1
    placed = {name: api.get(f"/api/v1/instances/{name}").json["node_name"]
              for name in [f"cold-{i}" for i in range(5)]}
    moved = [n for n, where in placed.items() if where != "a"]
    assert len(moved) == 4  # two on each of b and c: none over its room
    assert sorted(placed[n] for n in moved) == ["b", "b", "c", "c"]
    [left] = [n for n, where in placed.items() if where == "a"]
    op = api.get(f"/api/v1/operations/{op_id}").json
    assert f"{left}: no node can host" in op["message"] and "memory free" in op["message"]
