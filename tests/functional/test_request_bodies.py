"""Request bodies: parse errors, strict types and size limits, all as problem documents."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from agent.protocol import NodeStatus
from controller.region import Region
from tests.functional.helpers import Api, inventory

MIB = 1024 * 1024

# what a hostile client may send to the two endpoints that need no credentials
HOSTILE_BODIES = {
    "deeply nested arrays": ("[" * 100_000 + "]" * 100_000, "recursion limit exceeded"),
    "an integer of 5000 digits": ('{"username": "a", "password": "b", "ttl_seconds": '
                                  + "9" * 5000 + "}", "number out of range"),
    "bytes that are not UTF-8": (b'{"username": "\xff"}', "not UTF-8"),
    "nothing": ("", "the body is empty"),
    "trailing garbage": ('{"username": "a", "password": "b"} x', "trailing characters"),
}


@pytest.mark.parametrize("path", ["/api/v1/tokens", "/api/v1/join"])
@pytest.mark.parametrize("what", list(HOSTILE_BODIES))
def test_malformed_json_is_a_400_problem_without_traceback(
        client: FlaskClient, path: str, what: str, caplog: pytest.LogCaptureFixture) -> None:
    body, detail = HOSTILE_BODIES[what]
    with caplog.at_level(logging.WARNING):
        r = client.post(path, data=body, content_type="application/json")
    assert r.status_code == 400, r.json
    assert r.mimetype == "application/problem+json"
    assert r.json["type"].endswith("/malformed-json")
    assert detail in r.json["detail"]
    assert [rec.getMessage() for rec in caplog.records if rec.exc_info] == []


STRICT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("/api/v1/instances", {"name": "a", "image": "i", "vcpus": "2", "memory_mib": 128},
     "body field 'vcpus': Input should be a valid integer"),
    ("/api/v1/instances", {"name": "a", "image": "i", "vcpus": 2.0, "memory_mib": 128},
     "body field 'vcpus': Input should be a valid integer"),
    ("/api/v1/instances", {"name": "a", "image": "i", "vcpus": 2, "memory_mib": 128,
                           "start": 1}, "body field 'start': Input should be a valid boolean"),
    ("/api/v1/instances", {"name": "a", "image": "i", "vcpus": 2, "memory_mib": 128,
                           "start": "yes"}, "body field 'start': Input should be a valid boolean"),
    ("/api/v1/join-tokens", {"ttl_seconds": "600"},
     "body field 'ttl_seconds': Input should be a valid integer"),
    ("/api/v1/volumes", {"name": "v", "size_gib": "20"},
     "body field 'size_gib': Input should be a valid integer"),
]


@pytest.mark.parametrize("path, body, detail", STRICT_CASES,
                         ids=[f"{c[0]} {c[2]} {c[1]}" for c in STRICT_CASES])
def test_strings_are_not_coerced_into_numbers_or_booleans(
        client: FlaskClient, region: Region, path: str, body: dict[str, Any],
        detail: str) -> None:
    api = Api(client, region)
    r = api.post(path, json=body)
    assert r.status_code == 422, r.json
    assert r.json["detail"] == detail


def test_query_parameters_stay_strings_that_parse(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    r = api.get("/api/v1/operations?limit=5")
    assert r.status_code == 200, r.json


class Unreadable(io.BytesIO):
    """A request body that never comes, as from a client that sent only the headers.

    It counts the attempts to read it: the server must answer without any.
    """

    read_calls = 0

    def read(self, *args: Any) -> bytes:
        self.read_calls += 1
        return b""

    def readline(self, *args: Any) -> bytes:
        return self.read()

    def declaring(self, length: int) -> dict[str, Any]:
        """WSGI environ keys of a request that declares `length` bytes of this body."""
        return {"wsgi.input": self, "CONTENT_LENGTH": str(length)}


@pytest.mark.parametrize("path", ["/api/v1/tokens", "/api/v1/join"])
def test_declared_oversize_body_is_refused_unread(client: FlaskClient, path: str) -> None:
    body = Unreadable()
    r = client.post(path, content_type="application/json",
                    environ_overrides=body.declaring(32 * MIB))
    assert r.status_code == 413
    assert r.mimetype == "application/problem+json"
    assert r.json["detail"] == (f"the body is {32 * MIB} bytes; {path} accepts at most "
                                f"{MIB} bytes")
    assert body.read_calls == 0


def test_oversize_body_to_an_authenticated_endpoint(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    r = api.post("/api/v1/instances", data="[" + " " * (2 * MIB) + "]",
                 content_type="application/json")
    assert r.status_code == 413 and "accepts at most 1048576 bytes" in r.json["detail"]


def test_agent_status_report_has_a_larger_limit(client: FlaskClient, region: Region) -> None:
    api = Api(client, region)
    node = api.join_node("n1", report=False)
    inv = inventory()
    inv.cpu_flags = ["vmx"] + [f"flag-{i:06d}-" + "x" * 90 for i in range(30_000)]
    status = NodeStatus(applied_generation=0, inventory=inv, vms=[], sent_at=datetime.now(UTC))
    data = status.model_dump_json()
    assert MIB * 2 < len(data) < MIB * 16
    r = client.post(f"/agent/v1/nodes/{node.id}/status", data=data,
                    content_type="application/json", environ_overrides=node.environ())
    assert r.status_code == 204, r.json
    body = Unreadable()
    r = client.post(f"/agent/v1/nodes/{node.id}/status", content_type="application/json",
                    environ_overrides={**node.environ(), **body.declaring(17 * MIB)})
    assert r.status_code == 413 and body.read_calls == 0
    assert f"accepts at most {16 * MIB} bytes" in r.json["detail"]


def test_integers_beyond_64_bits_are_refused(client: FlaskClient, region: Region) -> None:
    """A body integer no database column can hold is a 422, not a database error."""
    api = Api(client, region)
    node = api.join_node("n1", report=False)
    status = json.loads(NodeStatus(applied_generation=0, inventory=inventory(), vms=[],
                                   sent_at=datetime.now(UTC)).model_dump_json())
    status["applied_generation"] = 10**30
    status["inventory"]["storage_free_bytes"] = 2**63
    r = client.post(f"/agent/v1/nodes/{node.id}/status", data=json.dumps(status),
                    content_type="application/json", environ_overrides=node.environ())
    assert r.status_code == 422, r.json
    assert r.json["errors"] == [
        {"field": "applied_generation", "message": "integer out of range (64 bits, signed)"},
        {"field": "inventory.storage_free_bytes",
         "message": "integer out of range (64 bits, signed)"}]
    status["applied_generation"] = 0
    status["inventory"]["storage_free_bytes"] = 2**63 - 1
    r = client.post(f"/agent/v1/nodes/{node.id}/status", data=json.dumps(status),
                    content_type="application/json", environ_overrides=node.environ())
    assert r.status_code == 204, r.json


def test_body_of_undeclared_length_is_cut_off_at_the_limit(client: FlaskClient) -> None:
    """A chunked body (no Content-Length) is read only up to the route's limit."""
    body = io.BytesIO(b'{"username": "' + b"a" * (2 * MIB) + b'"}')
    r = client.post("/api/v1/tokens", content_type="application/json", environ_overrides={
        "wsgi.input": body, "CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input_terminated": True})  # as gunicorn passes a chunked body
    assert r.status_code == 413 and r.mimetype == "application/problem+json"
    assert r.json["detail"] == f"the body is too large; /api/v1/tokens accepts at most {MIB} bytes"
    assert body.tell() == MIB + 1  # one byte past the limit, not one more
