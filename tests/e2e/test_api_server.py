"""The API's input limits as a client sees them on the real server (gunicorn, TLS)."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator

import pytest

from agent.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from tests.e2e.region import E2ERegion

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def controller(libvirtd: list[int]) -> Iterator[E2ERegion]:
    """A controller process alone: these tests need no agent."""
    r = E2ERegion.create()
    try:
        r.start_controller()
        yield r
    finally:
        r.stop()


def _connect(region: E2ERegion) -> http.client.HTTPSConnection:
    tls = ssl.create_default_context(cafile=str(region.layout.ca_file))
    # the timeout only ends a hung test; a server waiting for the body would hang it
    return http.client.HTTPSConnection("127.0.0.1", region.layout.port, context=tls,
                                       timeout=60)


def test_oversize_body_is_refused_before_it_is_sent(controller: E2ERegion) -> None:
    conn = _connect(controller)
    try:
        conn.putrequest("POST", "/api/v1/tokens")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(32 * MIB))
        conn.endheaders()  # the headers only: not one byte of the 32 MiB follows
        r = conn.getresponse()
        problem = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 413
    assert r.getheader("Content-Type") == "application/problem+json"
    assert problem["detail"] == (f"the body is {32 * MIB} bytes; /api/v1/tokens accepts at "
                                 f"most {MIB} bytes")


def test_hostile_json_is_a_400_and_leaves_no_traceback(controller: E2ERegion) -> None:
    conn = _connect(controller)
    try:
        conn.request("POST", "/api/v1/join", body="[" * 100_000 + "]" * 100_000,
                     headers={"Content-Type": "application/json",
                              PROTOCOL_HEADER: str(PROTOCOL_VERSION)})
        r = conn.getresponse()
        problem = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 400 and "recursion limit exceeded" in problem["detail"]
    log = controller.layout.service("controller").logfile.read_text()
    assert "Traceback" not in log
