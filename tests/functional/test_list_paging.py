"""Every list endpoint pages (limit, opaque cursor, RFC 8288 Link header) and filters;
a cursor that is not one is a 400 problem naming the parameter."""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from controller.region import Region
from tests.functional.helpers import RAW_IMAGE, Api

NEXT = re.compile(r'^<([^>]+)>; rel="next"$')


def walk(api: Api, path: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Every item of the list at `path` (with its query), `limit` at a time, following
    the Link headers; and how many pages it took."""
    items: list[dict[str, Any]] = []
    url: str | None = f"{path}{'&' if '?' in path else '?'}limit={limit}"
    pages = 0
    while url is not None:
        r = api.get(url)
        assert r.status_code == 200, r.json
        assert isinstance(r.json, list) and len(r.json) <= limit
        items += r.json
        pages += 1
        link = r.headers.get("Link")
        if link is None:
            url = None
        else:
            m = NEXT.match(link)
            assert m, link
            url = m.group(1)
            query = parse_qs(urlsplit(url).query)
            assert query["limit"] == [str(limit)] and len(query["cursor"]) == 1
            assert urlsplit(url).path == urlsplit(path).path
    return items, pages


def names(items: list[dict[str, Any]]) -> list[str]:
    return [i["name"] for i in items]


@pytest.fixture
def api(client: Any, region: Region) -> Api:
    return Api(client, region)


def test_named_lists_page_through_by_name_and_filter(api: Api) -> None:
    node = api.join_node("n1")
    api.join_node("n2")
    api.join_node("n3")
    assert api.post("/api/v1/nodes/n2/labels", json={"set": {"rack": "r2"}}).status_code == 200
    digest = hashlib.sha256(RAW_IMAGE).hexdigest()
    assert api.post(f"/api/v1/images?name=tiny&disk_format=raw&sha256={digest}&public=true",
                    data=RAW_IMAGE, content_type="application/octet-stream").status_code == 201
    assert api.post("/api/v1/projects", json={"name": "other"}).status_code == 201
    # the projects' default security groups are there from the start
    made: dict[str, list[str]] = {"security-groups": names(walk(api, "/api/v1/security-groups",
                                                                100)[0])}
    for i in range(5):
        for what, path, body in [
            ("security-groups", "/api/v1/security-groups", {"name": f"sg{i}", "rules": []}),
            ("networks", "/api/v1/networks", {"name": f"net{i}", "kind": "tenant",
                                              "subnets": [{"cidr": f"10.{i}.0.0/24"}]}),
            ("instances", "/api/v1/instances", {"name": f"vm{i}", "image": "tiny", "vcpus": 1,
                                                "memory_mib": 64}),
        ]:
            if i == 4:
                body = {**body, "project": "other"}
            r = api.post(path, json=body)
            assert r.status_code in (201, 202), r.json
            made.setdefault(what, []).append(body["name"])
    for i in range(3):
        assert api.import_image(f"img{i}", RAW_IMAGE).status_code == 201
    made["images"] = ["img0", "img1", "img2", "tiny"]
    made["nodes"] = ["n1", "n2", "n3"]
    assert node is not None
    for what, expected in made.items():
        items, pages = walk(api, f"/api/v1/{what}", 2)
        assert names(items) == sorted(expected), what
        assert pages == (len(expected) + 1) // 2, what
        # one page holding everything: no Link
        assert "Link" not in api.get(f"/api/v1/{what}?limit=1000").headers
        # a filter by name
        assert names(walk(api, f"/api/v1/{what}?name={expected[-1]}", 2)[0]) == [expected[-1]]
    for what in ["security-groups", "networks", "instances"]:
        other, _ = walk(api, f"/api/v1/{what}?project=other", 1)
        assert made[what][-1] in names(other) and len(other) <= 2, what
        assert api.get(f"/api/v1/{what}?project=nope").status_code == 404
    assert names(walk(api, "/api/v1/nodes?label=rack=r2", 1)[0]) == ["n2"]
    on_n1 = walk(api, "/api/v1/instances?node=n1", 1)[0]
    assert all(i["node_name"] == "n1" for i in on_n1)
    on_others = sum(len(walk(api, f"/api/v1/instances?node={n}", 10)[0])
                    for n in ("n2", "n3"))
    assert len(on_n1) + on_others == 5


def test_projects_and_users_page_by_name(api: Api) -> None:
    before = {what: names(walk(api, f"/api/v1/{what}", 100)[0]) for what in ("projects",
                                                                            "users")}
    for i in range(4):
        assert api.post("/api/v1/projects", json={"name": f"p{i}"}).status_code == 201
        assert api.post("/api/v1/users", json={"name": f"u{i}", "password":
                                               "a-long-password-1"}).status_code == 201
    tokens = [api.post("/api/v1/join-tokens", json={}).json["id"] for _ in range(3)]
    assert [t["id"] for t in walk(api, "/api/v1/join-tokens", 2)[0]] == tokens
    for what, prefix in (("projects", "p"), ("users", "u")):
        items, pages = walk(api, f"/api/v1/{what}", 2)
        expected = sorted(before[what] + [f"{prefix}{i}" for i in range(4)])
        assert names(items) == expected and pages == (len(expected) + 1) // 2
        assert names(walk(api, f"/api/v1/{what}?name={prefix}2", 2)[0]) == [f"{prefix}2"]


def test_ports_page_in_the_order_they_were_made(api: Api) -> None:
    for net in ("a", "b"):
        assert api.post("/api/v1/networks", json={
            "name": net, "kind": "tenant",
            "subnets": [{"cidr": "10.0.0.0/24" if net == "a" else "10.1.0.0/24"}]}
        ).status_code == 201
    made = []
    for i in range(5):
        r = api.post("/api/v1/ports", json={"network": "a" if i % 2 == 0 else "b"})
        assert r.status_code == 201, r.json
        made.append(r.json["id"])
    items, pages = walk(api, "/api/v1/ports", 2)
    assert [p["id"] for p in items] == made and pages == 3
    on_a, _ = walk(api, "/api/v1/ports?network=a", 1)
    assert [p["id"] for p in on_a] == made[0::2]


def test_operations_and_audit_events_page_newest_first(api: Api) -> None:
    api.join_node("n1")
    assert api.import_image("tiny", RAW_IMAGE).status_code == 201
    ops = []
    for i in range(5):
        r = api.post("/api/v1/instances", json={"name": f"vm{i}", "image": "tiny",
                                                "vcpus": 1, "memory_mib": 64})
        assert r.status_code == 202, r.json
        ops.append(r.json["id"])
    items, pages = walk(api, "/api/v1/operations", 2)
    assert [o["id"] for o in items] == ops[::-1] and pages == 3
    vm3 = api.get("/api/v1/instances/vm3").json["id"]
    assert [o["id"] for o in walk(api, f"/api/v1/operations?target={vm3}", 1)[0]] == [ops[3]]
    assert len(walk(api, "/api/v1/operations?kind=instance.create", 2)[0]) == 5
    events, _ = walk(api, "/api/v1/audit-events", 3)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == seqs[0]
    creates, _ = walk(api, "/api/v1/audit-events?action=instance.create", 2)
    assert len(creates) == 5


@pytest.mark.parametrize("cursor", ["%%%", "bm90IGpzb24", "WzEuNSwiYSJd", "WyJhIl0",
                                    "WyJhIiwiYiJdx", "W251bGwsImEiXQ"])
def test_a_bad_cursor_is_a_problem_naming_the_parameter(api: Api, cursor: str) -> None:
    # not base64, not JSON, a fraction for a key, not a pair, not canonical, null
    for path in ("/api/v1/instances", "/api/v1/ports", "/api/v1/operations",
                 "/api/v1/audit-events"):
        r = api.get(f"{path}?cursor={cursor}")
        assert r.status_code in (400, 422), (path, cursor, r.json)
        assert r.mimetype == "application/problem+json"
        assert "cursor" in r.json["detail"]
        assert r.json["errors"][0]["field"] == "cursor"


def test_limit_is_bounded(api: Api) -> None:
    for limit in ("0", "1001", "x"):
        r = api.get(f"/api/v1/instances?limit={limit}")
        assert r.status_code == 422 and r.json["errors"][0]["field"] == "limit"
