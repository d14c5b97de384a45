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
