"""Projects, users, roles and named API tokens, as an operator and its tenants use them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from controller.db.models import ApiToken, AuditEvent
from controller.region import Region
from tests.functional.helpers import RAW_IMAGE, Api


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    return Api(client, region)


def _project(api: Api, name: str) -> dict[str, Any]:
    r = api.post("/api/v1/projects", json={"name": name})
    assert r.status_code == 201, r.json
    return r.json  # type: ignore[return-value]


def _public_image(api: Api) -> None:
    digest = hashlib.sha256(RAW_IMAGE).hexdigest()
    r = api.post(f"/api/v1/images?name=base&disk_format=raw&sha256={digest}&public=true",
                 data=RAW_IMAGE, content_type="application/octet-stream")
    assert r.status_code == 201 and r.json["project"] is None, r.json  # type: ignore[index]


def _vm(api: Api, name: str, **more: Any) -> Any:
    return api.post("/api/v1/instances", json={"name": name, "image": "base", "vcpus": 1,
                                               "memory_mib": 128, **more})


def test_a_member_makes_vms_in_its_project_and_a_viewer_only_reads(api: Api) -> None:
    api.join_node("n1")
    _public_image(api)
    _project(api, "shop")
    _project(api, "lab")
    member = api.as_new_user("alice", ("project-member", "shop"))
    viewer = api.as_new_user("bob", ("project-viewer", "shop"))
    elsewhere = api.as_new_user("eve", ("project-viewer", "shop"), ("project-member", "lab"))

    made = _vm(member, "web")  # no project named: the member's only one
    assert made.status_code == 202, made.json
    vm = member.get("/api/v1/instances/web").json
    assert vm["project"] == "shop"  # type: ignore[index]
    assert [i["name"] for i in viewer.get("/api/v1/instances").json] == ["web"]  # type: ignore[union-attr]

    refused = _vm(viewer, "other")  # a viewer everywhere: refused by the route itself
    assert refused.status_code == 403 and "write access to a project" in refused.json["detail"]  # type: ignore[index]
    stop = elsewhere.post("/api/v1/instances/web/stop")  # may write, but not in shop
    assert stop.status_code == 403  # it sees the VM: 403, not 404
    assert "in project 'shop' lets you read only" in stop.json["detail"]  # type: ignore[index]
    assert _vm(elsewhere, "web", project="shop").status_code == 403
    assert _vm(member, "web2").status_code == 202


def test_names_are_unique_per_project_and_the_admin_chooses_the_project(api: Api) -> None:
    api.join_node("n1")
    _public_image(api)
    _project(api, "a")
    _project(api, "b")
    assert _vm(api, "web", project="a").status_code == 202
    assert _vm(api, "web", project="b").status_code == 202  # the same name in another project
    again = _vm(api, "web", project="a")
    assert again.status_code == 409 and "in project 'a'" in again.json["detail"]  # type: ignore[index]
    ambiguous = api.get("/api/v1/instances/web")  # the admin sees both
    assert ambiguous.status_code == 409 and "give its id" in ambiguous.json["detail"]  # type: ignore[index]
    assert _vm(api, "solo").status_code == 202
    assert api.get("/api/v1/instances/solo").json["project"] == "default"  # type: ignore[index]
    two = api.as_new_user("carol", ("project-member", "a"), ("project-member", "b"))
    unsure = _vm(two, "x")
    assert unsure.status_code == 422 and "yours are a, b" in unsure.json["detail"]  # type: ignore[index]


def test_project_admins_manage_their_members_only(api: Api) -> None:
    _project(api, "a")
    _project(api, "b")
    boss = api.as_new_user("boss", ("project-admin", "a"))
    api.as_new_user("dave")

    assert boss.post("/api/v1/role-bindings", json={
        "user": "dave", "role": "project-viewer", "project": "a"}).status_code == 201
    other = boss.post("/api/v1/role-bindings", json={
        "user": "dave", "role": "project-viewer", "project": "b"})
    assert other.status_code == 404 and "project 'b' does not exist" in other.json["detail"]  # type: ignore[index]
    region_role = boss.post("/api/v1/role-bindings", json={"user": "dave", "role": "operator"})
    assert region_role.status_code == 403
    listed = boss.get("/api/v1/role-bindings?project=a").json
    assert sorted((b["user"], b["role"]) for b in listed) == [  # type: ignore[union-attr]
        ("boss", "project-admin"), ("dave", "project-viewer")]
    assert boss.get("/api/v1/users").status_code == 403


def test_the_last_region_admin_stays(api: Api) -> None:
    mine = api.get("/api/v1/role-bindings?user=admin").json
    [binding] = [b for b in mine if b["role"] == "region-admin"]  # type: ignore[union-attr]
    r = api.delete(f"/api/v1/role-bindings/{binding['id']}")
    assert r.status_code == 409 and "last region-admin" in r.json["detail"]  # type: ignore[index]
    assert api.delete("/api/v1/users/admin").status_code == 409  # yourself
    second = api.as_new_user("root2", ("region-admin", None))
    assert second.delete("/api/v1/users/admin").status_code == 204
    assert second.get("/api/v1/users/admin").status_code == 404


def test_a_named_token_acts_with_its_role_only_until_revoked_or_expired(
        api: Api, region: Region) -> None:
    _project(api, "shop")
    member = api.as_new_user("alice", ("project-member", "shop"))
    wider = member.post("/api/v1/api-tokens", json={"name": "ci", "role": "project-admin",
                                                      "project": "shop"})
    assert wider.status_code == 403 and "at most your own roles" in wider.json["detail"]  # type: ignore[index]
    made = member.post("/api/v1/api-tokens", json={"name": "ci", "role": "project-viewer",
                                                     "project": "shop"})
    assert made.status_code == 201, made.json
    body: dict[str, Any] = made.json  # type: ignore[assignment]
    ci = Api(member.client, region, body["token"])
    assert ci.get("/api/v1/security-groups").status_code == 200
    refused = ci.post("/api/v1/security-groups", json={"name": "web"})
    assert refused.status_code == 403
    assert ci.get("/api/v1/account").json["acting_as"] == ["read in shop"]  # type: ignore[index]

    listed = {t["id"]: t for t in member.get("/api/v1/api-tokens").json}  # type: ignore[union-attr]
    assert listed[body["id"]]["last_used_at"] is not None and "token" not in listed[body["id"]]
    with region.sessions() as db:
        stored = db.scalar(select(ApiToken.token_sha256).where(ApiToken.id == body["id"]))
    assert stored == hashlib.sha256(body["token"].encode()).hexdigest()  # only its hash

    assert member.delete(f"/api/v1/api-tokens/{body['id']}").status_code == 200
    gone = ci.get("/api/v1/security-groups")
    assert gone.status_code == 401 and "revoked" in gone.json["detail"]  # type: ignore[index]

    second = member.post("/api/v1/api-tokens", json={
        "name": "ci2", "role": "project-viewer", "project": "shop"}).json
    with region.sessions() as db, db.begin():  # its expiry passed
        db.execute(update(ApiToken).where(ApiToken.id == second["id"])  # type: ignore[index]
                   .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    late = Api(member.client, region, second["token"]).get("/api/v1/security-groups")  # type: ignore[index]
    assert late.status_code == 401 and "expired" in late.json["detail"]  # type: ignore[index]


def test_a_token_loses_what_its_user_loses(api: Api, region: Region) -> None:
    _project(api, "shop")
    member = api.as_new_user("alice", ("project-member", "shop"))
    made = member.post("/api/v1/api-tokens", json={"name": "ci", "role": "project-member",
                                                     "project": "shop"}).json
    ci = Api(member.client, region, made["token"])  # type: ignore[index]
    assert ci.get("/api/v1/security-groups").status_code == 200
    [binding] = api.get("/api/v1/role-bindings?user=alice").json  # type: ignore[misc]
    assert api.delete(f"/api/v1/role-bindings/{binding['id']}").status_code == 204
    assert ci.get("/api/v1/security-groups").status_code == 403


def test_operator_and_auditor_reach_what_their_roles_say(api: Api, region: Region) -> None:
    api.join_node("n1")
    operator = api.as_new_user("op", ("operator", None))
    auditor = api.as_new_user("aud", ("auditor", None))
    assert operator.get("/api/v1/nodes").status_code == 200
    assert operator.post("/api/v1/join-tokens", json={}).status_code == 201
    assert operator.get("/api/v1/audit-events").status_code == 403
    assert operator.post("/api/v1/security-groups", json={"name": "x"}).status_code == 403
    assert auditor.get("/api/v1/audit-events").status_code == 200
    assert auditor.get("/api/v1/nodes").status_code == 200
    assert auditor.post("/api/v1/join-tokens", json={}).status_code == 403
    assert auditor.post("/api/v1/projects", json={"name": "p"}).status_code == 403


def test_an_admin_acting_in_a_customers_project_is_flagged(api: Api, region: Region) -> None:
    _project(api, "shop")
    member = api.as_new_user("alice", ("project-member", "shop"))
    assert member.post("/api/v1/security-groups", json={"name": "web"}).status_code == 201
    assert api.post("/api/v1/security-groups",
                    json={"name": "admin-made", "project": "shop"}).status_code == 201
    with region.reads() as db:
        rows = {e.actor: e for e in db.scalars(select(AuditEvent).where(
            AuditEvent.action == "security-group.create", AuditEvent.project == "shop"))}
    assert rows["alice"].admin_in_project is False
    assert rows["admin"].admin_in_project is True


def test_projects_are_listed_by_who_sees_them_and_deleted_only_empty(api: Api) -> None:
    _project(api, "a")
    _project(api, "b")
    member = api.as_new_user("alice", ("project-member", "a"))
    assert [p["name"] for p in member.get("/api/v1/projects").json] == ["a"]  # type: ignore[union-attr]
    assert member.get("/api/v1/projects/b").status_code == 404
    assert sorted(p["name"] for p in api.get("/api/v1/projects").json) == [  # type: ignore[union-attr]
        "a", "b", "default"]
    assert api.post("/api/v1/projects", json={"name": "a"}).status_code == 409
    assert member.post("/api/v1/security-groups", json={"name": "web"}).status_code == 201
    full = api.delete("/api/v1/projects/a")
    assert full.status_code == 409 and "1 security groups" in full.json["detail"]  # type: ignore[index]
    assert api.delete("/api/v1/security-groups/web").status_code == 204
    assert api.delete("/api/v1/projects/a").status_code == 204
    assert member.get("/api/v1/projects").json == []
    assert api.delete("/api/v1/projects/default").status_code == 409
