"""The region's means of fencing a lost node, for the failover (controller.ha.failover).

Power: the node's BMC (controller.ha.bmc), its password opened from the region key only
for the call. Storage: the node's Ceph client address blocklisted as client.vauban-fence
(controller.ha.ceph). Liveness: the storage heartbeats this process watches
(controller.ha.storage_watch). Every refusal is a FenceError in an operator's words.
"""

from __future__ import annotations

import configparser
import ipaddress
import socket
from pathlib import Path

from agent.drivers.storage.base import StorageError
from agent.drivers.storage.rbd.names import parse_mon_host
from controller.ha.bmc import Bmc, BmcError
from controller.ha.ceph import CephHaError, whole_ip
from controller.ha.ceph import Fencer as Blocklist
from controller.ha.failover import FenceError, LostNode
from controller.ha.storage_watch import StorageWatch
from controller.secretbox import RegionKey, SecretRefused

BMC_PASSWORD_PURPOSE = "bmc-password"


def bmc_purpose(node_id: str) -> str:
    """The sealing purpose of a node's BMC password: it opens for this node alone."""
    return f"{BMC_PASSWORD_PURPOSE}/{node_id}"


def ceph_monitor_ips(ceph_conf: Path | None) -> set[str]:
    """The IP addresses of ceph.conf's mon_host, each form (`[v2:ip:3300,v1:ip:6789]`, a
    bare ip[:port], a name resolved here): never to be blocklisted."""
    if ceph_conf is None:
        return set()
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read(ceph_conf)
    except configparser.Error:
        return set()
    hosts = parser.get("global", "mon_host", fallback="") or \
        parser.get("global", "mon host", fallback="")
    try:
        monitors = parse_mon_host(hosts)
    except StorageError:
        return set()
    found: set[str] = set()
    for host, _port in monitors:
        try:
            found.add(str(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            try:
                found |= {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
            except OSError:
                continue
    return found


class RegionFencer:
    """Fencer (controller.ha.failover) over this region's BMCs and Ceph."""

    def __init__(self, box: RegionKey, watch: StorageWatch | None,
                 blocklist: Blocklist | None, protected_ips: set[str],
                 bmc_timeout_s: float = 30.0) -> None:
        self.box = box
        self.watch = watch
        self.blocklist = blocklist
        self.protected_ips = protected_ips  # the controller's and Ceph's own
        self.bmc_timeout_s = bmc_timeout_s

    def storage_alive(self, node: LostNode) -> bool:
        """Not stale by this process's watch; alive too while the watch has not judged it
        yet or cannot read Ceph (no node is taken for dead on our own trouble)."""
        if self.watch is None or self.watch.error is not None:
            return True
        view = self.watch.view(node.id)
        # a node that never wrote one cannot be judged by it (an agent before heartbeats)
        return view is None or view.seq is None or not view.stale

    def power_off(self, node: LostNode) -> None:
        bmc = node.bmc
        if bmc is None:
            raise FenceError(f"node {node.name} has no BMC configured, so it cannot be "
                             f"powered off (vauban node bmc set {node.name} ...; or, once "
                             f"you have cut its power yourself, vauban node fence "
                             f"{node.name} --confirm-powered-off)")
        try:
            password = self.box.open(bmc_purpose(node.id), bmc.password_sealed).decode()
        except SecretRefused as e:
            raise FenceError(f"the BMC password of node {node.name} cannot be opened: "
                             f"{e}") from e
        try:
            Bmc(node=node.name, address=bmc.address, port=bmc.port, username=bmc.username,
                password=password, timeout_s=self.bmc_timeout_s).power_off()
        except BmcError as e:
            raise FenceError(str(e)) from e

    def cut_storage(self, node: LostNode) -> None:
        if self.blocklist is None:
            raise FenceError("the controller has no Ceph fence keyring "
                             "(VAUBAN_CEPH_FENCE_KEYRING), so node "
                             f"{node.name} cannot be cut off from Ceph")
        if not node.addresses:
            raise FenceError(f"node {node.name} never reported its address: its Ceph "
                             "client cannot be blocklisted")
        shared = [a for a in node.addresses if a in self.protected_ips]
        if shared:
            raise FenceError(f"node {node.name} shares its address {shared[0]} with the "
                             "controller or a Ceph monitor: blocklisting it would cut "
                             "those off too")
        for address in node.addresses:
            try:
                self.blocklist.add(whole_ip(address))
            except (CephHaError, ValueError) as e:
                raise FenceError(f"node {node.name} could not be cut off from Ceph at "
                                 f"{address}: {e}") from e

    def restore_storage(self, node: LostNode) -> bool:
        """Lift the node's blocklist entry (it was repaired); whether one was listed."""
        if self.blocklist is None:
            return False
        lifted = False
        for address in node.addresses:
            try:
                lifted |= self.blocklist.remove(whole_ip(address))
            except (CephHaError, ValueError) as e:
                raise FenceError(f"node {node.name}'s blocklist entry for {address} could "
                                 f"not be lifted: {e}") from e
        return lifted
