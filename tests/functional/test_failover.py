"""HA failover over a real region database: a lost node is fenced (its power, then its
storage), and only then are its HA VMs given to other nodes. The fencing means are a
fake here (the lab fences real nodes through real BMCs and a real Ceph); the nodes'
agents are played by their reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, update

from agent.protocol import MigrationReport, ObservedVmState
from controller.app import create_app
from controller.cli import main as cli
from controller.db.models import AuditEvent, Failover, Node, NodeBmc
from controller.ha import failover
from controller.ha.failover import FenceError, LostNode
from controller.region import Region
from tests.functional.cli_helpers import cli_answered_by
from tests.functional.helpers import RAW_IMAGE, Api, FakeNode, inventory
from tests.functional.test_instances import _create, _observed
from tests.functional.test_migrate import UNDERLAY, tell, vms_of


@dataclass
class FakeFencer:
    """Records each step; fails a step while its error is set."""

    alive: bool = False
    power_error: str | None = None
    storage_error: str | None = None
    calls: list[str] = field(default_factory=list)
    during_power_off: Callable[[], None] | None = None
    during_cut: Callable[[], None] | None = None

    def storage_alive(self, node: LostNode) -> bool:
        return self.alive

    def power_off(self, node: LostNode) -> None:
        self.calls.append(f"power-off {node.name}")
        if self.during_power_off is not None:
            self.during_power_off()
        if self.power_error:
            raise FenceError(self.power_error)

    def cut_storage(self, node: LostNode) -> None:
        self.calls.append(f"cut {node.name} {','.join(node.addresses)}")
        if self.during_cut is not None:
            self.during_cut()
        if self.storage_error:
            raise FenceError(self.storage_error)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def api(rbd_region: Region) -> Api:
    a = Api(create_app(rbd_region).test_client(), rbd_region)
    assert a.import_image("tiny", RAW_IMAGE).status_code == 201
    return a


def lab(api: Api) -> dict[str, FakeNode]:
    """Nodes a (web-ha: HA, web-plain: not, both running) and b (empty)."""
    nodes = {name: api.join_node(name, underlay_ip=UNDERLAY[name]) for name in ("a", "b")}
    assert _create(api, "web-ha", node="a", ha=True).status_code == 202
    assert _create(api, "web-plain", node="a").status_code == 202
    d = api.desired(nodes["a"])
    tell(api, nodes["a"], *[_observed(v, ObservedVmState.RUNNING) for v in d["vms"]],
         applied=d["generation"])
    return nodes


def silence(region: Region, name: str, clock: Clock) -> None:
    """The node's agent has not been heard for longer than the down delay."""
    long_ago = clock.now - timedelta(seconds=region.config.node_down_after_s + 60)
    with region.sessions() as db, db.begin():
        db.execute(update(Node).where(Node.name == name).values(last_seen_at=long_ago))


def ticks(region: Region, fencer: FakeFencer, clock: Clock, n: int = 1) -> None:
    for _ in range(n):
        failover.tick(region.sessions, region.config, fencer, clock)


def audit(region: Region, *actions: str) -> list[tuple[str, str, dict[str, Any]]]:
    with region.sessions() as db:
        return [(e.action, e.outcome, e.detail) for e in db.scalars(
            select(AuditEvent).where(AuditEvent.action.in_(actions)).order_by(AuditEvent.seq))]


def the_failover(region: Region) -> Failover:
    with region.sessions() as db:
        fo = db.scalars(select(Failover)).one()
        db.expunge(fo)
        return fo


def test_a_lost_node_is_powered_off_then_cut_off_then_its_ha_vms_restart_elsewhere(
        api: Api, rbd_region: Region) -> None:
    nodes, clock, fencer = lab(api), Clock(), FakeFencer()
    where: list[str] = []  # web-ha's node while each fencing step runs
    fencer.during_power_off = fencer.during_cut = lambda: where.append(
        api.get("/api/v1/instances/web-ha").json["node_name"])
    silence(rbd_region, "a", clock)
    # one tick: each step confirmed is followed by the next at once, never skipped
    ticks(rbd_region, fencer, clock)
    assert fencer.calls == ["power-off a", f"cut a {UNDERLAY['a']}"]
    assert where == ["a", "a"]  # nothing restarted before both steps were confirmed
    assert the_failover(rbd_region).state == "done"
    moved = api.get("/api/v1/instances/web-ha").json
    assert moved["node_name"] == "b" and moved["ha"] is True
    restarted = vms_of(api, nodes["b"])["web-ha"]
    assert restarted["adopt_disk"] is True  # defined on its own disk, never a new one
    assert api.get("/api/v1/instances/web-plain").json["node_name"] == "a"
    # the fenced node takes nothing new; its desired state no longer has the moved VM
    assert "web-ha" not in vms_of(api, nodes["a"])
    shown = api.get("/api/v1/nodes/a").json
    assert shown["fenced_at"] is not None and shown["failover"]["state"] == "done"
    assert _create(api, "web-new", node="a").status_code == 409
    steps = audit(rbd_region, "node.lost", "node.fence", "vm.ha_restart")
    assert [(a, o) for a, o, _ in steps] == [
        ("node.lost", "observed"), ("node.fence", "succeeded"), ("node.fence", "succeeded"),
        ("vm.ha_restart", "succeeded")]
    assert steps[-1][2]["to"] == "b"
    ticks(rbd_region, fencer, clock, 3)  # nothing more happens
    assert len(audit(rbd_region, "vm.ha_restart")) == 1


def test_a_node_still_writing_its_storage_heartbeat_is_not_lost(
        api: Api, rbd_region: Region) -> None:
    lab(api)
    clock, fencer = Clock(), FakeFencer(alive=True)
    silence(rbd_region, "a", clock)
    ticks(rbd_region, fencer, clock, 3)
    assert fencer.calls == [] and audit(rbd_region, "node.lost") == []
    assert api.get("/api/v1/instances/web-ha").json["node_name"] == "a"


def test_a_bmc_that_does_not_answer_restarts_nothing_and_says_why(
        api: Api, rbd_region: Region) -> None:
    lab(api)
    clock = Clock()
    fencer = FakeFencer(power_error="BMC of node a at 10.0.9.1:623 did not answer")
    silence(rbd_region, "a", clock)
    ticks(rbd_region, fencer, clock, 4)  # within the retry delay: tried once
    assert fencer.calls == ["power-off a"]
    fo = the_failover(rbd_region)
    assert fo.state == "detected" and "did not answer" in (fo.reason or "")
    assert "nothing restarted" in (fo.reason or "")
    shown = api.get("/api/v1/nodes/a").json["failover"]
    assert "did not answer" in shown["reason"]
    assert api.get("/api/v1/instances/web-ha").json["node_name"] == "a"
    clock.now += failover.RETRY + timedelta(seconds=1)
    ticks(rbd_region, fencer, clock)
    assert fencer.calls == ["power-off a"] * 2  # retried
    assert [o for _, o, _ in audit(rbd_region, "node.fence")] == ["failed"]  # said once
    # the BMC answers again: the failover goes on
    fencer.power_error = None
    clock.now += failover.RETRY + timedelta(seconds=1)
    ticks(rbd_region, fencer, clock, 3)
    assert the_failover(rbd_region).state == "done"


def test_a_controller_that_dies_during_a_step_completes_the_failover_once(
        api: Api, rbd_region: Region) -> None:
    lab(api)
    clock, fencer = Clock(), FakeFencer()

    def crash() -> None:
        raise KeyboardInterrupt  # the process ends in the middle of the BMC call

    fencer.during_power_off = crash
    silence(rbd_region, "a", clock)
    with pytest.raises(KeyboardInterrupt):
        ticks(rbd_region, fencer, clock)
    assert the_failover(rbd_region).state == "detected"
    # another controller process finds the step claimed and leaves it alone
    fencer.during_power_off = None
    ticks(rbd_region, fencer, clock)
    assert fencer.calls == ["power-off a"]
    # once the claim lapses it runs the step again (powering off an off node is harmless)
    with rbd_region.sessions() as db, db.begin():
        db.execute(update(Failover).values(claimed_until=clock.now - timedelta(seconds=1)))
    ticks(rbd_region, fencer, clock, 5)
    assert the_failover(rbd_region).state == "done"
    assert fencer.calls == ["power-off a", "power-off a", f"cut a {UNDERLAY['a']}"]
    assert len(audit(rbd_region, "vm.ha_restart")) == 1


def test_a_node_back_before_it_was_fenced_keeps_its_vms(api: Api, rbd_region: Region) -> None:
    nodes = lab(api)
    clock = Clock()
    fencer = FakeFencer(power_error="BMC of node a at 10.0.9.1:623 did not answer")
    silence(rbd_region, "a", clock)
    ticks(rbd_region, fencer, clock)
    tell(api, nodes["a"])  # its agent reports again
    clock.now = datetime.now(UTC)
    clock.now += failover.RETRY + timedelta(seconds=1)
    ticks(rbd_region, fencer, clock)
    assert the_failover(rbd_region).state == "cancelled"
    assert api.get("/api/v1/instances/web-ha").json["node_name"] == "a"


def test_an_operator_vouches_for_the_power_and_recovers_the_node(
        api: Api, rbd_region: Region, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = lab(api)
    clock = Clock()
    fencer = FakeFencer(power_error="node a has no BMC configured")
    silence(rbd_region, "a", clock)
    ticks(rbd_region, fencer, clock)
    r = api.post("/api/v1/nodes/a/fence", json={"confirm_powered_off": True})
    assert r.status_code == 200 and r.json["state"] == "powered-off", r.json  # type: ignore[index]
    ticks(rbd_region, fencer, clock, 2)
    assert the_failover(rbd_region).state == "done"
    [vouched] = [d for a, o, d in audit(rbd_region, "node.fence") if d.get("vouched_by")]
    assert vouched["vouched_by"] == "admin"
    again = api.post("/api/v1/nodes/a/fence", json={"confirm_powered_off": True})
    assert again.status_code == 409
    early = api.post("/api/v1/nodes/a/recover")  # not back yet: refused, in words
    assert early.status_code == 409 and "has not reported since it was fenced" in \
        early.json["detail"]  # type: ignore[index]
    tell(api, nodes["a"])  # repaired, powered on: its agent reports again
    cli_answered_by(api, monkeypatch)
    assert cli.main(["node", "recover", "a"]) == 0
    assert api.get("/api/v1/nodes/a").json["fenced_at"] is None
    assert api.post("/api/v1/nodes/a/recover").status_code == 409  # not fenced now


def test_a_vm_of_the_lost_node_that_was_migrating_waits_for_its_target(
        api: Api, rbd_region: Region) -> None:
    """It may run on the migration's target already: restarting it elsewhere could make
    two copies. The target's report decides."""
    nodes = lab(api) | {"c": api.join_node("c", underlay_ip="10.0.0.4")}
    UNDERLAY["c"] = "10.0.0.4"
    for name in ("b", "c"):
        tell(api, nodes[name])
    tell(api, nodes["a"], *[_observed(v, ObservedVmState.RUNNING)
                            for v in api.desired(nodes["a"])["vms"]])
    assert api.post("/api/v1/instances/web-ha/migrate", json={"to": "c"}).status_code == 202
    ha = vms_of(api, nodes["c"])["web-ha"]
    tell(api, nodes["c"], _observed(ha, ObservedVmState.INCOMING).model_copy(
        update={"migration": MigrationReport(seq=1, state="ready")}))
    clock, fencer = Clock(), FakeFencer()
    silence(rbd_region, "a", clock)
    ticks(rbd_region, fencer, clock, 3)
    fo = the_failover(rbd_region)
    assert fo.state == "fenced" and "web-ha: was migrating to c" in (fo.reason or "")
    assert api.get("/api/v1/instances/web-ha").json["node_name"] == "a"
    assert "web-ha" not in vms_of(api, nodes["b"])
    # the target says it runs it: the move completes, and the failover is done
    tell(api, nodes["c"], _observed(ha, ObservedVmState.RUNNING).model_copy(
        update={"migration": MigrationReport(seq=1, state="completed")}))
    clock.now += failover.RETRY + timedelta(seconds=1)
    ticks(rbd_region, fencer, clock)
    assert the_failover(rbd_region).state == "done"
    assert api.get("/api/v1/instances/web-ha").json["node_name"] == "c"
    assert audit(rbd_region, "vm.ha_restart") == []


def test_ha_needs_shared_storage_and_no_gpu(client: Any, region: Region) -> None:
    api = Api(client, region)
    assert api.import_image("tiny", RAW_IMAGE).status_code == 201
    api.join_node("a", underlay_ip=UNDERLAY["a"])
    r = _create(api, "web-1", ha=True)
    assert r.status_code == 409 and "shared storage" in r.json["detail"]


def test_ha_is_set_and_cleared_on_a_vm(api: Api, rbd_region: Region) -> None:
    lab(api)
    r = api.put("/api/v1/instances/web-plain/ha", json={"enabled": True})
    assert r.status_code == 200 and r.json["ha"] is True  # type: ignore[index]
    assert api.put("/api/v1/instances/web-plain/ha", json={}).status_code == 422
    assert api.put("/api/v1/instances/web-plain/ha",
                   json={"enabled": False}).json["ha"] is False  # type: ignore[index]
    assert [d["enabled"] for _, _, d in audit(rbd_region, "instance.ha")] == [True, False]


def test_a_fenced_node_with_a_bmc_and_a_failover_behind_it_can_be_removed(
        api: Api, rbd_region: Region) -> None:
    nodes = lab(api)
    clock, fencer = Clock(), FakeFencer()
    with rbd_region.sessions() as db, db.begin():
        db.add(NodeBmc(node_id=nodes["a"].id, kind="ipmi", address="10.0.9.1", port=623,
                       username="admin", password_sealed="sealed"))
    silence(rbd_region, "a", clock)
    ticks(rbd_region, fencer, clock)
    refused = api.delete("/api/v1/nodes/a")
    assert refused.status_code == 409  # its VMs, and its failover under way
    ticks(rbd_region, fencer, clock, 3)
    assert api.delete("/api/v1/instances/web-plain").status_code == 202
    tell(api, nodes["a"])  # back, without the deleted VM
    r = api.delete("/api/v1/nodes/a")
    assert r.status_code == 204, r.json
    with rbd_region.sessions() as db:
        assert db.scalars(select(Failover)).all() == []
        assert db.scalars(select(NodeBmc)).all() == []


def test_the_lost_nodes_ha_vms_fill_what_is_free_from_one_reading_of_the_region(
        api: Api, rbd_region: Region) -> None:
    """Restarting many VMs reads the region's usage once (not once per VM, a scan of every
    instance each), and still counts each VM it placed before it places the next."""
    reserved = rbd_region.config.reserved_host_memory_mib
    a = api.join_node("a", memory_mib=65536, underlay_ip=UNDERLAY["a"])
    room = reserved + 2 * 2048 + 100  # for two of the three
    b = api.join_node("b", memory_mib=room, underlay_ip=UNDERLAY["b"])
    api.report(b, [], inv=inventory(memory_mib=room, underlay_ip=UNDERLAY["b"]))
    for i in range(3):
        assert _create(api, f"ha-{i}", node="a", ha=True, memory_mib=2048).status_code == 202
    d = api.desired(a)
    tell(api, a, *[_observed(v, ObservedVmState.RUNNING) for v in d["vms"]],
         applied=d["generation"])
    clock, fencer = Clock(), FakeFencer()
    silence(rbd_region, "a", clock)
    usage_reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "GROUP BY instances.node_id" in statement:
            usage_reads.append(statement)

    event.listen(rbd_region.engine, "before_cursor_execute", count)
    try:
        ticks(rbd_region, fencer, clock)
    finally:
        event.remove(rbd_region.engine, "before_cursor_execute", count)
    assert len(usage_reads) == 1
    placed = sorted(name for name in vms_of(api, b))
    assert placed == ["ha-0", "ha-1"]  # room for two: the third waits, in words
    fo = the_failover(rbd_region)
    assert fo.state == "fenced" and "waiting for room for: ha-2" in (fo.reason or "")
    assert "MiB memory free, 2048 asked" in (fo.reason or "")
