"""The event stream on the real server (gunicorn, gevent, TLS) with a real agent and VMs:
who sees what, resuming, the stream's end at logout, `vauban monitor` and `--wait`."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from controller.cli.client import OPENED, StreamItem, parse_stream
from tests.e2e.region import BIN, E2ERegion

pytestmark = pytest.mark.e2e

KEEPALIVE_S = "1"  # idle streams get a comment every second: the test sees several
IDLE_S = "3"  # the server's limit on a silent peer, shorter than a quiet stream lasts


@pytest.fixture(scope="module")
def region(libvirtd: str, testguest_image: Path) -> Iterator[E2ERegion]:
    env = {"VAUBAN_EVENTS_KEEPALIVE_S": KEEPALIVE_S, "VAUBAN_CLIENT_IDLE_TIMEOUT": IDLE_S}
    with E2ERegion.running(testguest_image, env) as r:
        yield r


class Stream:
    """An open event stream, read block by block (a read that waits more than 60 s fails
    the test instead of hanging it)."""

    def __init__(self, region: E2ERegion, who: requests.Session, query: str = "",
                 **headers: str) -> None:
        self.response = who.get(f"{region.layout.url}/api/v1/events{query}", stream=True,
                                timeout=(10, 60), headers=headers,
                                verify=str(region.layout.ca_file))
        assert self.response.status_code == 200, self.response.text
        lines = (line.decode() for line in self.response.iter_lines())
        self.items: Iterator[StreamItem] = parse_stream(_opened(lines))
        assert next(self.items) is OPENED

    def start(self) -> int:
        first = next(self.items)
        assert first.id is not None and first.type is None, first
        return first.id

    def until(self, found: Callable[[StreamItem], bool]) -> list[StreamItem]:
        seen = []
        for item in self.items:
            if item.type is None:
                continue
            seen.append(item)
            if found(item):
                return seen
        raise AssertionError(f"the stream ended; it told {[i.type for i in seen]}")

    def close(self) -> None:
        self.response.close()


def _opened(lines: Iterator[str]) -> Iterator[str]:
    yield ""
    yield from lines


def _named(type_: str, name: str) -> Callable[[StreamItem], bool]:
    return lambda i: i.type == type_ and i.data is not None and \
        i.data["object"]["name"] == name


def _admin(region: E2ERegion) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {region.token}"
    return s


def _post(region: E2ERegion, who: requests.Session, path: str, body: Any) -> Any:
    r = who.post(f"{region.layout.url}/api/v1{path}", json=body, timeout=30,
                 verify=str(region.layout.ca_file))
    assert r.status_code in (200, 201, 202, 204), r.text
    return r.json() if r.content else None


def _member(region: E2ERegion, name: str, project: str) -> tuple[requests.Session, str]:
    """A new user, member of `project`, logged in: its session and token."""
    admin = _admin(region)
    password = f"{name}-password-1234"
    _post(region, admin, "/users", {"name": name, "password": password})
    _post(region, admin, "/role-bindings", {"user": name, "role": "project-member",
                                            "project": project})
    token = _post(region, requests.Session(), "/tokens",
                  {"username": name, "password": password})["token"]
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    return s, str(token)


def _cli(region: E2ERegion, token: str, *args: str) -> str:
    out = subprocess.run([str(BIN / "vauban"), *args],
                         env={**region.env(), "VAUBAN_TOKEN": token}, text=True,
                         capture_output=True, timeout=600, check=False)
    assert out.returncode == 0, f"vauban {' '.join(args)}: {out.stderr}{out.stdout}"
    return out.stdout


def test_a_project_sees_its_vm_made_and_another_project_does_not(region: E2ERegion) -> None:
    tag = uuid.uuid4().hex[:6]
    a, b = "default", f"b-{tag}"  # the region's image is default's
    _post(region, _admin(region), "/projects", {"name": b})
    alice, alice_token = _member(region, f"alice-{tag}", a)
    bob, _ = _member(region, f"bob-{tag}", b)
    mine, theirs = Stream(region, alice), Stream(region, bob)
    start = mine.start()
    theirs.start()

    name = f"ev-{tag}"
    # --wait follows the operation's events; it returns once the node made the VM
    out = _cli(region, alice_token, "vm", "create", name, "--image", "testguest", "--cpus",
               "1", "--memory", "256", "--project", a, "--wait")
    assert out.splitlines()[-1] == f"create {name}: done"
    region.vm(name)  # removed with the region, should this test fail before its end
    told = mine.until(lambda i: i.type == "operation.changed" and i.data is not None and
                      i.data["data"]["state"] == "succeeded")
    assert {i.type for i in told} >= {"operation.changed", "vm.changed"}
    assert all(i.data is not None and i.data["project"] == a for i in told)

    _post(region, bob, "/security-groups", {"name": f"sg-{tag}", "project": b})
    seen = theirs.until(_named("security_group.changed", f"sg-{tag}"))
    assert [i.data["project"] for i in seen if i.data is not None] == [b]

    # `vauban monitor` prints the same events, one line each
    lines = _cli(region, alice_token, "monitor", "--after", str(start), "--type", "operation",
                 "--count", "1").splitlines()
    assert len(lines) == 1 and "operation.changed" in lines[0] and name in lines[0]
    mine.close(), theirs.close()
    _cli(region, alice_token, "vm", "delete", name, "--wait")


def test_node_events_need_the_region_permission(region: E2ERegion) -> None:
    tag = uuid.uuid4().hex[:6]
    project = f"p-{tag}"
    _post(region, _admin(region), "/projects", {"name": project})
    member, _ = _member(region, f"carol-{tag}", project)
    ops, theirs = Stream(region, _admin(region), "?types=node"), \
        Stream(region, member, "?types=node,security_group")
    ops.start(), theirs.start()
    node = region.cli("node", "list", "--json")
    node_name = json.loads(node)[0]["name"]
    _post(region, _admin(region), f"/nodes/{node_name}/labels",
          {"set": {"events": tag}, "remove": []})
    told = ops.until(lambda i: i.type == "node.changed")[-1]
    assert told.data is not None and told.data["data"]["labels"]["events"] == tag
    _post(region, member, "/security-groups", {"name": f"sg-{tag}", "project": project})
    assert [i.type for i in theirs.until(_named("security_group.changed", f"sg-{tag}"))] == \
        ["security_group.changed"]
    ops.close(), theirs.close()


def test_resume_reset_bad_input_and_keep_alive(region: E2ERegion) -> None:
    admin = _admin(region)
    first = Stream(region, admin, "?types=security_group")
    start = first.start()
    # quiet for longer than the server lets a silent peer be: comments keep it open
    comments = 0
    while comments < int(IDLE_S) + 2:
        item = next(first.items)
        assert item.type is None and item.comment == "keep-alive", item
        comments += 1
    first.close()
    names = [f"r-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    for name in names:
        _post(region, admin, "/security-groups", {"name": name, "project": "default"})
    resumed = Stream(region, admin, "?types=security_group", **{"Last-Event-ID": str(start)})
    told = resumed.until(_named("security_group.changed", names[-1]))
    assert [i.data["object"]["name"] for i in told if i.data is not None] == names
    resumed.close()
    future = Stream(region, admin, f"?after={start + 10**9}")
    assert future.until(lambda i: True)[0].type == "stream.reset"
    future.close()
    bad = admin.get(f"{region.layout.url}/api/v1/events?types=vm,nope", timeout=30,
                    verify=str(region.layout.ca_file))
    assert bad.status_code == 400
    assert bad.headers["Content-Type"] == "application/problem+json"
    assert "nope" in bad.json()["detail"]


def test_the_stream_ends_when_the_session_logs_out(region: E2ERegion) -> None:
    browser = requests.Session()
    password = region.layout.password_file.read_text().strip()
    tag = uuid.uuid4().hex[:6]
    _post(region, _admin(region), "/users", {"name": f"dave-{tag}", "password": password})
    r = browser.post(f"{region.layout.url}/api/v1/sessions", timeout=30,
                     verify=str(region.layout.ca_file),
                     json={"username": f"dave-{tag}", "password": password})
    assert r.status_code == 201, r.text
    csrf = r.json()["csrf_token"]
    logged_in = datetime.now(UTC)  # the login's own event is older
    stream = Stream(region, browser)
    stream.start()
    out = browser.delete(f"{region.layout.url}/api/v1/sessions/current", timeout=30,
                         verify=str(region.layout.ca_file),
                         headers={"Origin": region.layout.url, "X-CSRF-Token": csrf})
    assert out.status_code == 204, out.text
    told = [i for i in stream.items if i.type is not None]  # until it ends
    # nothing that happened after it opened, the logout's revocation least of all; an
    # event committed just before it opened may still come (the hub hands out at least
    # once what committed around a subscription: a late commit is never lost)
    assert all(i.data is not None and datetime.fromisoformat(i.data["at"]) < logged_in
               for i in told), told
    stream.close()

