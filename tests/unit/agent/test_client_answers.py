"""How the agent's controller client reads error answers: which stop the agent (retrying
cannot help) and which are retried."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from agent.client import ControllerClient, ControllerUnavailable, NodeRemoved, Refused
from agent.config import AgentConfig, NodeIdentity
from agent.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION

PROBLEMS = "https://vauban.dev/problems/"


def client(tmp_path: Path) -> ControllerClient:
    identity = NodeIdentity(node_id="n-1", name="n1", controller_url="https://127.0.0.1:1")
    return ControllerClient(AgentConfig(data_dir=tmp_path), identity)


def answer(status: int, slug: str, detail: str) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r.headers["Content-Type"] = "application/problem+json"
    r.headers[PROTOCOL_HEADER] = str(PROTOCOL_VERSION)
    r._content = json.dumps({"type": PROBLEMS + slug, "title": slug, "status": status,
                             "detail": detail}).encode()
    return r


def test_an_agent_of_the_wrong_kind_for_its_node_is_refused_for_good(tmp_path: Path) -> None:
    said = 'this node is an XCP-ng pool: its agent runs with hypervisor = "xapi"'
    with pytest.raises(Refused, match="XCP-ng pool") as refused:
        client(tmp_path)._check(answer(409, "wrong-agent", said))
    assert str(refused.value) == said and not isinstance(refused.value, NodeRemoved)


@pytest.mark.parametrize("status, slug", [(409, "conflict"), (403, "forbidden"),
                                          (503, "unavailable")])
def test_other_refusals_are_retried(tmp_path: Path, status: int, slug: str) -> None:
    with pytest.raises(ControllerUnavailable, match=f"{status} from controller: busy"):
        client(tmp_path)._check(answer(status, slug, "busy"))
