"""A heartbeat that says nothing new is not ingested: only when the node was heard is kept,
and written for all nodes at once; anything new, or a changed desired state, is ingested."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask.testing import FlaskClient

from agent.protocol import ObservedVm, ObservedVmState
from controller.db.models import Node
from controller.region import Region
from controller.services import desired
from tests.functional.helpers import Api, storage


def _node(region: Region, node_id: str) -> Node:
    with region.reads() as db:
        node = db.get(Node, node_id)
        assert node is not None
        return node


def test_a_repeated_report_only_marks_the_node_heard(client: FlaskClient,
                                                     region: Region) -> None:
    api = Api(client, region)
    node = api.join_node("n1")  # its first report is ingested in full
    first = _node(region, node.id)
    # same content, other measurements: the free space moved, nothing happened
    api.report(node, [], disk=storage(free_bytes=10**11))
    again = _node(region, node.id)
    assert again.storage_status == first.storage_status  # not ingested
    assert again.last_seen_at == first.last_seen_at  # not written yet: batched
    assert region.heartbeats.flush(region.sessions) == 1
    assert _node(region, node.id).last_seen_at > first.last_seen_at  # type: ignore[operator]
    assert region.heartbeats.flush(region.sessions) == 0  # nothing heard since


def test_a_report_that_says_something_new_is_ingested(client: FlaskClient,
                                                      region: Region) -> None:
    api = Api(client, region)
    node = api.join_node("n1")
    api.report(node, [], applied=5)
    assert _node(region, node.id).applied_generation == 5


def test_after_a_change_of_its_desired_state_the_same_report_is_ingested(
        client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    node = api.join_node("n1")
    with region.sessions() as s:
        desired.bump(s.get(Node, node.id))  # type: ignore[arg-type]
        s.commit()
    api.report(node, [], disk=storage(free_bytes=10**11))
    pools = _node(region, node.id).storage_status["pools"]  # type: ignore[index]
    assert pools[0]["max_avail_bytes"] == 10**11


def test_measurements_are_refreshed_at_least_every_full_period(client: FlaskClient,
                                                               region: Region) -> None:
    api = Api(client, region)
    node = api.join_node("n1")
    book = region.heartbeats
    digest, at = book._ingested[node.id]
    book.ingested(node.id, digest, at - timedelta(seconds=book.full_every_s))
    api.report(node, [], disk=storage(free_bytes=10**11))
    pools = _node(region, node.id).storage_status["pools"]  # type: ignore[index]
    assert pools[0]["max_avail_bytes"] == 10**11


def test_a_vm_state_is_never_mistaken_for_a_measurement() -> None:
    from agent.protocol import NodeStatus
    from controller.services.heartbeats import digest
    from tests.functional.helpers import inventory

    def status(state: ObservedVmState, free: int) -> NodeStatus:
        return NodeStatus(applied_generation=1, inventory=inventory(), vms=[ObservedVm(
            id="v", name="v", state=state, power_seq=1)], storage=storage(free_bytes=free),
            sent_at=datetime.now(UTC))

    running = digest(status(ObservedVmState.RUNNING, 10**11))
    assert digest(status(ObservedVmState.RUNNING, 10**10)) == running
    assert digest(status(ObservedVmState.STOPPED, 10**11)) != running


def test_a_long_poll_proves_the_node_alive(client: FlaskClient, region: Region) -> None:
    """Between two reports, which may be minutes apart in a large region, the long-polls
    the agent keeps open are what keep its node up."""
    api = Api(client, region)
    node = api.join_node("n1")
    reported = _node(region, node.id).last_seen_at
    generation = api.desired(node)["generation"]
    r = client.get(f"/agent/v1/nodes/{node.id}/desired?after={generation}&wait=0",
                   environ_overrides=node.environ())
    assert r.status_code == 204
    assert region.heartbeats.flush(region.sessions) == 1
    assert _node(region, node.id).last_seen_at > reported  # type: ignore[operator]


def test_a_node_that_never_reported_stays_new_however_often_it_polls(
        client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    node = api.join_node("n1", report=False)
    api.desired(node)
    region.heartbeats.flush(region.sessions)
    assert api.get("/api/v1/nodes/n1").json["state"] == "new"
