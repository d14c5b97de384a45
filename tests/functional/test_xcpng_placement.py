"""What the region places on an XCP-ng pool node, and what it refuses there with the reason:
a pool takes VMs only by name, while its agent reads it, that one host can hold, without
HA, GPUs, security groups (at creation or later), tenant networks, RBD volumes (attached or
looked after) or moves to or from KVM nodes."""

from __future__ import annotations

from typing import Any

import pytest

from agent.protocol import Inventory, ObservedVmState, XapiHost, XapiPoolInfo
from controller.app import create_app
from controller.region import Region
from tests.functional.helpers import RAW_IMAGE, Api, FakeNode, inventory, storage
from tests.functional.test_instances import _create, _observed

GiB_MIB = 1024


@pytest.fixture
def api(rbd_region: Region) -> Api:
    a = Api(create_app(rbd_region).test_client(), rbd_region)
    assert a.import_image("tiny", RAW_IMAGE).status_code == 201
    return a


def pool_inventory(reachable: bool = True, free_gib: tuple[int, ...] = (24, 12),
                   problem: str = "") -> Inventory:
    hosts = [XapiHost(uuid=f"host-{i}", name=f"xcp-{i}", address=f"10.9.0.{i + 1}",
                      enabled=True, live=True, master=i == 0, cpus=8,
                      memory_total_mib=32 * GiB_MIB, memory_free_mib=free * GiB_MIB)
             for i, free in enumerate(free_gib)]
    pool = XapiPoolInfo(uuid="pool-uuid", name="prod", reachable=reachable, problem=problem,
                        master_uuid="host-0", master_address="10.9.0.1", hosts=hosts,
                        largest_free_mib=max(h.memory_free_mib for h in hosts))
    cpus, memory = pool.capacity()
    base = inventory(cpus, memory)
    return base.model_copy(update={"hypervisor": "xapi", "storage": "xapi", "kvm_usable": False,
                                   "cpu_flags": [], "migration_features": [], "pool": pool})


def join_pool(api: Api, name: str = "pool", **kw: Any) -> FakeNode:
    return api.join_node(name, inv=pool_inventory(**kw), disk=storage("xapi"))


def detail(r: Any) -> str:
    assert r.content_type == "application/problem+json", r.json
    return str(r.json["detail"]) + str(r.json.get("reasons", ""))


def test_a_pool_takes_only_vms_placed_on_it_by_name(api: Api) -> None:
    join_pool(api)
    r = _create(api)
    assert r.status_code == 409 and "takes only VMs placed on it by name" in detail(r)
    assert _create(api, node="pool").status_code == 202
    assert api.get("/api/v1/instances/web-1").json["node_name"] == "pool"


@pytest.mark.parametrize("case", ["memory", "unreachable", "ha", "security-groups"])
def test_what_a_pool_cannot_give_is_refused_with_why(api: Api, case: str) -> None:
    join_pool(api, reachable=case != "unreachable", problem="pool prod: no host answers")
    extra: dict[str, Any] = {"node": "pool"}
    if case == "memory":  # 40 GiB fits the pool's sum, not one of its hosts
        extra["memory_mib"] = 30 * GiB_MIB
    elif case == "ha":
        extra["ha"] = True
    elif case == "security-groups":  # the project's default group: nothing filters it there
        assert api.post("/api/v1/networks", json={
            "name": "lan", "kind": "provider", "vlan": 10, "physical": "eth0",
            "xapi_network": "Pool-wide network"}).status_code == 201
        extra["networks"] = ["lan"]
    r = _create(api, **extra)
    assert r.status_code in (409, 422), r.json
    said = detail(r)
    assert {"memory": "at most 24576 MiB memory free, 30720 asked",
            "unreachable": "cannot reach now (pool prod: no host answers)",
            "ha": "pool's own HA applies",
            "security-groups": "filters no traffic"}[case] in said, said
    assert api.get("/api/v1/instances").json == []


def test_a_pool_vm_joins_only_provider_networks_mapped_to_a_pool_network(api: Api) -> None:
    join_pool(api)
    for body in ({"name": "lan", "kind": "provider", "vlan": 10, "physical": "eth0",
                  "xapi_network": "Pool-wide network"},
                 {"name": "bare", "kind": "provider", "vlan": 11, "physical": "eth0"},
                 {"name": "overlay", "kind": "tenant"}):
        assert api.post("/api/v1/networks", json=body).status_code == 201
    assert api.get("/api/v1/networks/lan").json["xapi_network"] == "Pool-wide network"
    for net in ("bare", "overlay"):
        r = _create(api, name=f"vm-{net}", node="pool", security_groups=[],
                    networks=[net])
        assert r.status_code == 409 and f"network {net} is not a provider network mapped" \
            in detail(r)
    r = _create(api, node="pool", security_groups=[], networks=["lan"])
    assert r.status_code == 202, r.json
    bad = api.post("/api/v1/networks", json={"name": "t2", "kind": "tenant",
                                             "xapi_network": "x"})
    assert bad.status_code == 422 and "provider networks only" in detail(bad)


def test_vms_do_not_move_between_kvm_nodes_and_pools_nor_get_volumes(api: Api) -> None:
    pool = join_pool(api)
    kvm = api.join_node("kvm")
    for name, node in (("on-pool", "pool"), ("on-kvm", "kvm")):
        assert _create(api, name=name, node=node).status_code == 202
    on_kvm = api.get("/api/v1/instances/on-kvm").json
    for node, kw in ((pool, {"inv": pool_inventory(), "disk": storage("xapi")}), (kvm, {})):
        d = api.desired(node)
        api.report(node, [_observed(vm, ObservedVmState.RUNNING) for vm in d["vms"]],
                   applied=d["generation"], **kw)
    for vm, to in (("on-pool", "kvm"), ("on-kvm", "pool")):
        r = api.post(f"/api/v1/instances/{vm}/migrate", json={"to": to})
        assert r.status_code == 409 and "XCP-ng pool" in detail(r), r.json
    r = api.put("/api/v1/instances/on-pool/ha", json={"enabled": True})
    assert r.status_code == 409 and "pool's own HA applies" in detail(r)
    assert api.post("/api/v1/volumes", json={"name": "data", "size_gib": 1}).status_code == 202
    r = api.post("/api/v1/volumes/data/attach", json={"instance": "on-pool"})
    assert r.status_code == 409 and "no supported Ceph RBD storage repository" in detail(r)
    assert on_kvm["node_name"] == "kvm"


def test_a_pool_vms_port_is_refused_security_groups_later_too(api: Api) -> None:
    join_pool(api)
    assert api.post("/api/v1/networks", json={
        "name": "lan", "kind": "provider", "vlan": 10, "physical": "eth0",
        "xapi_network": "Pool-wide network"}).status_code == 201
    assert _create(api, node="pool", security_groups=[], networks=["lan"]).status_code == 202
    (port,) = [p for p in api.get("/api/v1/ports").json if p["instance"] == "web-1"]
    r = api.client.put(f"/api/v1/ports/{port['id']}/security-groups", headers=api.headers,
                       json={"groups": ["default"]})
    assert r.status_code == 409 and "filters no traffic" in detail(r)
    assert api.get("/api/v1/instances/web-1").json["ports"][0]["security_groups"] == []
    r = api.client.put(f"/api/v1/ports/{port['id']}/security-groups", headers=api.headers,
                       json={"groups": []})
    assert r.status_code == 200, r.json  # none asked: nothing to refuse


def test_volumes_are_never_looked_after_by_a_pool(api: Api) -> None:
    join_pool(api)  # up, and looking after no volume: the pick were it not refused
    r = api.post("/api/v1/volumes", json={"name": "data", "size_gib": 1})
    assert r.status_code == 409 and "no node is up to look after the volume" in detail(r)
    api.join_node("kvm")
    assert api.post("/api/v1/volumes", json={"name": "data", "size_gib": 1}).status_code == 202
    assert api.get("/api/v1/volumes/data").json["steward"] == "kvm"
