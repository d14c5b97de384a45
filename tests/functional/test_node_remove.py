"""Removing a node from the region: refused while it holds VMs, audited, and from then on
its certificate is refused with the reason, which the agent's client takes as final."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from agent.client import ControllerUnavailable, NodeRemoved
from agent.protocol import NODE_REMOVED, ObservedVm, ObservedVmState
from controller.db.models import Node
from controller.region import Region
from tests.functional.helpers import RAW_IMAGE, Api, FakeNode, served_as_node
from tests.functional.test_agent_protocol import agent_client_for


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    a = Api(client, region)
    assert a.import_image("tiny", RAW_IMAGE).status_code == 201
    return a


def _create_vm(api: Api, name: str, node: str) -> dict[str, Any]:
    r = api.post("/api/v1/instances", json={"name": name, "image": "tiny", "vcpus": 1,
                                            "memory_mib": 256, "node": node})
    assert r.status_code == 202, r.json
    return api.get(f"/api/v1/instances/{name}").json  # type: ignore[return-value]


def test_a_node_with_vms_is_not_removed_and_the_problem_names_them(api: Api) -> None:
    api.join_node("n1")
    _create_vm(api, "web-2", "n1")
    _create_vm(api, "web-1", "n1")

    r = api.delete("/api/v1/nodes/n1")

    assert r.status_code == 409
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json == {
        "type": "https://vauban.dev/problems/conflict", "title": "Conflict", "status": 409,
        "detail": "node 'n1' still has 2 VM(s) (web-1, web-2); delete or move them first",
        "instance": "/api/v1/nodes/n1", "instances": ["web-1", "web-2"], "volumes": []}
    assert [n["name"] for n in api.get("/api/v1/nodes").json] == ["n1"]
    assert not [e for e in api.get("/api/v1/audit-events").json if e["action"] == "node.remove"]


def test_a_node_whose_vm_is_being_deleted_is_not_removed_yet(api: Api) -> None:
    node = api.join_node("n1")
    vm = _create_vm(api, "web-1", "n1")
    assert api.delete("/api/v1/instances/web-1").status_code == 202

    r = api.delete(f"/api/v1/nodes/{node.id}")  # by id too

    assert r.status_code == 409 and r.json["instances"] == ["web-1"]
    api.report(node, [], applied=api.desired(node)["generation"])  # the node confirms
    assert api.get(f"/api/v1/instances/{vm['id']}").status_code == 404
    assert api.delete(f"/api/v1/nodes/{node.id}").status_code == 204


def test_removing_a_node_is_audited_and_frees_its_name(api: Api) -> None:
    node = api.join_node("n1")
    api.join_node("n2")

    assert api.delete("/api/v1/nodes/n1").status_code == 204

    assert [n["name"] for n in api.get("/api/v1/nodes").json] == ["n2"]
    assert api.get("/api/v1/nodes/n1").status_code == 404
    [event] = [e for e in api.get("/api/v1/audit-events").json if e["action"] == "node.remove"]
    assert (event["actor"], event["target"], event["outcome"]) == (
        "admin", f"node/{node.id}", "accepted")
    assert event["detail"]["name"] == "n1"
    again = api.join_node("n1")  # the machine joins again, as a new node
    assert again.id != node.id
    gone = api.delete("/api/v1/nodes/nowhere")
    assert gone.status_code == 404 and gone.json["detail"] == "node 'nowhere' does not exist"


def test_a_removed_nodes_certificate_is_refused_saying_why(api: Api) -> None:
    node = api.join_node("n1")
    assert api.delete("/api/v1/nodes/n1").status_code == 204

    for r in (api.client.get(f"/agent/v1/nodes/{node.id}/desired?after=-1&wait=0",
                             environ_overrides=node.environ()),
              api.client.post(f"/agent/v1/nodes/{node.id}/status", json={},
                              environ_overrides=node.environ())):
        assert r.status_code == 403
        assert r.json["type"] == f"https://vauban.dev/problems/{NODE_REMOVED}"
        detail = r.json["detail"]
        assert detail.startswith(f"node 'n1' ({node.id}) was removed from the region by admin "
                                 "at 20")
        assert "join it again with a new join token" in detail


def test_a_certificate_of_a_node_never_in_the_region_is_refused_as_before(api: Api) -> None:
    stranger = FakeNode("0c9e1a5e-0000-4000-8000-000000000000", "x",
                        {"subject": ((("commonName", "0c9e1a5e-0000-4000-8000-000000000000"),),),
                         "serialNumber": "1F"})
    r = api.client.get(f"/agent/v1/nodes/{stranger.id}/desired?after=-1&wait=0",
                       environ_overrides=stranger.environ())
    assert r.status_code == 403 and r.json["type"].endswith("/forbidden")
    assert r.json["detail"] == "this client certificate does not belong to a node of the region"


@pytest.fixture
def served_node(api: Api) -> Iterator[tuple[str, FakeNode]]:
    node = api.join_node("n1")
    with served_as_node(api.region, node) as url:
        yield url, node


def test_the_agents_client_takes_the_removal_as_final_not_an_outage(
        api: Api, served_node: tuple[str, FakeNode], tmp_path: Path) -> None:
    url, node = served_node
    client = agent_client_for(url, node, tmp_path)
    assert client.desired(after=-1, wait=0) is not None
    assert api.delete("/api/v1/nodes/n1").status_code == 204

    with pytest.raises(NodeRemoved) as refused:
        client.desired(after=-1, wait=0)

    assert not isinstance(refused.value, ControllerUnavailable)  # retrying cannot help
    assert str(refused.value).startswith(f"node 'n1' ({node.id}) was removed from the region")


# --- a node that stops reporting: its VMs are unknown, never silently running ----------


def test_vms_of_a_silent_node_are_unknown_until_it_reports_again(
        api: Api, region: Region) -> None:
    node = api.join_node("n1")
    _create_vm(api, "web-1", "n1")
    desired = api.desired(node)
    [vm] = desired["vms"]
    running = ObservedVm(id=vm["id"], name="web-1", state=ObservedVmState.RUNNING,
                         power_seq=vm["power_seq"])
    api.report(node, [running], applied=desired["generation"])
    assert api.get("/api/v1/instances/web-1").json["state"] == "running"
    assert api.get("/api/v1/nodes/n1").json["state"] == "up"

    with region.sessions() as db, db.begin():  # silent for longer than the down delay
        db.get(Node, node.id).last_seen_at = (  # type: ignore[union-attr]
            datetime.now(UTC) - timedelta(seconds=region.config.node_down_after_s + 1))

    assert api.get("/api/v1/nodes/n1").json["state"] == "down"
    assert api.get("/api/v1/instances/web-1").json["state"] == "unknown"
    assert [v["state"] for v in api.get("/api/v1/instances").json] == ["unknown"]

    api.report(node, [running], applied=api.desired(node)["generation"])
    region.heartbeats.flush(region.sessions)  # as the controller does every second
    assert api.get("/api/v1/nodes/n1").json["state"] == "up"
    assert api.get("/api/v1/instances/web-1").json["state"] == "running"
