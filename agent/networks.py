"""The networks this node carries: ensured when its VMs need them, removed when not.

Only networks this agent itself ensured are ever removed (they are recorded in a
file in its data directory), so several agents or tools on one host do not undo
each other's bridges.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from agent.dhcp.leases import leases_of
from agent.dhcp.responder import DhcpResponder, DhcpUnavailable
from agent.drivers.network.base import NetworkDriver
from agent.drivers.network.secgroups import FirewallError, PortFilter, SecurityGroupFirewall
from agent.errors import is_retryable
from agent.protocol import DesiredNetwork, DesiredPort, DesiredState
from agent.retry import FailureLedger

log = logging.getLogger(__name__)


def tap_name(port_id: str) -> str:
    """The host-side tap of a VM port: deterministic, 15 characters (IFNAMSIZ)."""
    return "vtp-" + hashlib.sha256(port_id.encode()).hexdigest()[:11]


FIREWALL_ID = "security-groups"  # the object id of firewall failures: one ruleset per node


@dataclass(frozen=True)
class Blocker:
    """Why a VM may not be created or started on this node yet: a network of its ports
    failed here, or its security groups are not in force. The failure is the network's
    or the firewall's, not the VM's: the VM starts on the first pass after it clears."""

    message: str
    final: bool  # that failure is given up on: it clears once its request changes


class NetworkKeeper:
    """Ensures the node's networks and applies its firewall (every port's anti-spoofing
    guard, and the security groups of those in groups), failing closed.

    Every failure goes to the shared `ledger` (reported to the controller) and is
    retried by its policy. While the wanted firewall is not in force, the node's ports
    are isolated (they pass no traffic) and `filters_blocker()` says why, so that no VM
    with a port is started unguarded or unfiltered.
    """

    def __init__(self, driver: NetworkDriver, underlay_ip: str | None, record: Path,
                 firewall: SecurityGroupFirewall | None = None,
                 ledger: FailureLedger | None = None,
                 dhcp: DhcpResponder | None = None) -> None:
        self.driver = driver
        self.dhcp = dhcp
        self.underlay_ip = underlay_ip
        self.record = record
        self.firewall = firewall
        self.ledger = ledger or FailureLedger()
        self._applied_filters: tuple[object, ...] | None = None  # what the firewall holds
        self._wanted_filters: tuple[object, ...] | None = None

    def filters_blocker(self) -> str | None:
        """Why the security groups wanted are not in force; None when they are."""
        if self._wanted_filters == self._applied_filters:
            return None
        failure = self.ledger.get("firewall", FIREWALL_ID, "apply")
        return failure.message if failure else "not applied yet"

    def network_blocker(self, network_id: str) -> str | None:
        """Why the network is not ready on this node; None when it is (as far as known)."""
        failure = self.ledger.get("network", network_id, "ensure")
        return failure.message if failure else None

    def vm_blocker(self, ports: list[DesiredPort], names: dict[str, str]) -> Blocker | None:
        """What keeps a VM with these ports from starting here (fail closed); None when
        nothing does. `names`: network id -> name, for the message."""
        for port in ports:
            failure = self.ledger.get("network", port.network_id, "ensure")
            if failure is not None:
                name = names.get(port.network_id, port.network_id)
                return Blocker(f"network {name} ({port.network_id}) is not ready on this "
                               f"node: {failure.message}", failure.final)
        why = self.filters_blocker() if ports else None
        if why is None:
            return None
        failure = self.ledger.get("firewall", FIREWALL_ID, "apply")
        return Blocker("the firewall of its ports (security groups, anti-spoofing) is not in "
                       f"force on this node: {why}", failure is not None and failure.final)

    def apply_security_groups(self, desired: DesiredState) -> bool:
        """Guard this node's ports and filter them by their security groups; a change
        reaches running VMs at once. Nothing is sent when the rules did not change since
        the last pass.

        Returns whether the wanted rules are in force. When they cannot be applied the
        failure is recorded (retried by the ledger's policy) and the ports are isolated:
        a port whose rules are not in force passes no traffic.
        """
        ports = [PortFilter(tap=tap_name(p.id), mac=p.mac, addresses=tuple(p.addresses),
                            groups=tuple(p.security_groups))
                 for vm in desired.vms for p in vm.ports]
        groups = {g.id: g for g in desired.security_groups}
        wanted = (tuple(ports), tuple(g.model_dump_json() for g in groups.values()))
        self._wanted_filters = wanted
        if wanted == self._applied_filters:  # in force: a failure of other rules is moot
            self.ledger.succeeded("firewall", FIREWALL_ID, "apply")
            return True
        if not self.ledger.may_try("firewall", FIREWALL_ID, "apply", wanted):
            return False
        try:
            if self.firewall is None:
                if ports:
                    raise FirewallError("this node has no firewall to guard and filter its "
                                        "VMs' ports with")
            elif ports:
                self.firewall.apply(ports, groups)
            elif self._applied_filters is not None:
                self.firewall.remove()
        except Exception as e:
            self._fail_closed(wanted, ports, e)
            return False
        self._applied_filters = wanted
        self.ledger.succeeded("firewall", FIREWALL_ID, "apply")
        return True

    def _fail_closed(self, wanted: tuple[object, ...], ports: list[PortFilter],
                     error: Exception) -> None:
        """Record the failure and cut the ports off until their rules are in force."""
        message = f"security groups and anti-spoofing not applied: {error}"
        if ports:
            try:
                if self.firewall is None:
                    raise FirewallError("no firewall to isolate the ports with")
                self.firewall.isolate([p.tap for p in ports])
                self._applied_filters = None  # what is in force is the isolation
                message += "; their ports are isolated (no traffic) until they are"
            except Exception as e2:
                message += f"; isolating their ports failed too: {e2}"
        log.warning("%s", message)
        self.ledger.failed("firewall", FIREWALL_ID, "apply", wanted, message,
                           retryable=is_retryable(error))

    def serve_dhcp(self, desired: DesiredState) -> None:
        """Answer DHCP for this node's ports on tenant networks (agent/dhcp), from now on
        exactly those of `desired`. When the responder cannot start, every tenant network
        with such a port here shows why (a network failure, action 'dhcp', retried by its
        policy); its VMs still start: a NIC set statically by its seed keeps working."""
        if self.dhcp is None:
            return
        leases = {tap_name(port_id): lease for port_id, lease in leases_of(desired).items()}
        nets = sorted({p.network_id for vm in desired.vms for p in vm.ports
                       if tap_name(p.id) in leases})
        if not self.dhcp.running and leases:
            if not all(self.ledger.may_try("network", n, "dhcp", None) for n in nets):
                return
            try:
                self.dhcp.start()
            except DhcpUnavailable as e:
                log.warning("DHCP not served: %s", e)
                for net_id in nets:
                    self.ledger.failed("network", net_id, "dhcp", None,
                                       f"DHCP is not served on this node: {e}", retryable=True)
                return
        for net_id in nets:
            self.ledger.succeeded("network", net_id, "dhcp")
        self.dhcp.set_leases(leases)

    def close(self) -> None:
        """Stop answering DHCP (the agent is stopping)."""
        if self.dhcp is not None:
            self.dhcp.stop()

    def carried(self) -> set[str]:
        try:
            return set(json.loads(self.record.read_text()))
        except (OSError, ValueError):
            return set()

    def _save(self, ids: set[str]) -> None:
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(ids)))
        os.replace(tmp, self.record)

    def apply(self, nets: list[DesiredNetwork]) -> bool:
        """Remove the networks this agent made and no longer needs, then ensure the wanted
        ones (recreating any device deleted by hand). Returns whether all of them are
        ready. Failures go to the ledger (reported, retried by its policy); a VM on a
        network that failed is not started and shows the network's error. Failures of
        networks neither wanted nor carried any more are forgotten."""
        carried = self.carried()
        wanted = {n.id: n for n in nets}
        for e in self.ledger.of_kind("network"):
            if e.object_id not in wanted and e.object_id not in carried:
                self.ledger.forget("network", e.object_id)
        if not wanted and not carried:
            return True
        ok = True
        for net_id in carried - wanted.keys():
            self.ledger.succeeded("network", net_id, "ensure")  # not wanted: no longer applies
            if not self.ledger.may_try("network", net_id, "remove", None):
                ok = False  # failed: waits for its retry (or, given up on, a restart)
                continue
            try:
                self.driver.remove_network(net_id)
                carried.discard(net_id)
                self.ledger.forget("network", net_id)
            except Exception as e:
                log.warning("network %s not removed: %s", net_id, e)
                self.ledger.failed("network", net_id, "remove", None, e)
                ok = False
        for net in wanted.values():
            self.ledger.succeeded("network", net.id, "remove")  # wanted again: none pending
            carried.add(net.id)
            self._save(carried)  # recorded first: a half-made network is ours to remove
            ok &= self._ensure(net)
        self._save(carried)
        return ok

    def _ensure(self, net: DesiredNetwork) -> bool:
        request = net.model_dump_json()
        if not self.ledger.may_try("network", net.id, "ensure", request):
            return False  # failed for this very request: waits for its retry or a change
        try:
            self.driver.ensure_network(net, self.underlay_ip)
        except Exception as e:
            log.warning("network %s (%s) not ready: %s", net.name, net.id, e)
            self.ledger.failed("network", net.id, "ensure", request, e)
            return False
        self.ledger.succeeded("network", net.id, "ensure")
        return True
