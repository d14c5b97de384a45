"""Failures an agent reports reach the operator: node and VM read models, and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from agent.protocol import NodeFailure, ObservedVm, ObservedVmState
from controller.cli import main as cli
from controller.cli.client import Client, Settings
from controller.region import Region
from tests.functional.helpers import RAW_IMAGE, Api

SINCE = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
VNI_TAKEN = "VNI 1000 is already used by device vx-other on this node (UDP port 4789)"


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    a = Api(client, region)
    assert a.import_image("tiny", RAW_IMAGE).status_code == 201
    return a


def _vm_on_lan(api: Api) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """A node, a tenant network 'lan' and a VM on it, as the node is told of them."""
    node = api.join_node("n1", underlay_ip="198.18.0.1")
    r = api.post("/api/v1/networks", json={"name": "lan", "kind": "tenant",
                                          "subnets": [{"cidr": "10.0.0.0/24"}]})
    assert r.status_code == 201, r.json
    net = r.json
    r = api.post("/api/v1/instances", json={"name": "web-1", "image": "tiny", "vcpus": 1,
                                            "memory_mib": 256, "networks": ["lan"]})
    assert r.status_code == 202, r.json
    [vm] = api.desired(node)["vms"]
    return node, net, vm  # type: ignore[return-value]


def _report_network_failure(api: Api) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    node, net, vm = _vm_on_lan(api)
    failures = [
        NodeFailure(kind="network", object_id=net["id"], action="ensure",
                    message=f"tenant network {net['id']}: {VNI_TAKEN}", retryable=False,
                    final=True, since=SINCE, attempts=1),
        NodeFailure(kind="vm", object_id=vm["id"], action="flatten",
                    message="Ceph cluster unreachable", retryable=True, final=False,
                    since=SINCE, attempts=2, next_retry_at=SINCE),
        NodeFailure(kind="image", object_id="other-image", action="delete",
                    message="rbd: I/O error", retryable=False, final=True,
                    since=SINCE, attempts=1),
    ]
    # the VM waits for its network: it shows the network's cause as its own error
    observed = ObservedVm(id=vm["id"], name=vm["name"], state=ObservedVmState.PROVISIONING,
                          power_seq=0, error=f"waiting: network lan ({net['id']}) is not "
                          f"ready on this node: {failures[0].message}")
    api.report(node, [observed], underlay_ip="198.18.0.1", failures=failures)
    return node, net, vm


def test_reported_failures_are_shown_on_the_node_and_the_vm(api: Api) -> None:
    fake_node, net, vm = _report_network_failure(api)
    node = api.get("/api/v1/nodes/n1").json
    assert [(f["kind"], f["object_id"], f["final"]) for f in node["failures"]] == [
        ("network", net["id"], True), ("vm", vm["id"], False), ("image", "other-image", True)]
    assert VNI_TAKEN in node["failures"][0]["message"]
    shown = api.get("/api/v1/instances/web-1").json
    assert VNI_TAKEN in shown["error"]  # the network's cause, not just its symptom
    # the VM's own failure and its network's; the image is nothing of the VM's
    assert [(f["kind"], f["object_id"]) for f in shown["failures"]] == [
        ("network", net["id"]), ("vm", vm["id"])]
    # a later report without them clears them
    api.report(fake_node, [], underlay_ip="198.18.0.1")
    assert api.get("/api/v1/nodes/n1").json["failures"] == []
    assert api.get("/api/v1/instances/web-1").json["failures"] == []


class TestClient(Client):
    """The CLI's client, answered by the Flask test client instead of over HTTPS."""

    __test__ = False

    def __init__(self, api: Api) -> None:
        super().__init__(Settings(url="https://controller.invalid", token=None, ca_file=None))
        self.api = api

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.api.client.open("/api/v1" + path, method=method, headers=self.api.headers,
                                 json=kwargs.get("json"))
        assert r.status_code < 400, r.json
        return r.json


def test_cli_node_show_and_vm_show_say_what_failed_and_why(
        api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _node, net, _vm = _report_network_failure(api)
    monkeypatch.setattr(cli, "Client", lambda _settings: TestClient(api))
    monkeypatch.setattr(cli.Settings, "load", classmethod(lambda cls: None))

    assert cli.main(["node", "show", "n1"]) == 0
    out = capsys.readouterr().out
    assert "failures reported by its agent:" in out
    assert (f"network {net['id']}: ensure failed: tenant network {net['id']}: {VNI_TAKEN} "
            "(1 attempt since 2026-12-01T06:00:00Z; not retryable: fix the cause, then ask "
            "again)") in out
    assert "image other-image: delete failed: rbd: I/O error" in out

    assert cli.main(["vm", "show", "web-1"]) == 0
    out = capsys.readouterr().out
    assert f"error:   waiting: network lan ({net['id']}) is not ready on this node" in out
    assert "failures on its node:" in out and VNI_TAKEN in out
    assert "retrying at 2026-12-01T06:00:00Z" in out
    assert "other-image" not in out

    assert cli.main(["vm", "show", "web-1", "--json"]) == 0
    assert '"failures": [' in capsys.readouterr().out
