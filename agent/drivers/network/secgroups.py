"""Stateful security groups on VM ports, applied with nftables (libnftables' JSON API).

How bridged VM traffic is filtered (measured on the project's kernels, see the report
in tests/integration/test_security_groups.py):

- The `bridge` family sees every frame forwarded between bridge ports and can match
  the outgoing port (`oifname`, the VM's tap), but its `ct` expression needs
  `nf_conntrack_bridge`, which these kernels lack ("Protocol error").
- The `inet` family sees bridged IPv4/IPv6 through br_netfilter
  (`net.bridge.bridge-nf-call-iptables` / `-ip6tables` = 1, per network namespace) with
  conntrack, but there the in/out device is the *bridge*, not the port.

So the two are combined, in ONE transaction: `table bridge vauban` (forward hook,
priority -200) writes the index of the destination port into bits `MARK_MASK` of the
packet mark (other bits are kept); `table inet vauban` (forward hook, priority 0) sends
packets carrying such an index to that port's chain: established/related accepted,
invalid dropped, then the port's groups' ingress rules, then drop. Egress from a port
is not filtered (egress rules are accepted and ignored). Ports with no group are
not filtered. Traffic the host itself sends to a VM (bridge OUTPUT) is not filtered.

Every port of the node's VMs, filtered or not, is also guarded in `table bridge vauban`
(one verdict-map lookup by incoming tap, then that port's own chain): frames from
another MAC, ARP or IP from an address that is not the port's, and DHCP answers (the
node answers its ports' DHCP itself, agent/dhcp) are dropped. See `_guard_rules`.

Every name in the ruleset is generated (indexes), never taken from the input;
addresses go through `ipaddress`, ports through ints, tap names through a strict
pattern, before they are rendered. Only the two `vauban` tables are ever touched.

When the ruleset cannot be applied, `isolate` replaces it with a `bridge`-only table
that drops every frame to or from the filtered ports (fail closed: it needs no
br_netfilter).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.drivers.network.netns import in_netns
from agent.errors import DriverError
from agent.protocol import DesiredSecurityGroup, SecurityRule

log = logging.getLogger(__name__)

TABLE = "vauban"
MARK_SHIFT = 16
MARK_MASK = 0x0FFF0000  # the bits of the packet mark this firewall owns
MAX_PORTS = MARK_MASK >> MARK_SHIFT  # port indexes 1..4095
BRIDGE_PRIORITY = -200  # before br_netfilter hands the packet to the inet hooks
INET_PRIORITY = 0
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_BR_NF_SYSCTLS = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables")
# IPv6 neighbour discovery / router adverts and DHCP replies always reach a filtered
# port, like any other cloud's default (the port would be unusable without them).
_ICMPV6_ALWAYS = ["nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-advert",
                  "mld-listener-query"]

Json = dict[str, Any]


class FirewallError(DriverError):
    """The firewall could not be applied (bad input, kernel support, nft failure)."""


@dataclass(frozen=True)
class PortFilter:
    """One VM port to guard (and filter, if it has groups): its host-side tap, the guest
    NIC's MAC, its addresses (CIDR or bare), its groups."""

    tap: str
    mac: str
    addresses: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


# --- rendering (pure) ------------------------------------------------------------------


def _family(ethertype: str) -> int:
    if ethertype == "ipv4":
        return 4
    if ethertype == "ipv6":
        return 6
    raise FirewallError(f"unknown ethertype {ethertype!r}")


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _mark_of(index: int) -> int:
    return index << MARK_SHIFT


def _port_range(rule: SecurityRule) -> tuple[int, int] | None:
    lo, hi = rule.port_min, rule.port_max
    if lo is None and hi is None:
        return None
    low = int(lo) if lo is not None else 1
    high = int(hi) if hi is not None else low if lo is not None else 65535
    if not (1 <= low <= high <= 65535):
        raise FirewallError(f"bad port range {lo}..{hi}")
    return low, high


class _Renderer:
    def __init__(self, groups: dict[str, DesiredSecurityGroup]) -> None:
        self.groups = groups
        self.sets: dict[tuple[str, int], str] = {}  # (group id, ip version) -> set name
        self.set_elements: dict[str, list[str]] = {}

    def member_set(self, group_id: str, version: int) -> str | None:
        """The name of the set of `group_id`'s member addresses of one IP version."""
        key = (group_id, version)
        if key in self.sets:
            return self.sets[key]
        group = self.groups.get(group_id)
        if group is None:
            log.warning("security group %s is referenced but unknown: matches nobody",
                        group_id)
            return None
        members: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        for text in group.member_addresses:
            try:
                addr = ipaddress.ip_interface(text).ip
            except ValueError as exc:
                raise FirewallError(f"group {group_id}: bad member address {text!r}") from exc
            if addr.version == version:
                members.add(addr)
        if not members:
            return None
        name = f"g{len(self.sets)}v{version}"
        self.sets[key] = name
        self.set_elements[name] = [str(a) for a in sorted(members)]
        return name

    def rule_exprs(self, rule: SecurityRule) -> list[Json] | None:
        """The match expressions of one ingress rule, or None if it can match nothing."""
        version = _family(rule.ethertype)
        proto_field = "ip" if version == 4 else "ip6"
        exprs: list[Json] = [_match(_meta("nfproto"), "ipv4" if version == 4 else "ipv6")]
        if rule.remote_cidr is not None:
            try:
                net = ipaddress.ip_network(rule.remote_cidr, strict=False)
            except ValueError as exc:
                raise FirewallError(f"bad remote_cidr {rule.remote_cidr!r}") from exc
            if net.version != version:
                raise FirewallError(f"remote_cidr {net} is not {rule.ethertype}")
            if net.prefixlen:
                exprs.append(_match({"payload": {"protocol": proto_field, "field": "saddr"}},
                                    {"prefix": {"addr": str(net.network_address),
                                                "len": int(net.prefixlen)}}))
        if rule.remote_group is not None:
            name = self.member_set(rule.remote_group, version)
            if name is None:
                return None
            exprs.append(_match({"payload": {"protocol": proto_field, "field": "saddr"}},
                                f"@{name}"))
        ports = _port_range(rule)
        if rule.protocol in ("tcp", "udp"):
            exprs.append(_match(_meta("l4proto"), rule.protocol))
            if ports is not None:
                right: Any = ports[0] if ports[0] == ports[1] else {"range": list(ports)}
                exprs.append(_match({"payload": {"protocol": "th", "field": "dport"}}, right))
        elif ports is not None:
            raise FirewallError(f"ports given for protocol {rule.protocol}")
        elif rule.protocol == "icmp":
            exprs.append(_match(_meta("l4proto"), "icmp" if version == 4 else "ipv6-icmp"))
        elif rule.protocol != "any":
            raise FirewallError(f"unknown protocol {rule.protocol!r}")
        return exprs


def _validate_port(port: PortFilter) -> None:
    if not _IFNAME.match(port.tap):
        raise FirewallError(f"bad tap name {port.tap!r}")
    if not _MAC.match(port.mac):
        raise FirewallError(f"port {port.tap}: bad MAC {port.mac!r}")
    for text in port.addresses:
        try:
            ipaddress.ip_interface(text)
        except ValueError as exc:
            raise FirewallError(f"port {port.tap}: bad address {text!r}") from exc


def _replace_tables() -> list[Json]:
    """Commands that drop our tables whether or not they exist (add, then delete)."""
    cmds: list[Json] = []
    for family in ("bridge", "inet"):
        cmds.append({"add": {"table": {"family": family, "name": TABLE}}})
        cmds.append({"delete": {"table": {"family": family, "name": TABLE}}})
    return cmds


_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
# sources a port may use besides its own addresses: DHCP's "no address yet" (IPv4, only
# to a DHCP server), IPv6's unspecified address (duplicate address detection) and
# link-local range (its own link-local address, whichever way the guest derives it)
_LINK_LOCAL_V6 = {"prefix": {"addr": "fe80::", "len": 10}}


def _ether(kind: str) -> Json:
    return _match({"payload": {"protocol": "ether", "field": "type"}}, kind)


def _field(protocol: str, name: str) -> Json:
    return {"payload": {"protocol": protocol, "field": name}}


def _guard_rules(port: PortFilter) -> list[list[Json]]:
    """What a port may not send, whether or not security groups filter it: frames from
    another MAC, ARP or IP from an address not its own (anti-spoofing), and DHCP answers
    (v4 and v6): its node answers its ports' DHCP at their taps (agent/dhcp), so a guest
    that answers too could only mislead its neighbours."""
    addresses = [ipaddress.ip_interface(a).ip for a in port.addresses]
    own4 = sorted(str(a) for a in addresses if a.version == 4)
    own6: list[Any] = sorted(str(a) for a in addresses if a.version == 6)
    drop = {"drop": None}
    rules: list[list[Json]] = [
        [_match(_field("ether", "saddr"), port.mac, "!="), drop],
        [_ether("arp"), _match(_field("arp", "saddr ether"), port.mac, "!="), drop],
        [_ether("ip"), _match(_field("ip", "protocol"), "udp"),
         _match(_field("udp", "sport"), 67), drop],
        [_ether("ip6"), _match(_field("ip6", "nexthdr"), "udp"),
         _match(_field("udp", "sport"), 547), drop],
        [_ether("ip6"), _match(_field("ip6", "saddr"), {"set": [*own6, "::", _LINK_LOCAL_V6]},
                               "!="), drop],
        # no address yet: only a DHCP request may go out
        [_ether("ip"), _match(_field("ip", "saddr"), "0.0.0.0"),
         _match(_field("ip", "protocol"), "udp", "!="), drop],
        [_ether("ip"), _match(_field("ip", "saddr"), "0.0.0.0"),
         _match(_field("udp", "dport"), 67, "!="), drop],
    ]
    if own4:
        rules += [
            [_ether("arp"), _match(_field("arp", "saddr ip"), {"set": own4}, "!="), drop],
            [_ether("ip"), _match(_field("ip", "saddr"), {"set": [*own4, "0.0.0.0"]}, "!="),
             drop],
        ]
    else:  # no IPv4 address: no ARP, and IPv4 only for DHCP (above)
        rules += [[_ether("arp"), drop],
                  [_ether("ip"), _match(_field("ip", "saddr"), "0.0.0.0", "!="), drop]]
    return rules


def render(ports: Iterable[PortFilter], groups: dict[str, DesiredSecurityGroup]) -> Json:
    """The whole JSON batch that atomically replaces our tables with this ruleset: every
    port guarded (`_guard_rules`), those with groups filtered by them."""
    ports = list(ports)
    for port in ports:
        _validate_port(port)
    taps = [p.tap for p in ports]
    if len(set(taps)) != len(taps):
        raise FirewallError("a tap is listed twice")
    filtered = [p for p in ports if p.groups]
    if len(filtered) > MAX_PORTS:
        raise FirewallError(f"more than {MAX_PORTS} filtered ports")
    cmds = _replace_tables()
    if not ports:
        return {"nftables": cmds}

    br: list[Json] = [{"add": {"table": {"family": "bridge", "name": TABLE}}},
                      {"add": {"chain": {"family": "bridge", "table": TABLE, "name": "ports",
                                         "type": "filter", "hook": "forward",
                                         "prio": BRIDGE_PRIORITY, "policy": "accept"}}}]
    # one lookup sends a frame to the guard chain of the port it came from
    guards: list[Json] = []
    for index, port in enumerate(ports, start=1):
        guards.append({"add": {"chain": {"family": "bridge", "table": TABLE,
                                         "name": f"guard{index}"}}})
        for guard in _guard_rules(port):
            guards.append({"add": {"rule": {"family": "bridge", "table": TABLE,
                                            "chain": f"guard{index}", "expr": guard}}})
    br[2:2] = guards
    br.append({"add": {"rule": {"family": "bridge", "table": TABLE, "chain": "ports", "expr": [
        {"vmap": {"key": _meta("iifname"),
                  "data": {"set": [[p.tap, {"jump": {"target": f"guard{i}"}}]
                                   for i, p in enumerate(ports, start=1)]}}}]}}})
    if not filtered:
        return {"nftables": cmds + br}

    r = _Renderer(groups)
    inet: list[Json] = [{"add": {"table": {"family": "inet", "name": TABLE}}},
                        {"add": {"chain": {"family": "inet", "table": TABLE, "name": "ports",
                                           "type": "filter", "hook": "forward",
                                           "prio": INET_PRIORITY, "policy": "accept"}}}]
    mark = _meta("mark")

    def br_rule(*expr: Json) -> None:
        br.append({"add": {"rule": {"family": "bridge", "table": TABLE, "chain": "ports",
                                    "expr": list(expr)}}})

    def inet_rule(chain: str, *expr: Json) -> None:
        inet.append({"add": {"rule": {"family": "inet", "table": TABLE, "chain": chain,
                                      "expr": list(expr)}}})

    # Our mark bits are cleared on every bridged frame, then set for filtered taps.
    br_rule({"mangle": {"key": mark, "value": {"&": [mark, 0xFFFFFFFF ^ MARK_MASK]}}})
    port_chains: list[tuple[str, list[list[Json]]]] = []
    for index, port in enumerate(filtered, start=1):
        br_rule(_match(_meta("oifname"), port.tap),
                {"mangle": {"key": mark,
                            "value": {"|": [{"&": [mark, 0xFFFFFFFF ^ MARK_MASK]},
                                            _mark_of(index)]}}})
        chain = f"port{index}"
        allows: list[list[Json]] = []
        seen: set[str] = set()
        for group_id in port.groups:
            if group_id in seen:
                continue
            seen.add(group_id)
            group = groups.get(group_id)
            if group is None:
                log.warning("port %s: unknown security group %s (no rules)", port.tap, group_id)
                continue
            for rule in group.rules:
                if rule.direction != "ingress":
                    continue  # egress is allowed by default
                exprs = r.rule_exprs(rule)
                if exprs is not None:
                    allows.append(exprs)
        port_chains.append((chain, allows))

    for name, elements in r.set_elements.items():
        version = 4 if name.endswith("v4") else 6
        inet.append({"add": {"set": {"family": "inet", "table": TABLE, "name": name,
                                     "type": "ipv4_addr" if version == 4 else "ipv6_addr",
                                     "elem": elements}}})
    for chain, allows in port_chains:
        inet.append({"add": {"chain": {"family": "inet", "table": TABLE, "name": chain}}})
        inet_rule(chain, _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                  {"accept": None})
        inet_rule(chain, _match({"ct": {"key": "state"}}, "invalid", "in"), {"drop": None})
        inet_rule(chain, _match({"payload": {"protocol": "icmpv6", "field": "type"}},
                                {"set": list(_ICMPV6_ALWAYS)}), {"accept": None})
        inet_rule(chain, _match(_meta("nfproto"), "ipv4"), _match(_meta("l4proto"), "udp"),
                  _match({"payload": {"protocol": "udp", "field": "sport"}}, 67),
                  _match({"payload": {"protocol": "udp", "field": "dport"}}, 68),
                  {"accept": None})
        for exprs in allows:
            inet_rule(chain, *exprs, {"accept": None})
        inet_rule(chain, {"drop": None})
    # The dispatch rules last: a jump needs its chain to exist already.
    for index, (chain, _allows) in enumerate(port_chains, start=1):
        inet_rule("ports", _match({"&": [mark, MARK_MASK]}, _mark_of(index)),
                  {"jump": {"target": chain}})
    return {"nftables": cmds + br + inet}


# --- applying ----------------------------------------------------------------------------


class SecurityGroupFirewall:
    """Applies security groups in the node's network namespace (or in `netns`, for tests)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _nft(self) -> Any:
        try:
            import nftables  # Debian's python3-nftables (libnftables)
        except ImportError as exc:
            raise FirewallError("python3-nftables (libnftables) is not installed") from exc
        with in_netns(self.netns):  # the netlink socket is bound to the namespace it opens in
            nft = nftables.Nftables()
        nft.set_json_output(True)
        return nft

    def bridge_netfilter_enabled(self) -> bool:
        """Whether bridged IPv4/IPv6 reaches the inet hooks (br_netfilter) here."""
        with in_netns(self.netns):
            for name in _BR_NF_SYSCTLS:
                try:
                    if Path("/proc/sys/net/bridge", name).read_text().strip() != "1":
                        return False
                except OSError:
                    return False
        return True

    def _run(self, batch: Json) -> None:
        rc, _out, err = self._nft().json_cmd(batch)
        if rc != 0:
            raise FirewallError(f"nft (netns {self.netns}): {str(err).strip()}")

    def apply(self, ports: list[PortFilter], groups: dict[str, DesiredSecurityGroup]) -> None:
        """Replace our ruleset, atomically, with one guarding `ports` and filtering those
        with groups.

        On failure the previous ruleset stays in place and FirewallError is raised.
        """
        batch = render(ports, groups)
        if any(p.groups for p in ports) and not self.bridge_netfilter_enabled():
            raise FirewallError(
                "bridged traffic does not reach nftables' inet hooks: load br_netfilter and "
                "set net.bridge.bridge-nf-call-iptables=1 and bridge-nf-call-ip6tables=1")
        self._run(batch)

    def isolate(self, taps: list[str]) -> None:
        """Replace our ruleset, atomically, with one that drops every frame to or from
        `taps`: what holds while their security groups cannot be applied.

        It needs only the bridge family (not br_netfilter). On failure the previous
        ruleset stays in place and FirewallError is raised.
        """
        for tap in taps:
            if not _IFNAME.match(tap):
                raise FirewallError(f"bad tap name {tap!r}")
        cmds = [*_replace_tables(), {"add": {"table": {"family": "bridge", "name": TABLE}}}]
        for hook in ("forward", "input", "output"):  # other ports, and the host itself
            cmds.append({"add": {"chain": {"family": "bridge", "table": TABLE, "name": hook,
                                           "type": "filter", "hook": hook,
                                           "prio": BRIDGE_PRIORITY, "policy": "accept"}}})
            for tap in sorted(set(taps)):
                for key in ("iifname", "oifname"):
                    cmds.append({"add": {"rule": {"family": "bridge", "table": TABLE,
                                                  "chain": hook,
                                                  "expr": [_match(_meta(key), tap),
                                                           {"drop": None}]}}})
        self._run({"nftables": cmds})

    def remove(self) -> None:
        """Delete our tables (nothing is filtered any more). A no-op if they are absent."""
        self._run({"nftables": _replace_tables()})

    def ruleset(self) -> Json:
        """Our tables as nft lists them (JSON), for inspection."""
        out: list[Json] = []
        nft = self._nft()
        for family in ("bridge", "inet"):
            rc, text, _err = nft.cmd(f"list table {family} {TABLE}")
            if rc == 0 and text:
                import json

                out.extend(json.loads(text).get("nftables", []))
        return {"nftables": out}
