"""Reboot, reset and forced stop through the API, with the agent's side played by reports."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from agent.protocol import ObservedVmState
from controller.cli import main as cli
from controller.db.models import AuditEvent
from controller.region import Region
from tests.functional.cli_helpers import cli_answered_by
from tests.functional.helpers import RAW_IMAGE, Api, FakeNode
from tests.functional.test_instances import _create, _observed


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    a = Api(client, region)
    assert a.import_image("tiny", RAW_IMAGE).status_code == 201
    return a


def _running(api: Api, name: str = "web-1") -> tuple[FakeNode, dict[str, Any]]:
    """A node and a VM on it that it reports running (its create finished)."""
    node = api.join_node("n1")
    assert _create(api, name).status_code == 202
    d = api.desired(node)
    [vm] = [v for v in d["vms"] if v["name"] == name]
    api.report(node, [_observed(vm, ObservedVmState.RUNNING)], applied=d["generation"])
    return node, vm


def _audit(region: Region, action: str) -> list[dict[str, Any]]:
    with region.sessions() as db:
        return [e.detail for e in db.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq))]


@pytest.mark.parametrize("body, mode", [(None, "reboot"), ({}, "reboot"),
                                        ({"force": False}, "reboot"),
                                        ({"force": True}, "reset")])
def test_reboot_is_one_power_action_done_when_the_node_applied_it(
        api: Api, region: Region, body: dict[str, Any] | None, mode: str) -> None:
    node, vm = _running(api)
    r = api.post("/api/v1/instances/web-1/reboot", **({} if body is None else {"json": body}))
    assert r.status_code == 202, r.json
    op = r.json
    assert op["kind"] == "instance.reboot" and op["state"] == "pending"
    d = api.desired(node)
    [wanted] = d["vms"]
    assert (wanted["power"], wanted["power_mode"], wanted["power_seq"]) == ("running", mode, 2)
    assert api.get("/api/v1/instances/web-1").json["state"] == "rebooting"
    # still running under the old power action: not done
    api.report(node, [_observed(vm, ObservedVmState.RUNNING, 1)], applied=d["generation"])
    assert api.get(f"/api/v1/operations/{op['id']}").json["state"] == "pending"
    api.report(node, [_observed(vm, ObservedVmState.RUNNING, 2)], applied=d["generation"])
    assert api.get(f"/api/v1/operations/{op['id']}").json["state"] == "succeeded"
    assert api.get("/api/v1/instances/web-1").json["state"] == "running"
    assert _audit(region, "instance.reboot")[-1] == {"name": "web-1",
                                                     "force": mode == "reset"}


def test_forced_stop_asks_the_node_to_cut_the_power(api: Api, region: Region) -> None:
    node, vm = _running(api)
    r = api.post("/api/v1/instances/web-1/stop", json={"force": True})
    assert r.status_code == 202, r.json
    d = api.desired(node)
    assert (d["vms"][0]["power"], d["vms"][0]["power_mode"]) == ("stopped", "force")
    api.report(node, [_observed(vm, ObservedVmState.STOPPED, 2)], applied=d["generation"])
    assert api.get(f"/api/v1/operations/{r.json['id']}").json["state"] == "succeeded"
    assert _audit(region, "instance.stop")[-1] == {"name": "web-1", "force": True}
    # the next action is a plain one again: force applied to that stop only
    start = api.post("/api/v1/instances/web-1/start")
    assert start.status_code == 202
    d = api.desired(node)
    assert (d["vms"][0]["power"], d["vms"][0]["power_mode"]) == ("running", "normal")


def test_plain_stop_stays_graceful(api: Api, region: Region) -> None:
    node, _vm = _running(api)
    assert api.post("/api/v1/instances/web-1/stop", json={}).status_code == 202
    assert api.desired(node)["vms"][0]["power_mode"] == "normal"
    assert _audit(region, "instance.stop")[-1] == {"name": "web-1"}


def test_reboot_of_a_stopped_vm_is_a_conflict(api: Api, region: Region) -> None:
    node, vm = _running(api)
    api.post("/api/v1/instances/web-1/stop")
    d = api.desired(node)
    api.report(node, [_observed(vm, ObservedVmState.STOPPED, 2)], applied=d["generation"])
    r = api.post("/api/v1/instances/web-1/reboot")
    assert r.status_code == 409 and "start it instead" in r.json["detail"]
    assert api.desired(node)["generation"] == d["generation"]
    assert _audit(region, "instance.reboot") == []


def test_reboot_while_busy_or_deleting_is_a_conflict(api: Api) -> None:
    api.join_node("n1")
    _create(api)
    r = api.post("/api/v1/instances/web-1/reboot")
    assert r.status_code == 409 and "instance.create" in r.json["detail"]
    api.delete("/api/v1/instances/web-1")
    r = api.post("/api/v1/instances/web-1/reboot", json={"force": True})
    assert r.status_code == 409 and "being deleted" in r.json["detail"]


@pytest.mark.parametrize("path", ["stop", "reboot"])
@pytest.mark.parametrize("body, words", [({"force": "yes"}, "'force'"),
                                         ({"force": 1}, "'force'"),
                                         ({"grace": 0}, "'grace'")])
def test_bad_power_bodies_are_refused(api: Api, path: str, body: dict[str, Any],
                                      words: str) -> None:
    node, _vm = _running(api)
    before = api.desired(node)["generation"]
    r = api.post(f"/api/v1/instances/web-1/{path}", json=body)
    assert r.status_code == 422 and words in r.json["detail"]
    r = api.post(f"/api/v1/instances/web-1/{path}", data="force",
                 content_type="application/json")
    assert r.status_code == 400
    assert api.desired(node)["generation"] == before


def test_a_project_viewer_may_not_reboot_or_force_off(api: Api, region: Region) -> None:
    node, _vm = _running(api)
    project = api.get("/api/v1/instances/web-1").json["project"]
    viewer = api.as_new_user("watcher", ("project-viewer", project))
    member = api.as_new_user("worker", ("project-member", project))
    before = api.desired(node)["generation"]
    for path, body in (("reboot", {}), ("reboot", {"force": True}), ("stop", {"force": True})):
        r = viewer.post(f"/api/v1/instances/web-1/{path}", json=body)
        assert r.status_code == 403, r.json
    assert api.desired(node)["generation"] == before
    assert member.post("/api/v1/instances/web-1/reboot", json={"force": True}).status_code == 202


def test_openapi_says_the_power_bodies_are_optional(api: Api) -> None:
    paths = api.get("/api/v1/openapi.json").json["paths"]
    for action in ("stop", "reboot"):
        body = paths[f"/api/v1/instances/{{ref}}/{action}"]["post"]["requestBody"]
        assert body["required"] is False


def test_cli_reboot_and_forced_stop(api: Api, region: Region,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    node, vm = _running(api)
    cli_answered_by(api, monkeypatch)
    assert cli.main(["vm", "reboot", "web-1", "--force", "--no-wait"]) == 0
    d = api.desired(node)
    assert (d["vms"][0]["power_mode"], d["vms"][0]["power_seq"]) == ("reset", 2)
    api.report(node, [_observed(vm, ObservedVmState.RUNNING, 2)], applied=d["generation"])
    assert cli.main(["vm", "reboot", "web-1", "--no-wait"]) == 0
    d = api.desired(node)
    assert (d["vms"][0]["power_mode"], d["vms"][0]["power_seq"]) == ("reboot", 3)
    api.report(node, [_observed(vm, ObservedVmState.RUNNING, 3)], applied=d["generation"])
    assert cli.main(["vm", "stop", "web-1", "--force", "--no-wait"]) == 0
    d = api.desired(node)
    assert (d["vms"][0]["power"], d["vms"][0]["power_mode"]) == ("stopped", "force")
    assert [e["force"] for e in _audit(region, "instance.reboot")] == [True, False]
