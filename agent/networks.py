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
from pathlib import Path

from agent.drivers.network.base import NetworkDriver
from agent.drivers.network.secgroups import PortFilter, SecurityGroupFirewall
from agent.protocol import DesiredNetwork, DesiredState

log = logging.getLogger(__name__)


def tap_name(port_id: str) -> str:
    """The host-side tap of a VM port: deterministic, 15 characters (IFNAMSIZ)."""
    return "vtp-" + hashlib.sha256(port_id.encode()).hexdigest()[:11]


class NetworkKeeper:
    def __init__(self, driver: NetworkDriver, underlay_ip: str | None, record: Path,
                 firewall: SecurityGroupFirewall | None = None) -> None:
        self.driver = driver
        self.underlay_ip = underlay_ip
        self.record = record
        self.firewall = firewall
        self.errors: dict[str, str] = {}
        self._applied_filters: tuple[object, ...] | None = None  # what the firewall holds

    def apply_security_groups(self, desired: DesiredState) -> None:
        """Filter this node's ports by their security groups; a change reaches running VMs
        at once. Nothing is sent when the rules did not change since the last pass."""
        if self.firewall is None:
            return
        ports = [PortFilter(tap=tap_name(p.id), addresses=tuple(p.addresses),
                            groups=tuple(p.security_groups))
                 for vm in desired.vms for p in vm.ports if p.security_groups]
        groups = {g.id: g for g in desired.security_groups}
        wanted = (tuple(ports), tuple(g.model_dump_json() for g in groups.values()))
        if wanted == self._applied_filters:
            return
        try:
            if ports:
                self.firewall.apply(ports, groups)
            elif self._applied_filters is not None:
                self.firewall.remove()
            self._applied_filters = wanted
            self.errors.pop("security-groups", None)
        except Exception as e:
            log.warning("security groups not applied: %s", e)
            self.errors["security-groups"] = str(e)

    def carried(self) -> set[str]:
        try:
            return set(json.loads(self.record.read_text()))
        except (OSError, ValueError):
            return set()

    def _save(self, ids: set[str]) -> None:
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(ids)))
        os.replace(tmp, self.record)

    def apply(self, nets: list[DesiredNetwork]) -> None:
        """Remove the networks this agent made and no longer needs, then ensure the wanted
        ones (recreating any device deleted by hand). Failures are logged and kept in
        `errors`; a VM on a missing network then fails to start and says so."""
        carried = self.carried()
        wanted = {n.id: n for n in nets}
        if not wanted and not carried:
            return
        for net_id in carried - wanted.keys():
            try:
                self.driver.remove_network(net_id)
                carried.discard(net_id)
            except Exception as e:
                log.warning("network %s not removed: %s", net_id, e)
        for net in wanted.values():
            carried.add(net.id)
            self._save(carried)  # recorded first: a half-made network is ours to remove
            try:
                self.driver.ensure_network(net, self.underlay_ip)
                self.errors.pop(net.id, None)
            except Exception as e:
                log.warning("network %s (%s) not ready: %s", net.name, net.id, e)
                self.errors[net.id] = str(e)
        self._save(carried)
