"""The wire protocol version: the controller refuses an agent of another version, naming
both, and the agent's client tells such a refusal from an outage."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from agent import client as agent_client
from agent.client import (
    ControllerClient,
    ControllerUnavailable,
    ProtocolMismatch,
    protocol_mismatch,
)
from agent.config import AgentConfig, NodeIdentity
from agent.protocol import (
    POLL_WAIT_HEADER,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    REPORT_INTERVAL_HEADER,
    NodeStatus,
)
from controller.api import agent as agent_api
from controller.region import Region
from tests.functional.helpers import Api, FakeNode, inventory, make_csr, served_as_node


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    return Api(client, region)


def desired(api: Api, node: FakeNode, protocol: str | None) -> Any:
    """The long-poll with `protocol` in the header, or without the header when None."""
    client = api.client if protocol is not None else api.client.application.test_client()
    headers = {} if protocol is None else {PROTOCOL_HEADER: protocol}
    return client.get(f"/agent/v1/nodes/{node.id}/desired?after=-1&wait=0",
                      headers=headers, environ_overrides=node.environ())


def test_agent_of_the_same_protocol_is_served_and_told_the_version(api: Api) -> None:
    node = api.join_node("n1")
    r = desired(api, node, str(PROTOCOL_VERSION))
    assert r.status_code == 200
    assert r.headers[PROTOCOL_HEADER] == str(PROTOCOL_VERSION)


def test_newer_agent_is_refused_with_both_versions(api: Api) -> None:
    node = api.join_node("n1")
    r = desired(api, node, str(PROTOCOL_VERSION + 1))
    assert r.status_code == 409
    assert r.json["type"].endswith("/protocol-mismatch")
    assert r.json["detail"] == (f"agent speaks protocol {PROTOCOL_VERSION + 1}, this controller "
                                f"speaks {PROTOCOL_VERSION}; upgrade the controller")
    assert (r.json["agent_protocol"], r.json["controller_protocol"]) == (PROTOCOL_VERSION + 1,
                                                                        PROTOCOL_VERSION)


def test_older_agent_and_one_without_the_header_are_told_to_upgrade(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    node = api.join_node("n1")
    monkeypatch.setattr(agent_api, "PROTOCOL_VERSION", 2)  # a release after the header came
    for sent in ("1", None):  # an agent from before the header spoke protocol 1
        r = desired(api, node, sent)
        assert r.status_code == 409
        assert r.json["detail"] == ("agent speaks protocol 1, this controller speaks 2; "
                                    "upgrade the agent")


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5", "\u00b2", "1" * 5000])
def test_a_header_that_is_no_version_is_refused(api: Api, value: str) -> None:
    node = api.join_node("n1")
    r = desired(api, node, value)
    assert r.status_code == 400
    assert f"header {PROTOCOL_HEADER} must be a protocol version" in r.json["detail"]


def test_status_of_another_protocol_is_not_recorded(api: Api) -> None:
    node = api.join_node("n1", report=False)
    status = NodeStatus(applied_generation=0, inventory=inventory(), vms=[],
                        sent_at=datetime.now(UTC))
    r = api.client.post(f"/agent/v1/nodes/{node.id}/status", data=status.model_dump_json(),
                        content_type="application/json", environ_overrides=node.environ(),
                        headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION + 1)})
    assert r.status_code == 409
    assert api.get("/api/v1/nodes/n1").json["state"] == "new"  # it never reported


def test_join_of_another_protocol_is_refused_and_spends_no_token(api: Api) -> None:
    token = api.post("/api/v1/join-tokens", json={}).json["token"]
    r = api.client.post("/api/v1/join", json={"token": token, "name": "n1",
                                              "csr_pem": make_csr("n1")},
                        headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION + 1)})
    assert r.status_code == 409
    assert r.json["detail"].startswith(f"agent speaks protocol {PROTOCOL_VERSION + 1}")
    assert api.get("/api/v1/nodes").json == []
    assert api.get("/api/v1/join-tokens").json[0]["used_by_node_id"] is None


# --- the agent's client against the real controller, served on loopback ----------------


@pytest.fixture
def served(api: Api) -> Iterator[tuple[str, FakeNode]]:
    """The region's app over plain HTTP on loopback, the node's identity set as the TLS
    front end would set it; (base URL, node)."""
    node = api.join_node("n1")
    with served_as_node(api.region, node) as url:
        yield url, node


def agent_client_for(url: str, node: FakeNode, tmp_path: Path) -> ControllerClient:
    config = AgentConfig(data_dir=tmp_path)
    for unused in (config.cert_path, config.key_path):
        unused.touch()  # plain HTTP here: the TLS front end is not what is tested
    return ControllerClient(config, NodeIdentity(node_id=node.id, name=node.name,
                                                 controller_url=url))


def test_agent_client_sends_its_version(served: tuple[str, FakeNode], tmp_path: Path) -> None:
    url, node = served
    got = agent_client_for(url, node, tmp_path).desired(after=-1, wait=0)
    assert got is not None and got.node_id == node.id


def test_agent_client_reports_a_refusal_as_a_mismatch_not_an_outage(
        served: tuple[str, FakeNode], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, node = served
    monkeypatch.setattr(agent_client, "PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    client = agent_client_for(url, node, tmp_path)  # an agent of the next release

    with pytest.raises(ProtocolMismatch) as refused:
        client.desired(after=-1, wait=0)

    assert not isinstance(refused.value, ControllerUnavailable)  # retrying cannot help
    assert str(refused.value) == (f"agent speaks protocol {PROTOCOL_VERSION + 1}, this "
                                  f"controller speaks {PROTOCOL_VERSION}; upgrade the controller")


def answer(status: int, headers: dict[str, str]) -> requests.Response:
    r = requests.Response()
    r.status_code, r._content = status, b"{}"
    r.headers.update(headers)
    return r


def test_agent_client_checks_the_version_the_controller_answers_with() -> None:
    """A controller that serves another version without refusing is caught by the agent."""
    other = str(PROTOCOL_VERSION + 1)
    assert str(protocol_mismatch(answer(200, {PROTOCOL_HEADER: other}))) == (
        f"agent speaks protocol {PROTOCOL_VERSION}, the controller speaks {other}; "
        "upgrade the agent")
    assert "not a protocol version" in str(protocol_mismatch(answer(200, {PROTOCOL_HEADER: "x"})))
    assert protocol_mismatch(answer(200, {PROTOCOL_HEADER: str(PROTOCOL_VERSION)})) is None
    # a controller from before the header spoke 1
    assert str(protocol_mismatch(answer(200, {}))) == (
        f"agent speaks protocol {PROTOCOL_VERSION}, the controller speaks 1; "
        "upgrade the controller")


def test_agent_client_takes_the_pace_the_controller_names(
        served: tuple[str, FakeNode], tmp_path: Path) -> None:
    url, node = served
    client = agent_client_for(url, node, tmp_path)
    assert (client.report_interval_s, client.poll_wait_s) == (None, None)
    client.desired(after=-1, wait=0)
    assert client.report_interval_s == 5.0  # a region of one node: the floor
    assert client.poll_wait_s == 25.0  # 5 s within the default down delay

    for bad in ("0", "-3", "1e9", "nan", "200s", "99999"):  # not a sane interval: ignored
        client._check(answer(204, {PROTOCOL_HEADER: str(PROTOCOL_VERSION),
                                   REPORT_INTERVAL_HEADER: bad}))
        assert client.report_interval_s == 5.0
    client._check(answer(204, {PROTOCOL_HEADER: str(PROTOCOL_VERSION),
                               REPORT_INTERVAL_HEADER: "200.0", POLL_WAIT_HEADER: "100"}))
    assert (client.report_interval_s, client.poll_wait_s) == (200.0, 100.0)
