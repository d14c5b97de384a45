"""The pace the controller sets its agents: a long-poll that sees nothing new costs no
desired state, and the report interval grows with the region."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from agent.protocol import POLL_WAIT_HEADER, REPORT_INTERVAL_HEADER
from controller.region import Region
from tests.functional.helpers import Api


def _poll(client: FlaskClient, node_id: str, environ: dict[str, Any], after: int
          ) -> TestResponse:
    return client.get(f"/agent/v1/nodes/{node_id}/desired?after={after}&wait=0",
                      environ_overrides=environ)


def test_a_wait_that_ends_with_nothing_new_answers_204_without_a_body(
        client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    node = api.join_node("n1")
    generation = api.desired(node)["generation"]

    r = _poll(client, node.id, node.environ(), generation)

    assert r.status_code == 204
    assert r.data == b""
    newer = _poll(client, node.id, node.environ(), generation - 1)
    assert newer.status_code == 200
    assert newer.json["generation"] == generation


def test_every_agent_answer_names_the_report_interval_for_the_region_size(
        client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    nodes = [api.join_node(f"n{i}") for i in range(3)]
    region.pace.max_reports_per_s = 1.0  # three nodes at one report a second in all

    assert float(_poll(client, nodes[0].id, nodes[0].environ(), -1)
                 .headers[REPORT_INTERVAL_HEADER]) == 5.0  # not counted yet: the floor
    region.pace.refresh(region.reads)
    r = _poll(client, nodes[0].id, nodes[0].environ(), -1)
    assert float(r.headers[REPORT_INTERVAL_HEADER]) == 5.0  # 3 nodes / 1 per s < floor
    region.pace.max_reports_per_s = 0.1
    r = _poll(client, nodes[0].id, nodes[0].environ(), -1)
    assert float(r.headers[REPORT_INTERVAL_HEADER]) == 30.0  # 3 nodes / 0.1 per s


def test_every_agent_answer_names_the_poll_wait_that_keeps_a_node_up(
        client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    node = api.join_node("n1")
    r = _poll(client, node.id, node.environ(), -1)
    assert float(r.headers[POLL_WAIT_HEADER]) == region.config.node_down_after_s - 5
