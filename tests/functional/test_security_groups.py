"""Security groups through the API: rules, ports' groups, and what each node is told."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from controller.cli.main import build_parser
from controller.db.models import AuditEvent
from controller.region import Region
from tests.functional.helpers import RAW_IMAGE, Api

SG = "/api/v1/security-groups"


@pytest.fixture
def api(client: FlaskClient, region: Region) -> Api:
    a = Api(client, region)
    assert a.import_image("tiny", RAW_IMAGE).status_code == 201
    r = a.post("/api/v1/networks", json={"name": "lan", "kind": "tenant", "subnets": [
        {"cidr": "10.0.0.0/24"}, {"cidr": "fd00:1::/64"}]})
    assert r.status_code == 201, r.json
    return a


def _group(api: Api, name: str, *rules: dict[str, Any], **kw: Any) -> TestResponse:
    return api.post(SG, json={"name": name, "rules": list(rules), **kw})


def _rule(api: Api, group: str, **rule: Any) -> TestResponse:
    return api.post(f"{SG}/{group}/rules", json=rule)


def _port(api: Api, groups: list[str] | None = None, *fixed: str) -> TestResponse:
    body: dict[str, Any] = {"network": "lan", "fixed_ips": list(fixed)}
    if groups is not None:
        body["security_groups"] = groups
    return api.post("/api/v1/ports", json=body)


def _vm(api: Api, name: str, node: str, groups: list[str] | None = None,
        net: str = "lan") -> TestResponse:
    body: dict[str, Any] = {"name": name, "image": "tiny", "vcpus": 1, "memory_mib": 256,
                            "networks": [net], "node": node}
    if groups is not None:
        body["security_groups"] = groups
    return api.post("/api/v1/instances", json=body)


def _put(api: Api, port_id: str, groups: list[str]) -> TestResponse:
    return api.client.put(f"/api/v1/ports/{port_id}/security-groups", headers=api.headers,
                          json={"groups": groups})


def _refused(r: TestResponse, status: int, *words: str) -> None:
    assert r.status_code == status, r.json
    assert r.mimetype == "application/problem+json"
    for w in words:
        assert w in r.json["detail"], r.json


def _actions(region: Region) -> list[str]:
    with region.sessions() as db:
        return list(db.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


def test_default_group_exists_from_start(api: Api) -> None:
    [g] = api.get(SG).json
    assert g["name"] == "default" and g["ports"] == 0
    rules = {(r["direction"], r["ethertype"], r["protocol"], r["remote_group_id"],
              r["remote_cidr"]) for r in g["rules"]}
    assert rules == {("ingress", "ipv4", "any", g["id"], None),
                     ("ingress", "ipv6", "any", g["id"], None),
                     ("egress", "ipv4", "any", None, None),
                     ("egress", "ipv6", "any", None, None)}
    assert api.get(f"{SG}/default").json == g == api.get(f"{SG}/{g['id']}").json
    _refused(api.delete(f"{SG}/default"), 409, "default")


def test_create_show_delete_with_rules(api: Api, region: Region) -> None:
    r = _group(api, "web", {"direction": "ingress", "protocol": "tcp", "port_min": 80},
               {"direction": "ingress", "protocol": "tcp", "port_min": 8080, "port_max": 8090,
                "remote_cidr": "192.0.2.0/24"},
               {"direction": "ingress", "ethertype": "ipv6", "protocol": "icmp",
                "remote_group": "default"},
               description="front ends")
    assert r.status_code == 201, r.json
    g = r.json
    assert g["description"] == "front ends" and g["ports"] == 0
    assert [(x["protocol"], x["port_min"], x["port_max"], x["remote_cidr"], x["remote_group"])
            for x in g["rules"]] == [("tcp", 80, 80, None, None),
                                     ("tcp", 8080, 8090, "192.0.2.0/24", None),
                                     ("icmp", None, None, None, "default")]
    assert [x["name"] for x in api.get(SG).json] == ["default", "web"]
    _refused(_group(api, "web"), 409, "already exists")
    _refused(api.get(f"{SG}/nope"), 404, "nope")
    r = _rule(api, "web", direction="egress", protocol="udp", port_min=53,
              remote_cidr="10.0.0.0/8")
    assert r.status_code == 201, r.json
    rule_id = r.json["rules"][-1]["id"]
    assert api.delete(f"{SG}/web/rules/{rule_id}").status_code == 204
    assert len(api.get(f"{SG}/web").json["rules"]) == 3
    _refused(api.delete(f"{SG}/web/rules/{rule_id}"), 404, rule_id)
    assert api.delete(f"{SG}/web").status_code == 204
    _refused(api.get(f"{SG}/web"), 404)
    assert [a for a in _actions(region) if a.startswith("security-group")] == [
        "security-group.create", "security-group.create", "security-group.rule-add",
        "security-group.rule-delete", "security-group.delete"]


@pytest.mark.parametrize("rule, words", [
    ({"direction": "ingress", "protocol": "icmp", "port_min": 1}, ["tcp and udp", "icmp"]),
    ({"direction": "ingress", "port_min": 22}, ["tcp and udp", "any"]),
    ({"direction": "ingress", "protocol": "tcp", "port_max": 22}, ["port_max needs port_min"]),
    ({"direction": "ingress", "protocol": "tcp", "port_min": 90, "port_max": 80},
     ["port_min 90", "port_max 80"]),
    ({"direction": "ingress", "protocol": "tcp", "port_min": 0}, ["port_min"]),
    ({"direction": "ingress", "protocol": "tcp", "port_min": 70000}, ["port_min"]),
    ({"direction": "ingress", "remote_cidr": "banana"}, ["banana"]),
    ({"direction": "ingress", "remote_cidr": "10.0.0.1/24"}, ["host bits", "10.0.0.0/24"]),
    ({"direction": "ingress", "remote_cidr": "fd00::/64"}, ["IPv6", "ipv4"]),
    ({"direction": "ingress", "ethertype": "ipv6", "remote_cidr": "0.0.0.0/0"},
     ["IPv4", "ipv6"]),
    ({"direction": "ingress", "remote_cidr": "0.0.0.0/0", "remote_group": "default"},
     ["not both"]),
    ({"direction": "ingress", "remote_group": "ghost"}, ["remote group 'ghost'"]),
    ({"direction": "sideways"}, ["direction"]),
    ({"direction": "ingress", "protocol": "sctp"}, ["protocol"]),
    ({"direction": "ingress", "ethertype": "ipx"}, ["ethertype"]),
    ({"direction": "ingress", "color": "blue"}, ["color"]),
])
def test_invalid_rules_refused(api: Api, region: Region, rule: dict[str, Any],
                               words: list[str]) -> None:
    assert _group(api, "web").status_code == 201
    _refused(_rule(api, "web", **rule), 422, *words)
    _refused(_group(api, "web2", rule), 422, *words)
    assert [g["name"] for g in api.get(SG).json] == ["default", "web"]
    assert api.get(f"{SG}/web").json["rules"] == []


def test_duplicate_rule_refused(api: Api) -> None:
    rule = {"direction": "ingress", "protocol": "tcp", "port_min": 22,
            "remote_cidr": "10.0.0.0/8"}
    assert _group(api, "ssh", rule).status_code == 201
    _refused(_rule(api, "ssh", **rule), 409, "already has this rule")
    _refused(_rule(api, "ssh", **rule, port_max=22), 409, "already has this rule")
    _refused(_group(api, "ssh2", rule, rule), 409, "already has this rule")
    assert _rule(api, "ssh", **{**rule, "port_max": 23}).status_code == 201


def test_ports_get_default_or_given_groups(api: Api) -> None:
    assert _group(api, "web").status_code == 201
    p = _port(api)
    assert p.status_code == 201, p.json
    assert p.json["security_groups"] == ["default"]
    p2 = _port(api, ["web", "default", "web"])
    assert p2.json["security_groups"] == ["default", "web"]
    assert _port(api, []).json["security_groups"] == []
    _refused(_port(api, ["ghost"]), 422, "security group 'ghost'")
    assert len(api.get("/api/v1/ports").json) == 3
    r = _put(api, p.json["id"], ["web"])
    assert r.status_code == 200, r.json
    assert r.json["security_groups"] == ["web"]
    _refused(_put(api, p.json["id"], ["ghost"]), 422, "ghost")
    _refused(_put(api, "nope", []), 404)
    assert api.get(f"{SG}/web").json["ports"] == 2


def test_delete_group_in_use_refused(api: Api) -> None:
    assert _group(api, "db").status_code == 201
    assert _group(api, "app", {"direction": "egress", "remote_group": "db"}).status_code == 201
    port = _port(api, ["db"]).json
    _refused(api.delete(f"{SG}/db"), 409, port["id"], "'app'")
    assert _put(api, port["id"], []).status_code == 200
    _refused(api.delete(f"{SG}/db"), 409, "'app'")
    assert api.delete(f"{SG}/app").status_code == 204
    assert api.delete(f"{SG}/db").status_code == 204


def test_vm_ports_and_desired_state(api: Api, region: Region) -> None:
    n1 = api.join_node("n1")
    n2 = api.join_node("n2")
    n3 = api.join_node("n3")
    assert _group(api, "db", {"direction": "ingress", "protocol": "tcp", "port_min": 5432,
                              "remote_group": "web"}).status_code == 422
    assert _group(api, "web", {"direction": "ingress", "protocol": "tcp",
                               "port_min": 443}).status_code == 201
    assert _group(api, "db", {"direction": "ingress", "protocol": "tcp", "port_min": 5432,
                              "remote_group": "web"}).status_code == 201
    _refused(_vm(api, "x", "n1", ["ghost"]), 422, "ghost")
    assert _vm(api, "w1", "n1", ["web"]).status_code == 202
    assert _vm(api, "d1", "n2", ["db"]).status_code == 202
    assert _vm(api, "o1", "n3").status_code == 202  # default group
    vm = api.get("/api/v1/instances/o1").json
    assert vm["ports"][0]["addresses"]
    ports = {p["instance"]: p for p in api.get("/api/v1/ports").json}
    assert ports["o1"]["security_groups"] == ["default"]
    groups = {g["name"]: g for g in api.get(SG).json}
    web, db = groups["web"], groups["db"]

    d2 = api.desired(n2)
    [port] = d2["vms"][0]["ports"]
    assert port["security_groups"] == [db["id"]]
    sgs = {g["name"]: g for g in d2["security_groups"]}
    assert set(sgs) == {"db", "web"}  # its own, and the one its rule names
    assert sgs["db"]["rules"] == [{"direction": "ingress", "ethertype": "ipv4",
                                   "protocol": "tcp", "port_min": 5432, "port_max": 5432,
                                   "remote_cidr": None, "remote_group": web["id"]}]
    assert sgs["web"]["member_addresses"] == ports["w1"]["addresses"]
    assert sgs["db"]["member_addresses"] == ports["d1"]["addresses"]
    assert all("/" not in a for a in sgs["web"]["member_addresses"])
    d1 = api.desired(n1)
    assert [g["name"] for g in d1["security_groups"]] == ["web"]
    d3 = api.desired(n3)
    [dflt] = d3["security_groups"]
    assert dflt["name"] == "default" and dflt["member_addresses"] == ports["o1"]["addresses"]
    assert {r["remote_group"] for r in dflt["rules"]} == {dflt["id"], None}

    # a rule change reaches the nodes shown the group: n1 (ports in web), n2 (db names web)
    gens = {n.name: api.desired(n)["generation"] for n in (n1, n2, n3)}
    r = _rule(api, "web", direction="ingress", protocol="udp", port_min=53)
    assert r.status_code == 201
    now = {n.name: api.desired(n)["generation"] for n in (n1, n2, n3)}
    assert now["n1"] > gens["n1"] and now["n2"] > gens["n2"] and now["n3"] == gens["n3"]
    assert len({g["name"]: g for g in api.desired(n1)["security_groups"]}["web"]["rules"]) == 2
    gens = now
    assert api.delete(f"{SG}/web/rules/{r.json['rules'][-1]['id']}").status_code == 204
    now = {n.name: api.desired(n)["generation"] for n in (n1, n2, n3)}
    assert now["n1"] > gens["n1"] and now["n2"] > gens["n2"] and now["n3"] == gens["n3"]

    # a new member of web: n2 learns its address (db's rule names web), n3 does not
    gens = now
    assert _vm(api, "w2", "n3", ["web"]).status_code == 202
    now = {n.name: api.desired(n)["generation"] for n in (n1, n2, n3)}
    assert now["n1"] > gens["n1"] and now["n2"] > gens["n2"] and now["n3"] > gens["n3"]
    w2 = next(p for p in api.get("/api/v1/ports").json if p["instance"] == "w2")
    web_now = {g["name"]: g for g in api.desired(n2)["security_groups"]}["web"]
    assert set(w2["addresses"]) <= set(web_now["member_addresses"])

    # a port moved out of db: the node of db's members re-applies
    gens = now
    assert _put(api, ports["d1"]["id"], ["default"]).status_code == 200
    now = {n.name: api.desired(n)["generation"] for n in (n1, n2, n3)}
    assert now["n2"] > gens["n2"] and now["n3"] > gens["n3"]
    assert [g["name"] for g in api.desired(n2)["security_groups"]] == ["default"]
    assert "port.security-groups" in _actions(region)


def test_vm_with_groups_but_no_network_refused(api: Api) -> None:
    api.join_node("n1")
    body = {"name": "x", "image": "tiny", "vcpus": 1, "memory_mib": 256,
            "security_groups": ["default"]}
    _refused(api.post("/api/v1/instances", json=body), 422, "networks")


def test_cli_parses_security_group_commands() -> None:
    p = build_parser()
    a = p.parse_args(["security-group", "rule", "add", "web", "--direction", "ingress",
                      "--protocol", "tcp", "--port", "8080-8090", "--remote-cidr", "10.0.0.0/8"])
    assert (a.group, a.port, a.remote_cidr, a.ethertype) == ("web", "8080-8090", "10.0.0.0/8",
                                                              "ipv4")
    a = p.parse_args(["vm", "create", "v", "--image", "i", "--cpus", "1", "--memory", "64",
                      "--network", "lan", "--security-group", "web",
                      "--security-group", "db"])
    assert a.security_group == ["web", "db"]
    with pytest.raises(SystemExit):
        p.parse_args(["security-group", "rule", "add", "web", "--direction", "ingress",
                      "--remote-cidr", "10.0.0.0/8", "--remote-group", "db"])
