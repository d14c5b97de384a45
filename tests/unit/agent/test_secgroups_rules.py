"""Rendering of security groups into the nftables JSON batch (no kernel needed)."""

from __future__ import annotations

import json

import pytest

from agent.drivers.network.secgroups import FirewallError, PortFilter, render
from agent.protocol import DesiredSecurityGroup, SecurityRule

MAC = "52:54:00:00:00:01"


def group(*rules: SecurityRule, members: tuple[str, ...] = ()) -> dict[str, DesiredSecurityGroup]:
    return {"g": DesiredSecurityGroup(id="g", name="g", rules=list(rules),
                                      member_addresses=list(members))}


def test_no_port_only_drops_our_tables() -> None:
    cmds = render([], group())["nftables"]
    assert [next(iter(c)) for c in cmds] == ["add", "delete", "add", "delete"]
    assert {c[next(iter(c))]["table"]["name"] for c in cmds} == {"vauban"}


def test_unfiltered_ports_are_only_guarded() -> None:
    cmds = render([PortFilter("vtp-2", "52:54:00:00:00:02", ("10.0.0.6/24", "fd00::6/64"), ()),
                   PortFilter("vtp-1", MAC, ("10.0.0.5/24",), ())], group())["nftables"]
    added = [c["add"] for c in cmds[4:]]
    assert all(a[next(iter(a))]["family"] == "bridge" for a in added)  # no inet table
    chains = [a["chain"]["name"] for a in added if "chain" in a]
    assert chains == ["ports", "guard1", "guard2"]
    [dispatch] = [a["rule"]["expr"] for a in added if "rule" in a and a["rule"]["chain"] == "ports"]
    assert dispatch[0]["vmap"]["data"]["set"] == [
        ["vtp-2", {"jump": {"target": "guard1"}}], ["vtp-1", {"jump": {"target": "guard2"}}]]
    guard1 = json.dumps([a["rule"]["expr"] for a in added
                         if "rule" in a and a["rule"]["chain"] == "guard1"])
    assert '"right": "52:54:00:00:00:02"' in guard1  # its MAC, as frame and ARP sender
    assert '{"set": ["10.0.0.6"]}' in guard1  # ARP sender addresses
    assert '{"set": ["10.0.0.6", "0.0.0.0"]}' in guard1  # IPv4 sources (DHCP's too)
    assert '{"set": ["fd00::6", "::", {"prefix": {"addr": "fe80::", "len": 10}}]}' in guard1
    for port in (67, 547):  # DHCP answers, v4 and v6
        assert f'"field": "sport"}}}}, "right": {port}}}' in guard1
    assert guard1.count('"drop": null') == 9


def test_rules_render_validated_values() -> None:
    rules = group(
        SecurityRule(direction="ingress", protocol="tcp", port_min=8000, port_max=8080,
                     remote_cidr="10.1.2.3/16"),
        SecurityRule(direction="ingress", remote_group="g"),
        SecurityRule(direction="egress", protocol="udp", port_min=53),
        members=("10.0.0.5/24", "fd00::5/64", "10.0.0.6"))
    text = json.dumps(render([PortFilter("vtp-1", MAC, ("10.0.0.5/24",), ("g",))], rules))
    assert '{"range": [8000, 8080]}' in text
    assert '"addr": "10.1.0.0", "len": 16' in text
    assert '"elem": ["10.0.0.5", "10.0.0.6"]' in text
    # ct established, ND, DHCP + the 2 ingress rules; the egress rule is not rendered
    assert text.count('"accept": null') == 5
    # the port's 9 guards (test_unfiltered_ports_are_only_guarded), invalid, default drop
    assert text.count('"drop": null') == 11


@pytest.mark.parametrize("bad", [
    PortFilter('vtp"; drop', MAC, (), ("g",)),
    PortFilter("vtp-1", MAC, ("10.0.0.300/24",), ("g",)),
])
def test_bad_ports_are_rejected(bad: PortFilter) -> None:
    with pytest.raises(FirewallError):
        render([bad], group())


@pytest.mark.parametrize("rule", [
    SecurityRule(direction="ingress", remote_cidr="10.0.0.0/8; flush ruleset"),
    SecurityRule(direction="ingress", remote_cidr="fd00::/8"),  # ipv6 cidr, ipv4 rule
    SecurityRule(direction="ingress", protocol="icmp", port_min=1),
    SecurityRule(direction="ingress", protocol="tcp", port_min=90, port_max=80),
])
def test_bad_rules_are_rejected(rule: SecurityRule) -> None:
    with pytest.raises(FirewallError):
        render([PortFilter("vtp-1", MAC, (), ("g",))], group(rule))


def test_unknown_or_empty_remote_group_matches_nobody() -> None:
    rules = group(SecurityRule(direction="ingress", remote_group="other"),
                  SecurityRule(direction="ingress", remote_group="g"))
    text = json.dumps(render([PortFilter("vtp-1", MAC, (), ("g", "missing"))], rules))
    assert '"set", ' not in text and "@g" not in text


def test_duplicate_taps_are_rejected() -> None:
    with pytest.raises(FirewallError):
        render([PortFilter("vtp-1", MAC, (), ("g",)),
                PortFilter("vtp-1", MAC, (), ("g",))], group())
