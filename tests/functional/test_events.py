"""The event stream (/api/v1/events): what each caller sees, resuming, and its end.

Streams are read through Flask's test client while the API is called beside them; the
hub is the region's own (one reader per process), woken by the commits."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, insert, select, update

from agent.protocol import ObservedVm, ObservedVmState
from controller import eventhub
from controller.api import events as events_api
from controller.db.models import ApiToken, Event, Instance, Node, RolloutHost, RolloutJob
from controller.region import Region
from controller.services import events, nodes
from tests.functional.events_helpers import Sse, Stream
from tests.functional.helpers import RAW_IMAGE, Api, FakeNode
from tests.functional.test_sessions import ORIGIN, Browser


def _stream(api: Api, query: str = "", **headers: str) -> Stream:
    return Stream(api.client.get(f"/api/v1/events{query}", headers={**api.headers, **headers},
                                 buffered=False))


def _ok(r: Any, status: int = 201) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.json)
    return r.json  # type: ignore[no-any-return]


def _two_projects(admin: Api) -> tuple[Api, Api]:
    """A member of project `a` and one of project `b`."""
    for name in ("a", "b"):
        _ok(admin.post("/api/v1/projects", json={"name": name}))
    return (admin.as_new_user("alice", ("project-member", "a")),
            admin.as_new_user("bob", ("project-member", "b")))


def _public_image(admin: Api) -> None:
    digest = hashlib.sha256(RAW_IMAGE).hexdigest()
    _ok(admin.post(f"/api/v1/images?name=base&disk_format=raw&public=true&sha256={digest}",
                   data=RAW_IMAGE, content_type="application/octet-stream"))


def _vm(api: Api, name: str, project: str) -> dict[str, Any]:
    return _ok(api.post("/api/v1/instances", json={
        "name": name, "image": "base", "vcpus": 1, "memory_mib": 128, "networks": [],
        "project": project}), 202)


def _sg(api: Api, name: str, project: str) -> dict[str, Any]:
    return _ok(api.post("/api/v1/security-groups", json={"name": name, "project": project}))


def _is(type_: str, name: str) -> Any:
    return lambda e: e.type == type_ and e.data["object"]["name"] == name


def test_a_vm_create_is_told_to_its_project_and_not_to_another(
        client: FlaskClient, region: Region) -> None:
    admin = Api(client, region)
    alice, bob = _two_projects(admin)
    node = admin.join_node("n1")
    _public_image(admin)
    mine, theirs = _stream(alice), _stream(bob)
    mine.start(), theirs.start()

    op = _vm(alice, "web", "a")
    seen: list[Sse] = []
    while not {"vm.changed", "operation.changed"} <= {e.type for e in seen}:
        seen.append(mine.next_event())
    [told_op] = [e for e in seen if e.type == "operation.changed"]
    [told_vm] = [e for e in seen if e.type == "vm.changed"]
    assert told_op.data is not None and told_op.id is not None
    assert told_op.data == {
        "id": told_op.id, "at": told_op.data["at"], "type": "operation.changed",
        "project": "a", "object": {"kind": "operation", "id": op["id"], "name": "web"},
        "data": {**{k: op[k] for k in ("id", "kind", "state", "progress", "error", "message",
                                       "target_id", "target_name", "node_id",
                                       "requested_by")}}}
    vm = told_vm.data
    assert vm is not None and vm["project"] == "a"
    assert vm["data"]["node"] == "n1" and vm["data"]["state"] == "creating"

    _sg(bob, "bobs", "b")  # the next thing bob may see: nothing of a's before it
    assert [e.data["object"]["name"] for e in theirs.until(_is("security_group.changed", "bobs"))
            if e.data is not None] == ["bobs"]

    # the node reports the VM running: its operation ends, and the VM's state is told once
    vm_id = vm["object"]["id"]
    with region.reads() as db:
        power_seq = db.get_one(Instance, vm_id).power_seq
    running = [ObservedVm(id=vm_id, name="web", state=ObservedVmState.RUNNING, power_seq=power_seq)]
    admin.report(node, running, applied=_generation(admin, node))
    seen = mine.until(lambda e: e.type == "operation.changed" and
                      e.data["data"]["state"] == "succeeded")
    assert any(e.type == "vm.changed" and e.data["data"]["state"] == "running" for e in seen)
    before = _count(region)
    admin.report(node, running, applied=_generation(admin, node))
    assert _count(region) == before, "a report that changed nothing told something"
    mine.close(), theirs.close()


def _generation(admin: Api, node: FakeNode) -> int:
    return int(admin.desired(node)["generation"])


def _count(region: Region) -> int:
    with region.reads() as db:
        return int(db.scalar(select(func.count(Event.id))) or 0)


def test_node_events_need_the_region_permission(client: FlaskClient, region: Region) -> None:
    admin = Api(client, region)
    alice, _bob = _two_projects(admin)
    watcher = admin.as_new_user("watcher", ("auditor", None))
    theirs, mine = _stream(watcher, "?types=node"), _stream(alice, "?types=node,security_group")
    theirs.start(), mine.start()
    admin.join_node("n1")
    told = theirs.until(lambda e: e.type == "node.changed")[-1]
    assert told.data is not None and told.data["object"]["name"] == "n1"
    assert told.data["project"] is None
    _sg(alice, "mine", "a")
    assert [e.type for e in mine.until(_is("security_group.changed", "mine"))] == \
        ["security_group.changed"]
    mine.close(), theirs.close()


def test_resuming_with_last_event_id_loses_nothing(client: FlaskClient, region: Region) -> None:
    admin = Api(client, region)
    first = _stream(admin, "?types=security_group")
    start = first.start()
    first.close()
    for name in ("one", "two", "three"):
        _sg(admin, name, "default")

    resumed = _stream(admin, "?types=security_group", **{"Last-Event-ID": str(start)})
    names = [e.data["object"]["name"] for e in resumed.until(_is("security_group.changed",
                                                                 "three")) if e.data]
    assert names == ["one", "two", "three"]
    resumed.close()
    by_query = _stream(admin, f"?types=security_group&after={start}")
    assert by_query.next_event().data["object"]["name"] == "one"  # type: ignore[index]
    by_query.close()


def test_resuming_from_a_pruned_event_resets_the_stream(
        client: FlaskClient, region: Region, monkeypatch: pytest.MonkeyPatch) -> None:
    # the last stream resumes with nothing to send: its response starts with the first
    # keep-alive (VAUBAN_EVENTS_KEEPALIVE_S), shortened here from 15 s
    monkeypatch.setattr(region, "config", replace(region.config, events_keepalive_s=0.5))
    admin = Api(client, region)
    for name in ("one", "two", "three"):
        _sg(admin, name, "default")
    with region.sessions() as db, db.begin():
        assert events.prune(db, datetime.now(UTC) + timedelta(hours=1), 0, 10) > 0
        newest = events.newest_id(db)
        assert events.oldest_id(db) == newest  # the newest is kept
    old = _stream(admin, "?after=1")
    reset = old.next_event()
    assert reset.type == "stream.reset" and reset.data is not None
    assert reset.data["object"] is None and "no longer kept" in reset.data["data"]["reason"]
    assert reset.id is not None and reset.id >= newest
    old.close()
    future = _stream(admin, f"?after={newest + 1000}")
    assert future.next_event().type == "stream.reset"
    future.close()
    current = _stream(admin, f"?after={newest}")  # nothing was lost after the newest
    _sg(admin, "four", "default")
    assert current.until(_is("security_group.changed", "four"))[0].type != "stream.reset"
    current.close()


@pytest.mark.parametrize("query, header", [
    ("?types=vm,bogus", None), ("?types=", None), ("?types=vm.changed", None),
    ("?after=-1", None), ("?after=x", None), ("", "12x"), ("?wat=1", None),
    ("", "\u00b2")])  # a digit to str.isdigit, not to int(): it gave a 500
def test_bad_input_is_a_problem_document(client: FlaskClient, region: Region, query: str,
                                         header: str | None) -> None:
    admin = Api(client, region)
    r = admin.client.get(f"/api/v1/events{query}", headers={
        **admin.headers, **({"Last-Event-ID": header} if header else {})})
    assert r.status_code in (400, 422), r.status_code
    assert r.mimetype == "application/problem+json"
    assert r.json is not None and r.json["detail"]


def test_the_stream_ends_when_its_session_is_logged_out(client: FlaskClient,
                                                        region: Region) -> None:
    browser = Browser(client, region)
    stream = Stream(client.get("/api/v1/events", base_url=ORIGIN, buffered=False))
    stream.start()
    assert browser.send("DELETE", "/api/v1/sessions/current").status_code == 204
    assert [e for e in stream.drain() if e.type] == []
    assert stream.ended


def test_the_stream_ends_when_its_token_is_revoked(client: FlaskClient, region: Region) -> None:
    admin = Api(client, region)
    alice = admin.as_new_user("alice")
    stream = _stream(alice)
    stream.start()
    [mine] = _ok(alice.get("/api/v1/api-tokens"), 200)
    assert alice.delete(f"/api/v1/api-tokens/{mine['id']}").status_code == 200
    stream.drain()
    assert stream.ended


def test_a_busy_stream_ends_when_its_token_expires(client: FlaskClient, region: Region,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # the token's end was checked only when the stream was idle: a stream with an event at
    # least every keep-alive outlived it
    monkeypatch.setattr(events_api, "RECHECK_EVERY_S", 0.0)  # every check reads the token
    admin = Api(client, region)
    alice, _bob = _two_projects(admin)
    stream = _stream(alice, "?types=security_group")
    stream.start()
    _sg(alice, "one", "a")
    assert stream.next_event().data["object"]["name"] == "one"
    [mine] = _ok(alice.get("/api/v1/api-tokens"), 200)
    with region.sessions() as db, db.begin():  # as its time runs out (no event tells it)
        db.execute(update(ApiToken).where(ApiToken.id == mine["id"])
                   .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    _sg(admin, "two", "a")
    assert [e for e in stream.drain() if e.type] == []


def test_events_queued_before_a_role_is_taken_away_are_not_sent(
        client: FlaskClient, region: Region) -> None:
    admin = Api(client, region)
    for name in ("a", "b"):
        _ok(admin.post("/api/v1/projects", json={"name": name}))
    alice = admin.as_new_user("alice", ("project-member", "a"), ("project-member", "b"))
    stream = _stream(alice, "?types=security_group")
    stream.start()
    [in_a] = [b for b in _ok(admin.get("/api/v1/role-bindings?user=alice"), 200)
              if b["project"] == "a"]
    # all three reach alice's queue before her stream reads any: the hub chose by her old
    # roles (read_new hands out what committed, whether or not the hub's thread did already)
    assert admin.delete(f"/api/v1/role-bindings/{in_a['id']}").status_code == 204
    _sg(admin, "secret", "a")
    _sg(admin, "still-mine", "b")
    region.events.read_new()
    seen = stream.until(_is("security_group.changed", "still-mine"))
    assert [e.data["object"]["name"] for e in seen] == ["still-mine"]
    stream.close()


def test_a_subscriber_that_falls_behind_is_dropped_and_resumes_without_loss(
        client: FlaskClient, region: Region, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventhub, "QUEUE", 2)
    admin = Api(client, region)
    slow = _stream(admin, "?types=security_group")
    slow.start()
    names = [f"g{i}" for i in range(5)]
    for name in names:
        _sg(admin, name, "default")
    region.events.read_new()  # the hub has handed out all five (the reader may have too)
    got = [e.data["object"]["name"] for e in slow.drain() if e.data]
    assert slow.ended and got == names[:len(got)] and len(got) <= 2
    resumed = _stream(admin, "?types=security_group", **{"Last-Event-ID": str(slow.last_id)})
    rest = resumed.until(_is("security_group.changed", names[-1]))
    assert got + [e.data["object"]["name"] for e in rest if e.data] == names
    resumed.close()


@pytest.mark.parametrize("region", ["postgresql"], indirect=True)
def test_an_event_committed_after_a_later_one_is_not_lost(client: FlaskClient,
                                                         region: Region) -> None:
    admin = Api(client, region)
    stream = _stream(admin, "?types=security_group")
    stream.start()
    late = region.sessions()
    late.begin()
    late.execute(insert(Event).values(  # takes its id now, commits after the next one
        at=datetime.now(UTC), type="security_group.changed", project_id=None,
        object_kind="security_group", object_id="late", object_name="late", data={}))
    _sg(admin, "early", "default")
    assert stream.next_event().data["object"]["name"] == "early"  # type: ignore[index]
    late.commit()
    late.close()
    region.events.wake()  # as the commit of a change would
    told: Sse = stream.next_event()
    assert told.data is not None and told.data["object"]["name"] == "late"
    stream.close()


def test_a_node_that_goes_silent_is_told_down_once_and_up_again(client: FlaskClient,
                                                                 region: Region) -> None:
    admin = Api(client, region)
    node = admin.join_node("n1")
    with region.sessions() as db, db.begin():
        nodes.announce_states(db, datetime.now(UTC), 30)  # "up", told as it joined
    stream = _stream(admin, "?types=node")
    stream.start()
    with region.sessions() as db, db.begin():
        db.execute(update(Node).values(last_seen_at=datetime.now(UTC) - timedelta(hours=1)))
    for _ in range(2):  # several housekeepers at once: the change is told once
        with region.sessions() as db, db.begin():
            nodes.announce_states(db, datetime.now(UTC), 30)
    admin.report(node, [])
    region.heartbeats.flush(region.sessions)  # a repeated report is a heartbeat
    with region.sessions() as db, db.begin():
        assert nodes.announce_states(db, datetime.now(UTC), 30) == 1
    told = [stream.next_event(), stream.next_event()]
    assert [(e.type, e.data["data"]["state"]) for e in told if e.data] == [
        ("node.changed", "down"), ("node.changed", "up")]
    stream.close()


def test_a_rollout_is_told_to_who_reads_the_fleet_only(client: FlaskClient,
                                                       region: Region) -> None:
    admin = Api(client, region)
    alice, _bob = _two_projects(admin)
    fleet, mine = _stream(admin, "?types=rollout"), _stream(alice, "?types=rollout,security_group")
    fleet.start(), mine.start()
    with region.sessions() as db, db.begin():
        job = RolloutJob(version="1.2.3", batch_size=1, requested_by="admin")
        job.hosts.append(RolloutHost(host="n1", batch=0))
        db.add(job)
    told = fleet.next_event()
    assert told.type == "rollout.changed" and told.data is not None
    assert told.data["data"]["hosts"] == 1 and told.data["data"]["state"] == "pending"
    _sg(alice, "mine", "a")
    assert mine.next_event().type == "security_group.changed"
    fleet.close(), mine.close()


def test_a_deletion_is_told_as_such_once(client: FlaskClient, region: Region) -> None:
    admin = Api(client, region)
    stream = _stream(admin, "?types=security_group,user")
    stream.start()
    group = _sg(admin, "gone", "default")
    assert admin.delete(f"/api/v1/security-groups/{group['id']}").status_code == 204
    assert [e.type for e in stream.until(_is("security_group.deleted", "gone"))] == [
        "security_group.changed", "security_group.deleted"]
    admin.as_new_user("erin", ("project-member", "default"))  # a role given: user changed
    told = stream.until(lambda e: e.type == "user.changed" and e.data is not None and
                        e.data["object"]["name"] == "erin" and e.id is not None)
    assert told[-1].data is not None and told[-1].data["project"] is None
    stream.close()


def test_catch_up_reads_only_the_kinds_and_projects_asked_for(client: FlaskClient,
                                                               region: Region) -> None:
    admin = Api(client, region)
    alice, _bob = _two_projects(admin)
    start = _stream(alice).start()
    _sg(admin, "in-a", "a")
    _sg(admin, "in-b", "b")
    with region.reads() as db:
        a = db.scalar(select(func.min(Event.project_id)).where(Event.object_name == "in-a"))
        rows = events.after(db, start, kinds=frozenset({"security_group"}),
                            projects=frozenset({a}))
        assert [r.object_name for r in rows] == ["in-a"]
        # without the narrowing, both projects' groups are read
        assert [r.object_name for r in events.after(db, start)
                if r.object_kind == "security_group"] == ["in-a", "in-b"]
