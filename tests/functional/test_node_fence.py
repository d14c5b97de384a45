"""A node's self-fence and storage heartbeat as the controller shows them, and clearing a
fence: the agent's own watchdog takes the cleared fence from its desired state."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from agent.fencing import Watchdog
from agent.protocol import DesiredState, NodeStatus
from controller.cli import main as cli
from controller.ha.ceph import CephAccess, Heartbeat, HeartbeatJudge
from controller.ha.storage_watch import StorageWatch
from controller.region import Region
from tests.functional.helpers import Api, FakeNode, inventory, storage
from tests.functional.test_node_failures import TestClient

FENCED_AT = datetime(2026, 12, 2, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    return Api(client, region)


def report_fenced(api: Api, node: FakeNode, fenced_at: datetime | None) -> None:
    status = NodeStatus(applied_generation=0, inventory=inventory(4, 8192, None), vms=[],
                        storage=storage("localfs"), sent_at=datetime.now(UTC),
                        self_fenced_at=fenced_at)
    r = api.client.post(f"/agent/v1/nodes/{node.id}/status", data=status.model_dump_json(),
                        content_type="application/json", environ_overrides=node.environ())
    assert r.status_code == 204, r.json


def test_a_fenced_node_is_shown_and_cleared_for_exactly_that_fence(
        api: Api, tmp_path: Path) -> None:
    node = api.join_node("n1")
    assert api.get("/api/v1/nodes/n1").json["self_fenced_at"] is None
    r = api.post("/api/v1/nodes/n1/clear-fence")
    assert r.status_code == 409
    assert r.json["detail"] == "node 'n1' reports no fence: there is nothing to clear"

    # the agent's watchdog fenced at FENCED_AT and reports it
    watchdog = Watchdog(20.0, lambda: [], state_dir=tmp_path, wall=lambda: FENCED_AT,
                        clock=iter([0.0, 100.0, 100.0]).__next__)
    assert watchdog.check() == FENCED_AT
    report_fenced(api, node, watchdog.fenced_at)
    shown = api.get("/api/v1/nodes/n1").json
    assert shown["self_fenced_at"] == "2026-12-02T12:00:00.123456Z"
    before = api.desired(node)
    assert before["fence_cleared"] is None

    r = api.post(f"/api/v1/nodes/{node.id}/clear-fence")
    assert r.status_code == 200, r.json
    assert r.json["fence_cleared_at"] == "2026-12-02T12:00:00.123456Z"
    after = api.desired(node)
    assert after["generation"] > before["generation"]
    # through the database and the wire, the agent finds its own fence named
    assert watchdog.clear(DesiredState.model_validate(after).fence_cleared)
    assert watchdog.start_refusal() is None
    [entry] = [e for e in api.get("/api/v1/audit-events").json
               if e["action"] == "node.clear-fence"]
    assert entry["target"] == f"node/{node.id}" and entry["actor"] == "admin"


def test_node_show_says_how_fresh_the_storage_heartbeat_is(
        api: Api, region: Region, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    node = api.join_node("n1")
    report_fenced(api, node, FENCED_AT)
    beats: dict[str, Heartbeat | None] = {node.id: Heartbeat(7, "2026-12-02T12:00:00Z")}
    now = [0.0]

    def read(ids: list[str]) -> dict[str, Heartbeat | None]:
        return {i: beats.get(i) for i in ids}

    region.storage_watch = StorageWatch(
        CephAccess(Path("/nonexistent/ceph.conf"), "vauban", "k"), "vauban", 30.0,
        judge=HeartbeatJudge(30.0, clock=lambda: now[0]), read=read)
    region.storage_watch.refresh(region.reads)
    beat: dict[str, Any] = api.get("/api/v1/nodes/n1").json["storage_heartbeat"]
    assert (beat["seq"], beat["stale"]) == (7, False)
    assert beat["detail"].endswith(" s ago")

    now[0] = 31.0  # unchanged for longer than the storage down delay
    region.storage_watch.refresh(region.reads)
    monkeypatch.setattr(cli, "Client", lambda _settings: TestClient(api))
    monkeypatch.setattr(cli.Settings, "load", classmethod(lambda cls: None))
    assert cli.main(["node", "show", "n1"]) == 0
    out = capsys.readouterr().out
    assert "storage heartbeat: stale since " in out and "(seq 7)" in out
    assert ("self-fenced at 2026-12-02T12:00:00.123456Z: its VMs were destroyed and none "
            "starts there until the fence is cleared (vauban node clear-fence n1)") in out

    beats[node.id] = Heartbeat(8, None)  # it writes again
    region.storage_watch.refresh(region.reads)
    assert api.get("/api/v1/nodes/n1").json["storage_heartbeat"]["stale"] is False
