"""`vauban monitor` and `--wait` on the event stream, answered through Flask's test client."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from agent.protocol import ObservedVm, ObservedVmState
from controller.cli import main as cli
from controller.db.models import Instance
from controller.region import Region
from controller.services import events
from tests.functional.cli_helpers import ApiClient, cli_answered_by
from tests.functional.helpers import RAW_IMAGE, Api, FakeNode


@pytest.fixture
def api(client: FlaskClient, region: Region, monkeypatch: pytest.MonkeyPatch) -> Api:
    return cli_answered_by(Api(client, region), monkeypatch)


def _newest(region: Region) -> int:
    with region.reads() as db:
        return events.newest_id(db)


def test_monitor_prints_an_event_per_line(api: Api, region: Region,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    start = _newest(region)
    assert api.post("/api/v1/security-groups", json={"name": "web"}).status_code == 201
    assert cli.main(["monitor", "--type", "security_group", "--after", str(start),
                     "--count", "1"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert "security_group.changed" in line and " default " in line and line.endswith("web")
    assert cli.main(["monitor", "--json", "--after", str(start), "--count", "1",
                     "--type", "security_group"]) == 0
    told = json.loads(capsys.readouterr().out)
    assert told["type"] == "security_group.changed" and told["object"]["name"] == "web"


def _vm_and_node(api: Api) -> tuple[dict[str, Any], FakeNode]:
    node = api.join_node("n1")
    digest = hashlib.sha256(RAW_IMAGE).hexdigest()
    assert api.post(f"/api/v1/images?name=base&disk_format=raw&sha256={digest}",
                    data=RAW_IMAGE, content_type="application/octet-stream").status_code == 201
    r = api.post("/api/v1/instances", json={"name": "web", "image": "base", "vcpus": 1,
                                            "memory_mib": 128})
    assert r.status_code == 202, r.json
    return r.json, node  # type: ignore[return-value]


def _runs(api: Api, region: Region, node: FakeNode) -> None:
    """The node reports the VM running: its create operation ends."""
    with region.reads() as db:
        vm = db.scalars(select(Instance)).one()
        seen = ObservedVm(id=vm.id, name=vm.name, state=ObservedVmState.RUNNING,
                          power_seq=vm.power_seq)
    api.report(node, [seen], applied=int(api.desired(node)["generation"]))


class CountingClient(ApiClient):
    def __init__(self, api: Api) -> None:
        super().__init__(api)
        self.reads: list[str] = []

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.reads.append(f"{method} {path}")
        return super().request(method, path, **kwargs)


def test_wait_follows_the_operations_events(api: Api, region: Region) -> None:
    op, node = _vm_and_node(api)
    c = CountingClient(api)
    progress: list[str] = []

    def on_progress(o: dict[str, Any]) -> None:
        progress.append(o["state"])
        if len(progress) == 1:  # the stream is open: the node reports now
            _runs(api, region, node)

    done = c.wait(op, on_progress)
    assert done["state"] == "succeeded" and progress[0] == "pending"
    assert progress[-1] == "succeeded"
    assert c.reads == [f"GET /operations/{op['id']}"], "the operation was polled"


def test_wait_on_an_ended_operation_returns_at_once(api: Api, region: Region) -> None:
    op, node = _vm_and_node(api)
    _runs(api, region, node)
    c = CountingClient(api)
    assert c.wait(op, lambda _o: None)["state"] == "succeeded"
    assert c.reads == [f"GET /operations/{op['id']}"]


def test_vm_create_wait_prints_as_before(api: Api, region: Region,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    node = api.join_node("n1")
    digest = hashlib.sha256(RAW_IMAGE).hexdigest()
    assert api.post(f"/api/v1/images?name=base&disk_format=raw&sha256={digest}",
                    data=RAW_IMAGE, content_type="application/octet-stream").status_code == 201
    calls: list[int] = []

    def progress(_label: str, percent: int) -> None:
        calls.append(percent)
        if len(calls) == 1:
            _runs(api, region, node)

    monkeypatch.setattr(cli, "progress_line", progress)
    assert cli.main(["vm", "create", "web", "--image", "base", "--cpus", "1", "--memory",
                     "128", "--wait"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "create web: done"
    assert calls[-1] == 100
