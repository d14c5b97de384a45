"""Networks, subnets and ports through the API, and what each node is told to carry."""

from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from controller.config import ControllerConfig
from controller.db.models import AuditEvent, Instance, Network, Port, PortAddress
from controller.region import Region
from controller.services import ipam
from tests.functional.helpers import RAW_IMAGE, Api

MAC = re.compile(r"^52:54:00(:[0-9a-f]{2}){3}$")


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    a = Api(client, region)
    assert a.import_image("tiny", RAW_IMAGE).status_code == 201
    return a


def _net(api: Api, name: str = "lan", kind: str = "tenant", **kw: Any) -> TestResponse:
    return api.post("/api/v1/networks", json={"name": name, "kind": kind, **kw})


def _lan(api: Api, name: str = "lan", cidr: str = "10.0.0.0/24", **subnet: Any) -> dict[str, Any]:
    r = _net(api, name, subnets=[{"cidr": cidr, **subnet}])
    assert r.status_code == 201, r.json
    return r.json  # type: ignore[return-value]


def _port(api: Api, network: str = "lan", *fixed: str) -> TestResponse:
    return api.post("/api/v1/ports", json={"network": network, "fixed_ips": list(fixed)})


def _vm(api: Api, name: str, *networks: str, node: str | None = None) -> TestResponse:
    body: dict[str, Any] = {"name": name, "image": "tiny", "vcpus": 1, "memory_mib": 256,
                            "networks": list(networks)}
    if node:
        body["node"] = node
    return api.post("/api/v1/instances", json=body)


def _count(region: Region, model: Any) -> int:
    with region.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


def _refused(r: TestResponse, status: int, *words: str) -> None:
    assert r.status_code == status, r.json
    assert r.mimetype == "application/problem+json"
    for w in words:
        assert w in r.json["detail"], r.json


def test_tenant_network_with_v4_and_v6_subnets(api: Api, region: Region) -> None:
    r = _net(api, "lan", subnets=[
        {"cidr": "10.0.0.0/24", "gateway": "10.0.0.1", "dns": ["10.0.0.1", "9.9.9.9"]},
        {"cidr": "fd00:1::/64", "gateway": "fd00:1::1"}])
    assert r.status_code == 201, r.json
    net = r.json
    assert net["kind"] == "tenant" and net["vni"] == 1000 and net["mtu"] == 1450
    assert net["vlan"] is None and net["physical"] is None and net["ports"] == 0
    assert [(s["cidr"], s["gateway"], s["dns"]) for s in net["subnets"]] == [
        ("10.0.0.0/24", "10.0.0.1", ["10.0.0.1", "9.9.9.9"]), ("fd00:1::/64", "fd00:1::1", [])]
    assert api.get("/api/v1/networks/lan").json == net
    assert api.get(f"/api/v1/networks/{net['id']}").json == net
    assert [n["name"] for n in api.get("/api/v1/networks").json] == ["lan"]
    with region.sessions() as db:
        ev = db.scalar(select(AuditEvent).where(AuditEvent.action == "network.create"))
        assert ev is not None and ev.detail["vni"] == 1000
    _refused(_net(api, "lan"), 409, "already exists")
    _refused(api.get("/api/v1/networks/nope"), 404, "nope")


def test_provider_network(api: Api) -> None:
    r = _net(api, "public", "provider", vlan=100, physical="bond0",
             subnets=[{"cidr": "192.0.2.0/24", "gateway": "192.0.2.1"}])
    assert r.status_code == 201, r.json
    assert (r.json["vlan"], r.json["physical"], r.json["vni"], r.json["mtu"]) == \
        (100, "bond0", None, 1500)
    _refused(_net(api, "public2", "provider", vlan=100, physical="bond0"), 409,
             "VLAN 100 on bond0", "public")
    assert _net(api, "public3", "provider", vlan=100, physical="eth1").status_code == 201
    assert _net(api, "jumbo", "provider", vlan=7, physical="eth1", mtu=9000).json["mtu"] == 9000


@pytest.mark.parametrize("body, words", [
    ({"kind": "provider", "vlan": 100}, ["vlan", "physical"]),
    ({"kind": "provider", "physical": "eth0"}, ["vlan", "physical"]),
    ({"kind": "tenant", "vlan": 100}, ["tenant", "provider"]),
    ({"kind": "tenant", "physical": "eth0"}, ["tenant", "provider"]),
    ({"kind": "provider", "vlan": 0, "physical": "eth0"}, ["vlan"]),
    ({"kind": "provider", "vlan": 4095, "physical": "eth0"}, ["vlan", "4094"]),
    ({"kind": "vlan"}, ["kind"]),
    ({"kind": "tenant", "mtu": 100}, ["mtu"]),
    ({"kind": "tenant", "subnets": [{"cidr": "10.0.0.0/33"}]}, ["10.0.0.0/33"]),
    ({"kind": "tenant", "subnets": [{"cidr": "10.0.0.1/24"}]}, ["host bits", "10.0.0.0/24"]),
    ({"kind": "tenant", "subnets": [{"cidr": "banana/24"}]}, ["banana"]),
    ({"kind": "tenant", "subnets": [{"cidr": "10.0.0.0"}]}, ["prefix length"]),
    ({"kind": "tenant", "subnets": [{"cidr": "10.0.0.0/31"}]}, ["too small"]),
    ({"kind": "tenant", "subnets": [{"cidr": "10.0.0.0/24", "gateway": "10.0.1.1"}]},
     ["gateway 10.0.1.1", "outside"]),
    ({"kind": "tenant", "subnets": [{"cidr": "10.0.0.0/24", "gateway": "10.0.0.0"}]},
     ["network address"]),
    ({"kind": "tenant", "subnets": [{"cidr": "10.0.0.0/24", "gateway": "10.0.0.255"}]},
     ["broadcast"]),
    ({"kind": "tenant", "subnets": [{"cidr": "10.0.0.0/24", "dns": ["dns.example"]}]},
     ["dns.example"]),
    ({"kind": "tenant", "subnets": [{"cidr": "10.0.0.0/16"}, {"cidr": "10.0.5.0/24"}]},
     ["10.0.5.0/24", "10.0.0.0/16", "overlaps"]),
    ({"kind": "tenant", "color": "blue"}, ["color", "unknown field"]),
])
def test_network_refusals_create_nothing(api: Api, region: Region, body: dict[str, Any],
                                         words: list[str]) -> None:
    _refused(api.post("/api/v1/networks", json={"name": "bad", **body}), 422, *words)
    assert _count(region, Network) == 0
    assert api.get("/api/v1/networks").json == []


def test_add_subnets(api: Api) -> None:
    _lan(api)
    r = api.post("/api/v1/networks/lan/subnets", json={"cidr": "10.0.0.128/25"})
    _refused(r, 422, "10.0.0.128/25", "10.0.0.0/24")
    r = api.post("/api/v1/networks/lan/subnets", json={"cidr": "fd00::/64", "gateway": "fd00::1",
                                                      "dns": ["fd00::53"]})
    assert r.status_code == 201, r.json
    assert [s["cidr"] for s in r.json["subnets"]] == ["10.0.0.0/24", "fd00::/64"]
    _refused(api.post("/api/v1/networks/lan/subnets", json={"cidr": "fd00::/48"}), 422,
             "fd00::/48", "fd00::/64")
    _refused(api.post("/api/v1/networks/lan/subnets", json={"cidr": "10.1.0.0/24",
                                                           "gateway": "10.2.0.1"}), 422,
             "outside")
    _refused(api.post("/api/v1/networks/nope/subnets", json={"cidr": "10.1.0.0/24"}), 404)
    # the same range on another network is fine: tenant networks are separate
    assert _lan(api, "other")["subnets"][0]["cidr"] == "10.0.0.0/24"


def test_vni_is_the_lowest_free_one(api: Api) -> None:
    assert [_lan(api, n)["vni"] for n in ("a", "b", "c")] == [1000, 1001, 1002]
    assert _net(api, "p", "provider", vlan=5, physical="eth0").json["vni"] is None
    assert api.delete("/api/v1/networks/b").status_code == 204
    assert _lan(api, "d")["vni"] == 1001
    assert _lan(api, "e")["vni"] == 1003


def test_vnis_come_from_the_regions_range_and_its_end_is_said(api: Api,
                                                                region: Region) -> None:
    region.config = dataclasses.replace(region.config, vni_first=70000, vni_last=70001)
    assert [_lan(api, n)["vni"] for n in ("a", "b")] == [70000, 70001]
    _refused(_net(api, "c"), 409, "70000-70001", "VAUBAN_VNI_LAST")
    assert _count(region, Network) == 2
    assert api.delete("/api/v1/networks/a").status_code == 204
    assert _lan(api, "c")["vni"] == 70000


@pytest.mark.parametrize("first,last", [(0, 10), (20, 10), (1, 2**24)])
def test_a_vni_range_outside_vxlans_is_refused(tmp_path: Path, first: int, last: int) -> None:
    with pytest.raises(ValueError, match="VNI range"):
        ControllerConfig(data_dir=tmp_path, vni_first=first, vni_last=last)


def test_ports_get_the_lowest_free_addresses(api: Api, region: Region) -> None:
    _lan(api, cidr="10.0.0.0/29", gateway="10.0.0.1")  # hosts .2-.6 (.1 is the gateway)
    api.post("/api/v1/networks/lan/subnets", json={"cidr": "fd00::/64"})
    first = _port(api)
    assert first.status_code == 201, first.json
    assert first.json["addresses"] == ["10.0.0.2", "fd00::1"]
    assert first.json["instance"] is None and MAC.match(first.json["mac"])
    assert _port(api).json["addresses"] == ["10.0.0.3", "fd00::2"]
    assert _port(api, "lan", "10.0.0.6", "fd00::99").json["addresses"] == ["10.0.0.6", "fd00::99"]
    _refused(_port(api, "lan", "10.0.0.6"), 409, "10.0.0.6", "taken")
    _refused(_port(api, "lan", "10.0.1.5"), 422, "10.0.1.5", "outside", "10.0.0.0/29")
    _refused(_port(api, "lan", "10.0.0.1"), 422, "gateway")
    _refused(_port(api, "lan", "10.0.0.0"), 422, "network address")
    _refused(_port(api, "lan", "10.0.0.7"), 422, "broadcast")
    _refused(_port(api, "lan", "10.0.0.4", "10.0.0.5"), 422, "two addresses")
    _refused(_port(api, "lan", "nonsense"), 422, "nonsense")
    _refused(_port(api, "nope"), 422, "nope")  # named in the body: invalid input
    assert _count(region, Port) == 3
    assert _port(api).json["addresses"][0] == "10.0.0.4"
    assert _port(api).json["addresses"][0] == "10.0.0.5"
    _refused(_port(api), 409, "no free address")
    # a deleted port's addresses are free again
    assert api.delete(f"/api/v1/ports/{first.json['id']}").status_code == 204
    assert _port(api).json["addresses"] == ["10.0.0.2", "fd00::1"]
    ports = api.get("/api/v1/ports").json
    assert len(ports) == 5 and len({p["mac"] for p in ports}) == 5
    assert all(MAC.match(p["mac"]) and p["network"] == "lan" for p in ports)
    assert api.get("/api/v1/networks/lan").json["ports"] == 5
    _refused(api.delete("/api/v1/ports/nope"), 404)
    with region.sessions() as db:
        actions = list(db.scalars(select(AuditEvent.action)))
    assert actions.count("port.create") == 6 and actions.count("port.delete") == 1


def test_network_with_ports_cannot_be_deleted(api: Api) -> None:
    _lan(api)
    port = _port(api).json
    _refused(api.delete("/api/v1/networks/lan"), 409, "lan", "port")
    assert api.delete(f"/api/v1/ports/{port['id']}").status_code == 204
    assert api.delete("/api/v1/networks/lan").status_code == 204
    _refused(api.get("/api/v1/networks/lan"), 404)


def test_concurrent_allocation_hands_out_each_address_once(api: Api, app: Flask,
                                                           region: Region) -> None:
    _lan(api, cidr="10.9.0.0/24", gateway="10.9.0.1")
    results: list[TestResponse] = []
    lock = threading.Lock()

    def worker() -> None:
        client = app.test_client()
        for _ in range(5):
            r = client.post("/api/v1/ports", json={"network": "lan"}, headers=api.headers)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [r.json for r in results if r.status_code != 201]
    assert refused == [] and len(results) == 40
    addresses = sorted(r.json["addresses"][0] for r in results)  # type: ignore[index]
    assert len(set(addresses)) == 40
    assert set(addresses) == {f"10.9.0.{n}" for n in range(2, 42)}
    assert len({r.json["mac"] for r in results}) == 40  # type: ignore[index]
    assert _count(region, PortAddress) == 40


def test_a_lost_race_for_an_address_picks_again(api: Api, region: Region,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _lan(api)
    assert _port(api).json["addresses"] == ["10.0.0.1"]
    real, calls = ipam.lowest_free, []

    def stale(*args: Any) -> str | None:  # as if it read before a concurrent commit
        calls.append(args)
        return "10.0.0.1" if len(calls) == 1 else real(*args)

    monkeypatch.setattr(ipam, "lowest_free", stale)
    r = _port(api)
    assert r.status_code == 201, r.json
    assert r.json["addresses"] == ["10.0.0.2"] and len(calls) == 2
    assert _count(region, Port) == 2 and _count(region, PortAddress) == 2


def test_vms_on_networks_and_what_nodes_carry(api: Api, region: Region) -> None:
    n1 = api.join_node("n1", underlay_ip="192.0.2.1")
    n2 = api.join_node("n2", underlay_ip="192.0.2.2")
    n3 = api.join_node("n3", underlay_ip="192.0.2.3")
    lan = _lan(api, gateway="10.0.0.1", dns=["10.0.0.53"])
    api.post("/api/v1/networks/lan/subnets", json={"cidr": "fd00::/64", "gateway": "fd00::1",
                                                  "dns": ["fd00::53", "10.0.0.53"]})
    pub = _net(api, "public", "provider", vlan=42, physical="bond0",
               subnets=[{"cidr": "192.0.2.0/24"}]).json
    assert _vm(api, "a", "lan", node="n1").status_code == 202
    gen1 = api.desired(n1)["generation"]
    assert _vm(api, "b", "lan:10.0.0.50", "public", node="n2").status_code == 202
    assert api.desired(n1)["generation"] > gen1  # its peer list changed
    assert _vm(api, "c", node="n3").status_code == 202

    d1 = api.desired(n1)
    [net] = d1["networks"]
    assert net == {"id": lan["id"], "name": "lan", "kind": "tenant", "mtu": 1450, "vlan": None,
                   "physical": None, "vni": 1000, "peers": ["192.0.2.2"]}
    [vm] = d1["vms"]
    [port] = vm["ports"]
    assert port["addresses"] == ["10.0.0.2/24", "fd00::2/64"]
    assert port["gateways"] == ["10.0.0.1", "fd00::1"]
    assert port["dns"] == ["10.0.0.53", "fd00::53"]
    assert port["mtu"] == 1450 and port["network_id"] == lan["id"] and MAC.match(port["mac"])

    d2 = api.desired(n2)
    assert [(n["name"], n["peers"]) for n in d2["networks"]] == [("lan", ["192.0.2.1"]),
                                                                ("public", [])]
    assert d2["networks"][1]["vlan"] == 42 and d2["networks"][1]["physical"] == "bond0"
    [vm_b] = d2["vms"]
    assert [(p["network_id"], p["addresses"]) for p in vm_b["ports"]] == [
        (lan["id"], ["10.0.0.50/24", "fd00::3/64"]), (pub["id"], ["192.0.2.1/24"])]
    assert vm_b["ports"][1]["gateways"] == [] and vm_b["ports"][1]["mtu"] == 1500
    d3 = api.desired(n3)
    assert d3["networks"] == [] and d3["vms"][0]["ports"] == []

    shown = api.get("/api/v1/instances/b").json
    assert [(p["network"], p["addresses"]) for p in shown["ports"]] == [
        ("lan", ["10.0.0.50", "fd00::3"]), ("public", ["192.0.2.1"])]
    assert shown["ports"][0]["mac"] == vm_b["ports"][0]["mac"]
    assert api.get("/api/v1/instances/c").json["ports"] == []
    listed = {p["instance"] for p in api.get("/api/v1/ports").json}
    assert listed == {"a", "b"}

    # a port of a VM goes with the VM, not on its own
    _refused(api.delete(f"/api/v1/ports/{vm_b['ports'][0]['id']}"), 409, "'b'")
    _refused(api.delete("/api/v1/networks/lan"), 409, "a, b")

    # deleting b: n1 loses its peer at once; the ports go when n2 confirms the VM is gone
    gen1 = api.desired(n1)["generation"]
    assert api.delete("/api/v1/instances/b").status_code == 202
    d1 = api.desired(n1)
    assert d1["generation"] > gen1 and d1["networks"][0]["peers"] == []
    assert api.desired(n2)["networks"] == []
    assert _count(region, Port) == 3
    api.report(n2, [], underlay_ip="192.0.2.2")
    assert _count(region, Port) == 1 and _count(region, PortAddress) == 2
    with region.sessions() as db:
        assert db.scalar(select(Instance).where(Instance.name == "b")) is None
    assert api.delete("/api/v1/networks/public").status_code == 204


def test_vm_create_refusals_create_nothing(api: Api, region: Region) -> None:
    n1 = api.join_node("n1")
    _lan(api, cidr="10.0.0.0/24", gateway="10.0.0.1")
    assert _vm(api, "a", "lan:10.0.0.9").status_code == 202
    gen = api.desired(n1)["generation"]
    cases = [
        (("nope",), 422, ["nope", "does not exist"]),
        (("lan", "nope:10.0.0.3"), 422, ["nope"]),
        (("lan:10.0.0.9",), 409, ["10.0.0.9", "taken"]),
        (("lan", "lan:10.0.0.9"), 409, ["10.0.0.9", "taken"]),
        (("lan:10.1.0.9",), 422, ["outside"]),
        (("lan:10.0.0.1",), 422, ["gateway"]),
        (("lan:",), 422, ["NETWORK:IP"]),
        (("lan:banana",), 422, ["banana"]),
    ]
    for nets, status, words in cases:
        _refused(_vm(api, "b", *nets), status, *words)
    assert _count(region, Instance) == 1 and _count(region, Port) == 1
    assert _count(region, PortAddress) == 1
    assert api.desired(n1)["generation"] == gen
    # two NICs on one network are fine
    r = _vm(api, "b", "lan", "lan:10.0.0.3")
    assert r.status_code == 202, r.json
    assert [p["addresses"] for p in api.get("/api/v1/instances/b").json["ports"]] == [
        ["10.0.0.2"], ["10.0.0.3"]]


def test_a_nic_configured_by_dhcp_is_told_to_its_node_and_shown(api: Api) -> None:
    n1 = api.join_node("n1")
    _lan(api, cidr="10.0.0.0/24", gateway="10.0.0.1")
    r = _vm(api, "a", "lan,dhcp", "lan:10.0.0.7,dhcp", "lan")
    assert r.status_code == 202, r.json
    ports = api.desired(n1)["vms"][0]["ports"]
    assert [(p["addresses"], p["dhcp"]) for p in ports] == [
        (["10.0.0.2/24"], True), (["10.0.0.7/24"], True), (["10.0.0.3/24"], False)]
    shown = api.get("/api/v1/instances/a").json["ports"]
    assert [(p["addresses"], p["dhcp"]) for p in shown] == [
        (["10.0.0.2"], True), (["10.0.0.7"], True), (["10.0.0.3"], False)]
    assert sorted((p["addresses"], p["dhcp"]) for p in api.get("/api/v1/ports").json) == [
        (["10.0.0.2"], True), (["10.0.0.3"], False), (["10.0.0.7"], True)]


def test_dhcp_is_refused_where_no_node_would_answer_it(api: Api, region: Region) -> None:
    api.join_node("n1")
    _lan(api, cidr="10.0.0.0/24")
    _net(api, "public", "provider", vlan=42, physical="bond0",
         subnets=[{"cidr": "192.0.2.0/24"}])
    _net(api, "v6", subnets=[{"cidr": "fd00::/64"}])
    cases = [
        ("public,dhcp", ["provider network", "datacenter's own DHCP"]),
        ("v6,dhcp", ["no IPv4 subnet"]),
        ("lan,DHCP", ["NETWORK:IP", ",dhcp"]),
        ("lan,dhcp,dhcp", [",dhcp"]),
        ("lan:10.0.0.5,static", [",dhcp"]),
    ]
    for ref, words in cases:
        _refused(_vm(api, "a", ref), 422, *words)
    assert _count(region, Instance) == 0 and _count(region, Port) == 0
