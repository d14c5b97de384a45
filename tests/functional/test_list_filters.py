"""The lists paged since (role bindings, API tokens, GPUs) and the state filters of VMs,
nodes and volumes; every list refuses a bad cursor, limit or state with a problem."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from agent.protocol import ObservedVm, ObservedVmState
from controller.app import create_app
from controller.cli import main as cli
from controller.db.models import Node
from controller.region import Region
from controller.states import InstanceState
from tests.functional.cli_helpers import cli_answered_by
from tests.functional.helpers import RAW_IMAGE, Api
from tests.functional.test_gpus import server_inventory
from tests.functional.test_list_paging import walk
from tests.functional.test_volumes import observed, report


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    return Api(client, region)


def list_paths(api: Api) -> list[str]:
    """Every list of the API (its OpenAPI document's list operations), without parameters
    in its path."""
    doc = api.get("/api/v1/openapi.json").json
    return [path for path, ops in doc["paths"].items() for method, op in ops.items()
            if method == "get" and op["operationId"].startswith("list") and "{" not in path]


def test_every_list_refuses_a_bad_cursor_and_a_limit_out_of_range(api: Api) -> None:
    paths = list_paths(api)
    assert {"/api/v1/role-bindings", "/api/v1/api-tokens", "/api/v1/gpus"} <= set(paths)
    for path in paths:
        r = api.get(f"{path}?cursor=bm90IGpzb24")  # base64, not JSON
        assert r.status_code == 400 and r.mimetype == "application/problem+json", path
        assert r.json["errors"][0]["field"] == "cursor", path
        for limit in ("0", "1001", "x"):
            r = api.get(f"{path}?limit={limit}")
            assert r.status_code == 422 and r.mimetype == "application/problem+json", path
            assert r.json["errors"][0]["field"] == "limit", path


@pytest.mark.parametrize("path", ["/api/v1/instances", "/api/v1/nodes", "/api/v1/volumes",
                                  "/api/v1/gpus", "/api/v1/operations", "/api/v1/rollouts",
                                  "/api/v1/images?visibility="])
def test_an_unknown_state_is_a_problem_naming_the_known_ones(api: Api, path: str) -> None:
    name = "visibility" if "visibility" in path else "state"
    r = api.get(f"{path}{'' if '?' in path else f'?{name}='}sleeping")
    assert r.status_code == 422 and r.mimetype == "application/problem+json", r.json
    [error] = r.json["errors"]
    assert error["field"] == name
    known = {"/api/v1/nodes": "'up', 'down' or 'new'", "/api/v1/gpus": "'unusable'",
             "/api/v1/instances": "'running'", "/api/v1/volumes": "'in-use'",
             "/api/v1/images?visibility=": "'public' or 'project'"}
    assert known.get(path, "'running'") in error["message"], error


def test_role_bindings_and_api_tokens_page_oldest_first(api: Api) -> None:
    for i in range(3):
        assert api.post("/api/v1/projects", json={"name": f"p{i}"}).status_code == 201
    member = api.as_new_user("alice", *[("project-member", f"p{i}") for i in range(3)])
    everyone, pages = walk(api, "/api/v1/role-bindings", 2)
    stamps = [(b["created_at"], b["id"]) for b in everyone]
    assert stamps == sorted(stamps) and pages == (len(everyone) + 1) // 2
    alices = walk(api, "/api/v1/role-bindings?user=alice", 1)[0]
    assert [b["project"] for b in alices] == ["p0", "p1", "p2"]
    # a member pages through its own bindings only, and no one else's
    assert walk(member, "/api/v1/role-bindings", 2)[0] == alices
    assert walk(member, "/api/v1/role-bindings?project=p1", 1)[0] == alices[1:2]
    made = []
    for i in range(3):
        r = member.post("/api/v1/api-tokens", json={"name": f"t{i}", "role": "project-member",
                                                   "project": "p0"})
        assert r.status_code == 201, r.json
        made.append(r.json["id"])
    tokens, pages = walk(member, "/api/v1/api-tokens", 2)
    assert [t["id"] for t in tokens][-3:] == made and pages == (len(tokens) + 1) // 2
    assert not set(made) & {t["id"] for t in walk(api, "/api/v1/api-tokens", 10)[0]}


def test_gpus_page_by_node_and_address_and_filter(api: Api, tmp_path: Path) -> None:
    assert api.import_image("tiny", RAW_IMAGE).status_code == 201
    api.join_node("gpu-b", inv=server_inventory("gpu-server", tmp_path))
    api.join_node("gpu-a", inv=server_inventory("gpu-server", tmp_path))
    api.join_node("plain")
    everything = api.get("/api/v1/gpus?limit=1000").json
    assert len(everything) >= 4
    gpus, pages = walk(api, "/api/v1/gpus", 3)
    keys = [(g["node"], g["address"]) for g in gpus]
    assert keys == sorted(keys) and gpus == everything and pages == (len(gpus) + 2) // 3
    on_a = walk(api, "/api/v1/gpus?node=gpu-a", 2)[0]
    assert on_a and {g["node"] for g in on_a} == {"gpu-a"} and len(on_a) * 2 == len(gpus)
    r = api.post("/api/v1/instances", json={"name": "train", "image": "tiny", "vcpus": 2,
                                            "memory_mib": 1024,
                                            "gpus": [{"model": "H100", "count": 1}]})
    assert r.status_code == 202, r.json
    [held] = walk(api, "/api/v1/gpus?state=in-use", 1)[0]
    assert held["instance"] == "train"
    free = walk(api, "/api/v1/gpus?state=free", 2)[0]
    assert held not in free and {g["state"] for g in free} == {"free"}
    assert api.get("/api/v1/gpus?node=nope").status_code == 404


def shown_as_filtered(api: Api) -> dict[str, str]:
    """Each VM's state as the list shows it, after checking that the list filtered by
    each state holds exactly the VMs shown in it."""
    shown = {v["name"]: v["state"] for v in walk(api, "/api/v1/instances", 100)[0]}
    for state in get_args(InstanceState):
        filtered = walk(api, f"/api/v1/instances?state={state}", 1)[0]
        assert [v["name"] for v in filtered] == sorted(n for n, s in shown.items()
                                                       if s == state), state
    return shown


def test_vms_and_nodes_filter_by_their_state(api: Api, region: Region) -> None:
    assert api.import_image("tiny", RAW_IMAGE).status_code == 201
    n1 = api.join_node("n1")
    api.join_node("n2", report=False)  # joined, never reported: new
    for i in range(3):
        body = {"name": f"vm{i}", "image": "tiny", "vcpus": 1, "memory_mib": 64}
        assert api.post("/api/v1/instances", json=body).status_code == 202
    vms = {v["name"]: v for v in api.desired(n1)["vms"]}
    api.report(n1, [ObservedVm(id=vms[name]["id"], name=name, state=state, power_seq=1)
                    for name, state in (("vm0", ObservedVmState.RUNNING),
                                        ("vm1", ObservedVmState.STOPPED))])
    assert shown_as_filtered(api) == {"vm0": "running", "vm1": "creating", "vm2": "creating"}
    assert walk(api, "/api/v1/instances?state=running&node=n1&name=vm0", 1)[0][0][
        "state"] == "running"
    assert walk(api, "/api/v1/instances?state=running&node=n2", 1)[0] == []
    assert [n["name"] for n in walk(api, "/api/v1/nodes?state=up", 1)[0]] == ["n1"]
    assert [n["name"] for n in walk(api, "/api/v1/nodes?state=new", 1)[0]] == ["n2"]
    # n1 falls silent: it is down, and what it runs is unknown
    silent_since = datetime.now(UTC) - timedelta(seconds=region.config.node_down_after_s + 60)
    with region.sessions() as db, db.begin():
        db.execute(update(Node).where(Node.id == n1.id).values(last_seen_at=silent_since))
    assert [n["name"] for n in walk(api, "/api/v1/nodes?state=down", 1)[0]] == ["n1"]
    assert shown_as_filtered(api) == {"vm0": "unknown", "vm1": "creating", "vm2": "creating"}


def test_volumes_filter_by_state_and_images_by_visibility(rbd_region: Region) -> None:
    api = Api(create_app(rbd_region).test_client(), rbd_region)
    node = api.join_node("n1")
    for name in ("a", "b"):
        assert api.post("/api/v1/volumes", json={"name": name, "size_gib": 1}).status_code == 202
    made = {v["name"]: v for v in api.desired(node)["volumes"]}
    report(api, node, [observed(made["a"], 1)])
    states: dict[str, Any] = {s: [v["name"] for v in walk(api, f"/api/v1/volumes?state={s}",
                                                          1)[0]]
                              for s in ("available", "creating", "in-use")}
    assert states == {"available": ["a"], "creating": ["b"], "in-use": []}
    assert api.import_image("shared", RAW_IMAGE, extra="&public=true").status_code == 201
    assert api.import_image("own", RAW_IMAGE).status_code == 201
    assert [i["name"] for i in walk(api, "/api/v1/images?visibility=public", 1)[0]] == [
        "shared"]
    assert [i["name"] for i in walk(api, "/api/v1/images?visibility=project", 1)[0]] == [
        "own"]


def test_the_cli_lists_pass_the_filters(client: FlaskClient, region: Region,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    api = cli_answered_by(Api(client, region), monkeypatch)
    assert api.import_image("tiny", RAW_IMAGE).status_code == 201
    n1 = api.join_node("n1")
    api.join_node("n2", report=False)
    for name, node in (("web", "n1"), ("db", "n1")):
        body = {"name": name, "image": "tiny", "vcpus": 1, "memory_mib": 64, "node": node}
        assert api.post("/api/v1/instances", json=body).status_code == 202
    web = next(v for v in api.desired(n1)["vms"] if v["name"] == "web")
    api.report(n1, [ObservedVm(id=web["id"], name="web", state=ObservedVmState.RUNNING,
                               power_seq=1)])

    def names(*argv: str) -> list[str]:
        capsys.readouterr()
        assert cli.main([*argv, "-o", "json"]) == 0
        return [row["name"] for row in json.loads(capsys.readouterr().out)]

    assert names("vm", "list", "--state", "running", "--node", "n1") == ["web"]
    assert names("vm", "list", "--state", "creating") == ["db"]
    assert names("vm", "list", "--node", "n1", "--name", "db") == ["db"]
    assert names("node", "list", "--state", "up") == ["n1"]
    assert names("node", "list", "--state", "new") == ["n2"]
    assert names("image", "list", "--visibility", "public") == []
    capsys.readouterr()
    assert cli.main(["vm", "list", "--state", "sleeping"]) == 1
    assert "'running'" in capsys.readouterr().err
