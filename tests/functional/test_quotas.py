"""Project quotas: enforced where a project grows, also under concurrent requests; a
refusal names the quota, its limit, the usage and what was asked, and leaves nothing."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from controller.app import create_app
from controller.region import Region
from tests.functional.helpers import RAW_IMAGE, Api
from tests.functional.test_gpus import server_inventory
from tests.functional.test_volumes import observed, report


def _setup(admin: Api, quotas: dict[str, Any]) -> Api:
    digest = hashlib.sha256(RAW_IMAGE).hexdigest()
    assert admin.post(f"/api/v1/images?name=tiny&disk_format=raw&sha256={digest}&public=true",
                      data=RAW_IMAGE, content_type="application/octet-stream").status_code == 201
    assert admin.post("/api/v1/projects", json={"name": "shop"}).status_code == 201
    r = admin.put("/api/v1/projects/shop/quotas", json=quotas)
    assert r.status_code == 200, r.json
    return admin.as_new_user("alice", ("project-member", "shop"))


def _vm(api: Api, name: str, **more: Any) -> Any:
    return api.post("/api/v1/instances", json={"name": name, "image": "tiny", "vcpus": 1,
                                               "memory_mib": 256, "project": "shop", **more})


def test_vms_stop_at_the_vcpu_quota_with_its_numbers(client: FlaskClient, region: Region) -> None:
    admin = Api(client, region)
    admin.join_node("n1", cpus=64, memory_mib=65536)
    member = _setup(admin, {"vcpus": 3, "instances": 5})
    assert _vm(member, "a", vcpus=2).status_code == 202
    refused = _vm(member, "b", vcpus=2)
    assert refused.status_code == 409
    assert refused.json["detail"] == (  # type: ignore[index]
        "quota vcpus of project 'shop' exceeded: limit 3 vCPUs, 2 in use, 2 asked")
    assert refused.json["quota"] == "vcpus" and refused.json["in_use"] == 2  # type: ignore[index]
    assert [i["name"] for i in member.get("/api/v1/instances").json] == ["a"]  # type: ignore[union-attr]
    assert _vm(member, "c", vcpus=1).status_code == 202  # up to the limit
    shown = member.get("/api/v1/projects/shop").json
    assert shown["quotas"] == {"vcpus": 3, "instances": 5}  # type: ignore[index]
    assert shown["usage"]["vcpus"] == 3 and shown["usage"]["instances"] == 2  # type: ignore[index]
    # the admin lowers it below the usage: what is held stays, nothing more is made
    assert admin.put("/api/v1/projects/shop/quotas", json={"vcpus": 1}).status_code == 200
    assert _vm(member, "d").status_code == 409
    assert len(member.get("/api/v1/instances").json) == 2  # type: ignore[arg-type]


def test_memory_networks_and_shared_addresses_quotas(client: FlaskClient, region: Region) -> None:
    admin = Api(client, region)
    admin.join_node("n1", cpus=64, memory_mib=65536)
    member = _setup(admin, {"memory_mib": 512, "networks": 1, "public_addresses": 1})
    assert _vm(member, "a", memory_mib=512).status_code == 202
    assert "quota memory_mib" in _vm(member, "b").json["detail"]  # type: ignore[index]
    net = {"kind": "tenant", "subnets": [{"cidr": "10.1.0.0/24"}]}
    assert member.post("/api/v1/networks", json={"name": "n1", **net}).status_code == 201
    second = member.post("/api/v1/networks", json={"name": "n2", **net})
    assert second.status_code == 409 and "quota networks" in second.json["detail"]  # type: ignore[index]
    assert admin.post("/api/v1/networks", json={
        "name": "pub", "kind": "provider", "vlan": 10, "physical": "eth1",
        "subnets": [{"cidr": "192.0.2.0/24"}]}).status_code == 201
    assert member.post("/api/v1/ports", json={"network": "pub"}).status_code == 201
    again = member.post("/api/v1/ports", json={"network": "pub"})
    assert again.status_code == 409 and "quota public_addresses" in again.json["detail"]  # type: ignore[index]


def test_gpus_are_limited_by_model_and_another_projects_holder_is_not_named(
        client: FlaskClient, region: Region, tmp_path: Path) -> None:
    admin = Api(client, region)
    admin.join_node("gpu-1", inv=server_inventory("gpu-server", tmp_path))
    member = _setup(admin, {"gpus": {"H100": 2}})
    assert _vm(member, "a", gpus=[{"model": "H100", "count": 2}]).status_code == 202
    refused = _vm(member, "b", gpus=[{"model": "H100"}])
    assert refused.status_code == 409
    assert refused.json["detail"] == (  # type: ignore[index]
        "quota gpus['H100'] of project 'shop' exceeded: limit 2 GPUs, 2 in use, 1 asked")
    assert member.get("/api/v1/projects/shop").json["usage"]["gpus"] == {"H100": 2}  # type: ignore[index]
    # the admin takes the other two in its project; the member is told they are taken,
    # not by which VM
    assert admin.post("/api/v1/instances", json={
        "name": "secret-training", "image": "tiny", "vcpus": 1, "memory_mib": 256,
        "gpus": [{"model": "H100", "count": 2}]}).status_code == 202
    assert admin.put("/api/v1/projects/shop/quotas", json={"gpus": {"H100": 4}}).status_code == 200
    full = _vm(member, "c", gpus=[{"model": "H100"}])
    assert full.status_code == 409, full.json
    assert "secret-training" not in full.json["detail"]  # type: ignore[index]
    assert "in use by a, 1 VM of other projects" in full.json["detail"]  # type: ignore[index]


def test_storage_and_volume_quotas_hold_at_creation_and_resize(rbd_region: Region) -> None:
    admin = Api(create_app(rbd_region).test_client(), rbd_region)
    node = admin.join_node("n1")
    member = _setup(admin, {"storage_gib": 5, "volumes": 2})
    assert member.post("/api/v1/volumes", json={"name": "v1", "size_gib": 3}).status_code == 202
    [made] = admin.desired(node)["volumes"]
    report(admin, node, [observed(made, 3)])  # made: it may grow now
    grow = member.post("/api/v1/volumes/v1/resize", json={"size_gib": 6})
    assert grow.status_code == 409 and grow.json["detail"] == (  # type: ignore[index]
        "quota storage_gib of project 'shop' exceeded: limit 5 GiB of storage (root disks "
        "and volumes), 3 in use, 3 asked")
    assert member.get("/api/v1/volumes/v1").json["size_gib"] == 3  # type: ignore[index]
    assert member.post("/api/v1/volumes", json={"name": "v2", "size_gib": 1}).status_code == 202
    third = member.post("/api/v1/volumes", json={"name": "v3", "size_gib": 1})
    assert third.status_code == 409 and "quota volumes" in third.json["detail"]  # type: ignore[index]


@pytest.mark.parametrize("region", ["postgresql"], indirect=True)
def test_concurrent_creates_never_pass_the_quota_together(client: FlaskClient,
                                                          region: Region) -> None:
    admin = Api(client, region)
    admin.join_node("n1", cpus=64, memory_mib=65536)
    member = _setup(admin, {"instances": 3})
    results: list[int] = []

    def one(i: int) -> None:
        results.append(_vm(member, f"vm-{i}").status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [202] * 3 + [409] * 5
    assert member.get("/api/v1/projects/shop").json["usage"]["instances"] == 3  # type: ignore[index]
