"""End to end: a region whose certificates live a minute. The agent renews its node
certificate over mutual TLS and keeps reporting with it; the controller renews its server
certificate and new connections get it, without a restart. Join tokens are listed and
revoked with the CLI."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from cryptography import x509

from controller import allinone
from tests.e2e.region import E2ERegion, wait_for

pytestmark = pytest.mark.e2e

LIFETIME_S = 60  # the least the controller issues (MIN_CERT_LIFETIME_S)
# renewed well before a third is left, so that the tests do not wait out lifetimes: the
# node's at four fifths left (the agent's cert_renew_fraction), about 7 s after each issue,
# the server's at three quarters (VAUBAN_SERVER_CERT_RENEW_FRACTION), about 10 s after
AGENT_SETTINGS = ["cert_renew_fraction = 0.8"]
SERVER_RENEW_FRACTION = "0.75"
RENEWAL_WAIT_S = 600  # three lifetimes and more, on a loaded machine


@dataclass(frozen=True)
class Started:
    """The module's region, and what its controller served when it had just started."""

    region: E2ERegion
    controller_pid: int | None
    server_serial: int


@pytest.fixture(scope="module")
def started(libvirtd: str) -> Iterator[Started]:
    r = E2ERegion.create({"VAUBAN_NODE_CERT_SECONDS": str(LIFETIME_S),
                          "VAUBAN_SERVER_CERT_SECONDS": str(LIFETIME_S),
                          "VAUBAN_SERVER_CERT_RENEW_FRACTION": SERVER_RENEW_FRACTION},
                         AGENT_SETTINGS)
    try:
        r.start_controller()
        first = Started(r, r.layout.service("controller").pid(), _server_serial(r))
        r.token = allinone.admin_token(r.layout)
        allinone.join_agent(r.layout, r.token, f"e2e-{r.root.name[-8:]}")
        r.start_agent()
        yield first
    finally:
        r.stop()


@pytest.fixture
def region(started: Started) -> E2ERegion:
    return started.region


def _node(region: E2ERegion) -> dict[str, Any]:
    [node] = json.loads(region.cli("node", "list", "--json"))
    shown: dict[str, Any] = json.loads(region.cli("node", "show", node["name"], "--json"))
    return shown


def _agent_serial(region: E2ERegion) -> str:
    pem = (region.layout.agent_dir / "node.pem").read_bytes()
    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")


def _server_serial(region: E2ERegion) -> int:
    pem = ssl.get_server_certificate((region.layout.host, region.layout.port))
    return int(x509.load_pem_x509_certificate(pem.encode()).serial_number)


def _log_tail(region: E2ERegion, name: str) -> str:
    return region.layout.service(name).logfile.read_text(errors="replace")[-3000:]


def _reported_since(region: E2ERegion, at: datetime) -> bool:
    n = _node(region)
    return bool(n["state"] == "up" and n["last_seen_at"] is not None
                and datetime.fromisoformat(n["last_seen_at"]) > at)


def test_the_node_renews_its_certificate_and_keeps_reporting(region: E2ERegion) -> None:
    first = _node(region)
    assert first["cert_serial"] == _agent_serial(region)
    seen = [first["cert_serial"]]

    def renewed() -> dict[str, Any] | None:
        node = _node(region)
        return node if node["cert_serial"] != seen[-1] else None

    for _ in range(2):  # the second renewal is asked for with the renewed certificate
        try:
            node = wait_for(renewed, RENEWAL_WAIT_S, "the node certificate to be renewed",
                            interval=1.0)
        except AssertionError as e:
            raise AssertionError(f"{e}\nagent log:\n{_log_tail(region, 'agent')}") from e
        seen.append(node["cert_serial"])
        renewed_at = datetime.now().astimezone()
        assert datetime.fromisoformat(node["cert_expires_at"]) > renewed_at
        wait_for(lambda at=renewed_at: _reported_since(region, at), RENEWAL_WAIT_S,
                 "a report after the renewal", interval=1.0)
        # the agent saved what the controller issued, and talks with it
        wait_for(lambda: _agent_serial(region) == _node(region)["cert_serial"],
                 RENEWAL_WAIT_S, "the agent's certificate file to match the controller")
    assert len(set(seen)) == 3
    log = _log_tail(region, "agent")
    assert "renewed the node certificate" in log
    assert "renewing the node certificate" not in log  # no renewal failed on the way


def test_the_server_certificate_is_renewed_without_a_restart(started: Started) -> None:
    # the one served when the controller had just started: renewed while the tests before
    # this one ran, or now, by the same process
    region, pid, first = started.region, started.controller_pid, started.server_serial
    assert pid is not None
    wait_for(lambda: _server_serial(region) != first, RENEWAL_WAIT_S,
             "the server certificate to be renewed", interval=1.0)
    assert region.layout.service("controller").pid() == pid
    # verified against the region CA (the file nodes and operators pin)
    assert "CA SHA-256" in region.cli("status")
    assert _node(region)["state"] == "up"


def test_join_tokens_are_listed_and_revoked_with_the_cli(region: E2ERegion) -> None:
    created = json.loads(region.cli("join-token", "create", "--description", "spare",
                                    "--json"))
    listing = region.cli("join-token", "list")
    assert created["token"] not in listing
    rows = {t["id"]: t for t in json.loads(region.cli("join-token", "list", "--json"))}
    assert rows[created["id"]]["state"] == "unused"
    assert [t["state"] for t in rows.values() if t["id"] != created["id"]] == ["used"]
    out = region.cli("join-token", "revoke", created["id"])
    assert f"join token {created['id']} revoked" in out
    rows = {t["id"]: t for t in json.loads(region.cli("join-token", "list", "--json"))}
    assert rows[created["id"]]["state"] == "revoked"
    used = next(t for t in rows.values() if t["state"] == "used")
    refused = region.run_cli("join-token", "revoke", used["id"])
    assert refused.returncode == 1 and "was already used by node" in refused.stderr
