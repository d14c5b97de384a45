"""Building a node's desired state costs the same number of queries however many VMs,
ports and addresses it has: at 10,000 nodes every change wakes many builds at once."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import event

from controller.db.models import Node
from controller.region import Region
from controller.services import desired
from tests.functional.helpers import RAW_IMAGE, Api


def _queries_to_build(region: Region, node_id: str) -> int:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    with region.reads() as db:
        node = db.get(Node, node_id)
        assert node is not None
        event.listen(region.engine, "before_cursor_execute", count)
        try:
            state = desired.build(db, node)
        finally:
            event.remove(region.engine, "before_cursor_execute", count)
    assert state.vms  # the build really carried the VMs
    return len(statements)


def test_desired_state_queries_do_not_grow_with_vms(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    small, big = api.join_node("small"), api.join_node("big")
    assert api.import_image("tiny", RAW_IMAGE).status_code == 201
    r = api.post("/api/v1/networks", json={"name": "lan", "kind": "tenant",
                                           "subnets": [{"cidr": "10.0.0.0/24"},
                                                       {"cidr": "fd00::/64"}]})
    assert r.status_code == 201, r.json
    for name, node, count in (("s", "small", 1), ("b", "big", 5)):
        for i in range(count):
            r = api.post("/api/v1/instances", json={
                "name": f"{name}{i}", "image": "tiny", "vcpus": 1, "memory_mib": 256,
                "networks": ["lan"], "node": node})
            assert r.status_code == 202, r.json
    assert _queries_to_build(region, small.id) == _queries_to_build(region, big.id)


def test_a_node_page_reads_the_usage_of_that_node_only(client: FlaskClient,
                                                       region: Region) -> None:
    """One node's page must not add up every instance of the region (a full scan per view
    at 10,000 nodes); it still shows what its own instances use."""
    api = Api(client, region)
    for name in ("a", "b"):
        api.join_node(name)
    assert api.import_image("tiny", RAW_IMAGE).status_code == 201
    for name, node, vcpus in (("va", "a", 1), ("vb", "b", 3)):
        r = api.post("/api/v1/instances", json={"name": name, "image": "tiny", "vcpus": vcpus,
                                                "memory_mib": 256, "node": node})
        assert r.status_code == 202, r.json
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(region.engine, "before_cursor_execute", record)
    try:
        shown = api.get("/api/v1/nodes/b")
    finally:
        event.remove(region.engine, "before_cursor_execute", record)
    assert shown.status_code == 200
    assert (shown.json["vcpus_used"], shown.json["instances"]) == (3, 1)
    # what runs there, and what migrates to it: both of that node only
    sums = [s for s in statements if "sum(instances.vcpus)" in s]
    assert len(sums) == 2 and "WHERE instances.node_id IN" in sums[0]
    assert "instances.migration_target_node_id IN" in sums[1]
