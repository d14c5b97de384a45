"""Project isolation, walked over the whole API: what project B holds is, to every role of
project A (and to a user holding no role), exactly as if it did not exist.

Project B gets one of everything (a tenant network, a port, a security group with a rule,
a VM, a volume with a snapshot, a private image, a named token, a member). Then every
operation of the OpenAPI document is called with tokens of A's admin, member and viewer,
of a named viewer token of A, and of a user with no role:
- an operation on one of B's objects answers exactly as the same operation on an id that
  was never made (status and words, the id aside): 404, never a 403 that confirms it;
- listings and every other answer name nothing of B's;
- creations that name one of B's objects in their body (a network, an image, a security
  group, a source volume, a remote group, B's project) answer as for a name never made.
B's own member, given B's ids, is answered otherwise (so the ids are right and the walk
can fail).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from werkzeug.test import TestResponse

from agent.protocol import ObservedVm, ObservedVmState
from controller.api.framework import EVENT_STREAM
from controller.app import create_app
from controller.region import Region
from tests.functional.helpers import RAW_IMAGE, Api

MARK = "bsecret"  # in the name of everything B makes


@dataclass
class ProjectB:
    """B's objects by the path parameter that names them, and every id and name of B's."""

    by_param: dict[tuple[str, str], str] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)

    def add(self, collection: str, param: str, value: str, *also: str) -> None:
        self.by_param[(collection, param)] = value
        self.secrets.update((value, *also))


def _ok(r: TestResponse, status: int = 201) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.json)
    return r.json  # type: ignore[return-value]


def _make_b(admin: Api, member: Api) -> ProjectB:
    b = ProjectB()
    node = admin.join_node("n1")
    digest = hashlib.sha256(RAW_IMAGE).hexdigest()
    _ok(admin.post(f"/api/v1/images?name=base&disk_format=raw&sha256={digest}&public=true",
                   data=RAW_IMAGE, content_type="application/octet-stream"))
    image = _ok(member.post(f"/api/v1/images?name={MARK}-img&disk_format=raw&sha256={digest}",
                            data=RAW_IMAGE, content_type="application/octet-stream"))
    b.add("images", "ref", image["id"], image["name"])
    net = _ok(member.post("/api/v1/networks", json={
        "name": f"{MARK}-net", "kind": "tenant", "subnets": [{"cidr": "10.9.0.0/24"}]}))
    b.add("networks", "ref", net["id"], net["name"])
    group = _ok(member.post("/api/v1/security-groups", json={
        "name": f"{MARK}-sg", "rules": [{"direction": "ingress", "protocol": "tcp",
                                         "port_min": 22}]}))
    b.add("security-groups", "ref", group["id"], group["name"])
    b.add("security-groups", "rule_id", group["rules"][0]["id"])
    port = _ok(member.post("/api/v1/ports", json={"network": net["id"]}))
    b.add("ports", "ref", port["id"], port["mac"], *port["addresses"])
    op = _ok(member.post("/api/v1/instances", json={
        "name": f"{MARK}-vm", "image": "base", "vcpus": 1, "memory_mib": 128,
        "networks": [net["name"]]}), 202)
    vm = _ok(member.get(f"/api/v1/instances/{MARK}-vm"), 200)
    b.add("instances", "ref", vm["id"], vm["name"])
    b.add("operations", "op_id", op["id"])
    admin.report(node, [ObservedVm(id=vm["id"], name=vm["name"], state=ObservedVmState.RUNNING,
                                   power_seq=1)])
    vol_op = _ok(member.post("/api/v1/volumes", json={"name": f"{MARK}-vol", "size_gib": 1}),
                 202)
    b.add("volumes", "ref", vol_op["target_id"], f"{MARK}-vol")
    b.add("volumes", "snap", "s1")
    token = _ok(member.post("/api/v1/api-tokens", json={
        "name": f"{MARK}-token", "role": "project-viewer", "project": f"{MARK}-project"}))
    b.add("api-tokens", "token_id", token["id"], token["token"])
    [binding] = _ok(member.get("/api/v1/role-bindings?user=bmember"), 200)  # type: ignore[misc]
    b.add("role-bindings", "binding_id", binding["id"])
    project = _ok(member.get(f"/api/v1/projects/{MARK}-project"), 200)
    b.add("projects", "ref", project["id"], project["name"])
    return b


@pytest.fixture
def walk(rbd_region: Region) -> tuple[Api, dict[str, Api], ProjectB, dict[str, Any]]:
    admin = Api(create_app(rbd_region).test_client(), rbd_region)
    for name in ("a-project", f"{MARK}-project"):
        _ok(admin.post("/api/v1/projects", json={"name": name}))
    b_member = admin.as_new_user("bmember", ("project-member", f"{MARK}-project"))
    b = _make_b(admin, b_member)
    a_member = admin.as_new_user("amember", ("project-member", "a-project"))
    named = _ok(a_member.post("/api/v1/api-tokens", json={
        "name": "a-viewer-token", "role": "project-viewer", "project": "a-project"}))
    callers = {
        "a-admin": admin.as_new_user("aadmin", ("project-admin", "a-project")),
        "a-member": a_member,
        "a-viewer": admin.as_new_user("aviewer", ("project-viewer", "a-project")),
        "a-named-token": Api(admin.client, rbd_region, named["token"]),
        "no-role": admin.as_new_user("nobody"),
    }
    document = _ok(admin.get("/api/v1/openapi.json"), 200)
    return b_member, callers, b, document


PARAM = re.compile(r"\{([a-z_]+)\}")


def _operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    """Every user operation but the event stream, which never ends (its per-project
    filtering is tests/functional/test_events.py's)."""
    return [(method.upper(), path) for path, ops in document["paths"].items()
            for method, op in ops.items() if {"bearer": []} in op.get("security", [])
            and not streams(op)]


def streams(op: dict[str, Any]) -> bool:
    return EVENT_STREAM in op["responses"].get("200", {}).get("content", {})


def _url(path: str, values: dict[tuple[str, str], str], missing: str) -> tuple[str, bool]:
    """`path` with its parameters filled from `values` (by collection and name), else
    `missing`; and whether any came from `values`."""
    parts = path.split("/")  # /api/v1/<collection>/...; /metrics is one outside it
    collection = parts[3] if len(parts) > 3 else parts[-1]
    used = False

    def fill(m: re.Match[str]) -> str:
        nonlocal used
        value = values.get((collection, m.group(1)))
        used = used or value is not None
        return value if value is not None else missing

    return PARAM.sub(fill, path), used


def _call(api: Api, method: str, url: str) -> TestResponse:
    return api.client.open(url, method=method, headers=api.headers,
                           json={} if method in ("POST", "PUT") else None)


def _words(r: TestResponse, *hidden: str) -> tuple[int, str]:
    text = r.get_data(as_text=True)
    for value in hidden:
        text = text.replace(value, "<ref>")
    return r.status_code, text


def test_nothing_of_project_b_is_seen_or_touched_from_project_a(
        walk: tuple[Api, dict[str, Api], ProjectB, dict[str, Any]]) -> None:
    b_member, callers, b, document = walk
    operations = _operations(document)
    assert len(operations) > 50  # the walk covers the API, not a corner of it
    checked = 0
    for method, path in operations:
        never = str(uuid.uuid4())
        b_url, names_b = _url(path, b.by_param, never)
        if names_b and method == "GET":  # B's member is answered about B's own object
            assert _call(b_member, method, b_url).status_code != 404, (method, b_url)
        for who, api in callers.items():
            answer = _call(api, method, b_url)
            text = answer.get_data(as_text=True)
            # what the caller sent itself may be echoed; nothing else of B's
            leaked = sorted(s for s in b.secrets if s in text and s not in b_url)
            assert not leaked, (who, method, path, leaked, text[:300])
            if names_b:
                ghost_url, _ = _url(path, {}, never)
                ghost = _call(api, method, ghost_url)
                assert _words(answer, *b.by_param.values()) == _words(ghost, never), \
                    (who, method, path)
                assert answer.status_code in (403, 404, 405, 422), (who, method, path)
                checked += 1
    assert checked > 100


# creations that name B's objects in their bodies, and a body naming a thing never made
REFERRING: list[tuple[str, str, dict[str, Any]]] = [
    ("/api/v1/instances", "network", {"name": "x", "image": "base", "vcpus": 1,
                                      "memory_mib": 128, "networks": ["{networks}"]}),
    ("/api/v1/instances", "image", {"name": "x", "image": "{images}", "vcpus": 1,
                                    "memory_mib": 128}),
    ("/api/v1/instances", "security group", {"name": "x", "image": "base", "vcpus": 1,
                                             "memory_mib": 128, "networks": ["pub"],
                                             "security_groups": ["{security-groups}"]}),
    ("/api/v1/instances", "project", {"name": "x", "image": "base", "vcpus": 1,
                                      "memory_mib": 128, "project": "{projects}"}),
    ("/api/v1/ports", "network", {"network": "{networks}"}),
    ("/api/v1/volumes", "volume", {"name": "x", "size_gib": 1, "source": "{volumes}@s1"}),
    ("/api/v1/security-groups", "remote group", {
        "name": "x", "rules": [{"direction": "ingress", "remote_group": "{security-groups}"}]}),
    ("/api/v1/api-tokens", "project", {"name": "x", "role": "project-viewer",
                                       "project": "{projects}"}),
    ("/api/v1/role-bindings", "project", {"user": "amember", "role": "project-viewer",
                                          "project": "{projects}"}),
]


def _fill(body: Any, values: dict[str, str]) -> Any:
    if isinstance(body, dict):
        return {k: _fill(v, values) for k, v in body.items()}
    if isinstance(body, list):
        return [_fill(v, values) for v in body]
    if isinstance(body, str):
        return re.sub(r"\{([a-z-]+)\}", lambda m: values[m.group(1)], body)
    return body


def test_a_body_naming_project_bs_object_is_answered_as_one_never_made(
        walk: tuple[Api, dict[str, Api], ProjectB, dict[str, Any]]) -> None:
    _, callers, b, _ = walk
    caller = callers["a-admin"]  # the widest role of A
    _ok(caller.post("/api/v1/networks", json={"name": "pub", "kind": "tenant",
                                              "subnets": [{"cidr": "10.8.0.0/24"}]}))
    ids = {c: v for (c, p), v in b.by_param.items() if p == "ref"}
    for path, what, body in REFERRING:
        never = f"never-{uuid.uuid4().hex[:8]}"
        answer = caller.post(path, json=_fill(body, ids))
        ghost = caller.post(path, json=_fill(body, dict.fromkeys(ids, never)))
        assert _words(answer, *ids.values()) == _words(ghost, never), (path, what, answer.json)
        assert answer.status_code in (404, 422), (path, what, answer.json)
        assert MARK not in answer.get_data(as_text=True), (path, what)
