"""Console tickets through the API, and the agent's console long-poll; the node's side is
played by reports and agent calls (the websockets themselves: tests/e2e/test_consoles.py)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from agent.protocol import ObservedVm, ObservedVmState
from controller.db.models import AuditEvent, ConsoleSession, Node
from controller.region import Region
from controller.services import consoles
from controller.serving import redact_path
from tests.functional.helpers import RAW_IMAGE, Api, FakeNode


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    return Api(client, region)


def running_vm(api: Api, name: str = "vm1", project: str | None = None,
               state: ObservedVmState = ObservedVmState.RUNNING) -> tuple[FakeNode, str]:
    """Node n1 (joined once) reporting VM `name` in `state`; (node, VM id)."""
    node: FakeNode | None = getattr(api, "node", None)
    if node is None:
        node = api.join_node("n1")
        api.node = node  # type: ignore[attr-defined]
        digest = hashlib.sha256(RAW_IMAGE).hexdigest()
        assert api.post(f"/api/v1/images?name=tiny&disk_format=raw&sha256={digest}&public=true",
                        data=RAW_IMAGE, content_type="application/octet-stream"
                        ).status_code == 201
    body: dict[str, Any] = {"name": name, "image": "tiny", "vcpus": 1, "memory_mib": 128}
    if project:
        body["project"] = project
    r = api.post("/api/v1/instances", json=body)
    assert r.status_code == 202, r.json
    vms = api.desired(node)["vms"]
    api.report(node, [ObservedVm(id=v["id"], name=v["name"], state=state, power_seq=1)
                      for v in vms])
    return node, next(v["id"] for v in vms if v["name"] == name)


def ticket(api: Api, ref: str, kind: str = "serial") -> Any:
    return api.post(f"/api/v1/instances/{ref}/consoles", json={"kind": kind})


def test_a_ticket_is_single_use_short_lived_hashed_and_audited(api: Api,
                                                              region: Region) -> None:
    _node, vm_id = running_vm(api)
    r = ticket(api, "vm1", "vnc")
    assert r.status_code == 201, r.json
    body = r.json
    assert body["kind"] == "vnc" and body["websocket"] == f"/api/v1/consoles/{body['ticket']}"
    with region.reads() as db:
        row = db.get_one(ConsoleSession, body["id"])
        assert row.ticket_sha256 == consoles.ticket_hash(body["ticket"])
        assert body["ticket"] not in (row.ticket_sha256, row.id)
        ttl = consoles._aware(row.expires_at) - consoles._aware(row.created_at)
        assert ttl == timedelta(seconds=consoles.TICKET_TTL_S)
        actions = db.scalars(select(AuditEvent.action).where(
            AuditEvent.target == f"instance/{vm_id}")).all()
    assert "console.ticket" in actions
    assert redact_path(body["websocket"]) == "/api/v1/consoles/…"


@pytest.mark.parametrize("body", [{}, {"kind": "rdp"}, {"kind": "vnc", "extra": 1}])
def test_a_ticket_needs_a_known_kind(api: Api, body: dict[str, Any]) -> None:
    running_vm(api)
    r = api.post("/api/v1/instances/vm1/consoles", json=body)
    assert r.status_code == 422, r.json


def test_a_vm_that_is_not_running_has_no_console(api: Api) -> None:
    running_vm(api, "vm2", state=ObservedVmState.STOPPED)
    r = ticket(api, "vm2")
    assert r.status_code == 409, r.json
    assert r.json["detail"] == ("VM 'vm2' is stopped on node 'n1': a console needs it running "
                                "(vauban vm start)")
    assert r.json["type"].endswith("/console-unavailable")
    # its serial log, though, tells how it ran: it is read of a stopped VM too
    log = api.post("/api/v1/instances/vm2/consoles", json={"kind": "log"})
    assert log.status_code == 201 and log.json["kind"] == "log", log.json


def test_a_vm_on_a_silent_node_has_no_console(api: Api, region: Region) -> None:
    # a ticket was issued, and the user left waiting for an agent that could not answer
    node, _vm_id = running_vm(api)
    silent_since = datetime.now(UTC) - timedelta(seconds=region.config.node_down_after_s + 60)
    with region.sessions() as db, db.begin():
        db.execute(update(Node).where(Node.id == node.id).values(last_seen_at=silent_since))
    for kind in ("serial", "log"):
        r = ticket(api, "vm1", kind)
        assert r.status_code == 409, r.json
        assert r.json["detail"] == "VM 'vm1' is on node 'n1', which is down: its agent " \
            "cannot open the console"
    with region.reads() as db:
        assert db.scalars(select(ConsoleSession)).all() == []


def test_an_unknown_vm_is_404(api: Api) -> None:
    r = ticket(api, "nope")
    assert r.status_code == 404
    assert r.json["detail"] == "instance 'nope' does not exist"


def test_who_may_open_a_console(api: Api) -> None:
    assert api.post("/api/v1/projects", json={"name": "shop"}).status_code == 201
    assert api.post("/api/v1/projects", json={"name": "other"}).status_code == 201
    running_vm(api, "web", project="shop")
    member = api.as_new_user("mia", ("project-member", "shop"))
    viewer = api.as_new_user("vic", ("project-viewer", "shop"))
    auditor = api.as_new_user("aud", ("auditor", None))
    operator = api.as_new_user("ops", ("operator", None))
    stranger = api.as_new_user("sam", ("project-member", "other"))
    assert ticket(member, "web").status_code == 201
    refused = ticket(viewer, "web")
    assert refused.status_code == 403
    assert "needs write access" in refused.json["detail"]
    for who in (auditor, operator):
        assert ticket(who, "web").status_code == 403
    # another project's VM reads as one that does not exist
    other = ticket(stranger, "web")
    assert other.status_code == 404 and other.json["detail"] == "instance 'web' does not exist"


def test_a_ticket_is_refused_once_its_user_lost_write_access_to_the_vm(api: Api,
                                                                      region: Region) -> None:
    # the ticket was spent, and the console opened, on any write role in any project
    assert api.post("/api/v1/projects", json={"name": "shop"}).status_code == 201
    assert api.post("/api/v1/projects", json={"name": "other"}).status_code == 201
    running_vm(api, "web", project="shop")
    member = api.as_new_user("mia", ("project-member", "shop"), ("project-member", "other"))
    issued = ticket(member, "web").json
    bindings = api.get("/api/v1/role-bindings?user=mia").json
    shop = next(b for b in bindings if b["project"] == "shop")
    assert api.delete(f"/api/v1/role-bindings/{shop['id']}").status_code == 204
    r = api.client.get(issued["websocket"], headers={**member.headers, **UPGRADE})
    assert r.status_code == 403 and "may no longer open" in r.json["detail"], r.json
    with region.reads() as db:  # refused: nothing spent
        assert db.get_one(ConsoleSession, issued["id"]).state == "issued"


def test_a_spent_ticket_wakes_the_agents_console_poll_once(api: Api, region: Region) -> None:
    node, vm_id = running_vm(api)
    issued = ticket(api, "vm1").json
    poll = api.client.get(f"/agent/v1/nodes/{node.id}/consoles?wait=0",
                          environ_overrides=node.environ())
    assert poll.status_code == 200 and poll.json == {"requests": []}
    with region.sessions() as db, db.begin():
        user_id = db.get_one(ConsoleSession, issued["id"]).user_id
        consoles.spend(db, issued["ticket"], user_id)
    with region.sessions() as db, db.begin(), pytest.raises(consoles.TicketRefused,
                                                             match="used already"):
        consoles.spend(db, issued["ticket"], user_id)
    poll = api.client.get(f"/agent/v1/nodes/{node.id}/consoles?wait=0",
                          environ_overrides=node.environ())
    assert poll.json == {"requests": [{"id": issued["id"], "kind": "serial", "vm_id": vm_id}]}
    again = api.client.get(f"/agent/v1/nodes/{node.id}/consoles?wait=0",
                           environ_overrides=node.environ())
    assert again.json == {"requests": []}  # handed to one poll only
    with region.sessions() as db, db.begin():
        assert consoles.claim(db, issued["id"], node.id)
        assert not consoles.claim(db, issued["id"], node.id)  # once


def test_tickets_refused_expired_and_another_users(api: Api, region: Region) -> None:
    running_vm(api)
    issued = ticket(api, "vm1").json
    with region.reads() as db:
        row = db.get_one(ConsoleSession, issued["id"])
    with region.sessions() as db, db.begin(), pytest.raises(consoles.TicketRefused,
                                                             match="unknown"):
        consoles.spend(db, issued["ticket"], "someone-else")
    later = consoles._aware(row.expires_at) + timedelta(seconds=1)
    with region.sessions() as db, db.begin(), pytest.raises(consoles.TicketRefused,
                                                             match="expired"):
        consoles.spend(db, issued["ticket"], row.user_id, now=later)


UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def test_the_websocket_refuses_before_upgrading(api: Api, region: Region) -> None:
    running_vm(api)
    issued = ticket(api, "vm1").json
    other = api.as_new_user("eve", ("region-admin", None))
    r = api.client.get(issued["websocket"], headers={**other.headers, **UPGRADE})
    assert r.status_code == 403 and "unknown" in r.json["detail"]
    # the ticket is a secret: problem documents (and the log lines beside them) omit it
    assert issued["ticket"] not in r.text and r.json["instance"] == "/api/v1/consoles/…"
    r = api.client.get(issued["websocket"], headers={**api.headers, **UPGRADE,
                                                     "Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json["check"] == "origin"
    r = api.client.get(issued["websocket"], headers=UPGRADE)
    assert r.status_code == 401
    with region.reads() as db:  # refused: nothing spent
        assert db.get_one(ConsoleSession, issued["id"]).state == "issued"


def test_the_agents_dial_back_needs_a_session_it_was_told_of(api: Api) -> None:
    node, _vm_id = running_vm(api)
    issued = ticket(api, "vm1").json  # not spent: its agent was never told
    r = api.client.get(f"/agent/v1/nodes/{node.id}/consoles/{issued['id']}",
                       headers=UPGRADE, environ_overrides=node.environ())
    assert r.status_code == 409 and "not waiting for this node" in r.json["detail"]


@pytest.mark.parametrize("broken", [{"Sec-WebSocket-Key": ""}, {"Sec-WebSocket-Key": "c2hvcnQ="},
                                    {"Sec-WebSocket-Version": "8"}])
def test_a_broken_websocket_opening_spends_nothing_and_leaves_nothing(
        api: Api, region: Region, broken: dict[str, str]) -> None:
    # the ticket was spent, the session left waiting for an agent and its socket file left
    # in the data folder, with a 500, when the handshake failed after the checks
    node, _vm_id = running_vm(api)
    issued = ticket(api, "vm1").json
    r = api.client.get(issued["websocket"], headers={**api.headers, **UPGRADE, **broken})
    assert r.status_code == 400 and r.json["title"] == "Not a websocket opening", r.json
    with region.reads() as db:
        assert db.get_one(ConsoleSession, issued["id"]).state == "issued"
    assert list((region.config.data_dir / "consoles").glob("*")) == []
    r = api.client.get(f"/agent/v1/nodes/{node.id}/consoles/{issued['id']}",
                       headers={**UPGRADE, **broken}, environ_overrides=node.environ())
    assert r.status_code == 400, r.json


def test_sessions_a_crashed_process_left_waiting_are_closed_and_audited(
        api: Api, region: Region) -> None:
    running_vm(api)
    issued = ticket(api, "vm1").json
    with region.sessions() as db, db.begin():
        user_id = db.get_one(ConsoleSession, issued["id"]).user_id
        spent = consoles.spend(db, issued["ticket"], user_id)  # its process then died
        spent_at = consoles._aware(spent.connected_at)
    soon = spent_at + timedelta(seconds=consoles.AGENT_ANSWER_S)
    with region.sessions() as db, db.begin():
        assert consoles.close_abandoned(db, soon) == 0  # its process may still wait
    later = spent_at + timedelta(seconds=consoles.ABANDONED_AFTER_S + 1)
    with region.sessions() as db, db.begin():
        assert consoles.close_abandoned(db, later) == 1
    with region.reads() as db:
        row = db.get_one(ConsoleSession, issued["id"])
        assert row.state == "closed" and "process holding the user's side ended" in \
            (row.close_reason or "")
        closes = db.scalars(select(AuditEvent).where(AuditEvent.action == "console.close")).all()
        assert [(e.outcome, e.detail["console"]) for e in closes] == [("failed", row.id)]
