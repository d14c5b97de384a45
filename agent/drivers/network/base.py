"""The network driver contract.

Vocabulary: a *network* is one layer-2 segment of the region (a `DesiredNetwork`).
On a node that carries it, it is a Linux *bridge* that VM taps are plugged into,
plus one *uplink* device enslaved to that bridge which carries the segment to the
other nodes: a VLAN subinterface of a physical interface (a *provider* network)
or a VXLAN device (a *tenant* network) with unicast head-end replication, i.e. one
all-zeros-MAC forwarding entry per *peer* (the underlay address of another node
carrying the network). The *underlay* is the node's own address those VXLAN
packets leave from.

A driver only ever touches devices it made itself. They are *marked* twice: the
name is a fixed prefix plus a hash of the network id (see `bridge_name`), and
the device's alias (`ifalias`) is `vauban:<network id>`. A device missing either
mark is never listed, changed or removed, whatever its name looks like.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

from agent.errors import DriverError
from agent.protocol import DesiredNetwork, NetworkKind

IFNAMSIZ = 15  # the longest Linux interface name (16 bytes with the NUL)
BRIDGE_PREFIX = "vbr-"
VXLAN_PREFIX = "vvx-"
VLAN_PREFIX = "vvl-"
ALIAS_PREFIX = "vauban:"
VXLAN_PORT = 4789  # IANA
# Outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 bytes that a VXLAN frame adds.
VXLAN_OVERHEAD = 50


def _device_name(prefix: str, network_id: str) -> str:
    digest = hashlib.sha256(network_id.encode()).hexdigest()
    return prefix + digest[: IFNAMSIZ - len(prefix)]


def bridge_name(network_id: str) -> str:
    """The name of the network's bridge on every node (VM taps are plugged into it).

    Deterministic from the id and at most 15 characters, e.g. "vbr-3f2a9c01d4e".
    """
    return _device_name(BRIDGE_PREFIX, network_id)


def vxlan_name(network_id: str) -> str:
    """The name of a tenant network's VXLAN device."""
    return _device_name(VXLAN_PREFIX, network_id)


def vlan_name(network_id: str) -> str:
    """The name of a provider network's VLAN subinterface."""
    return _device_name(VLAN_PREFIX, network_id)


def alias_of(network_id: str) -> str:
    """The `ifalias` every device of the network carries."""
    return ALIAS_PREFIX + network_id


@dataclass(frozen=True)
class NetworkInfo:
    """What a driver can do, as data."""

    name: str
    kinds: frozenset[NetworkKind]  # the network kinds it can build
    vxlan_overhead: int = VXLAN_OVERHEAD  # bytes a tenant network's MTU must leave free


class NetworkError(DriverError):
    """A network operation failed; `retryable` says whether trying again may help."""


def check_desired(net: DesiredNetwork, underlay_ip: str | None) -> None:
    """Raise NetworkError if the network lacks what its kind needs."""
    if net.kind == NetworkKind.PROVIDER:
        if net.vlan is None or not net.physical:
            raise NetworkError(f"provider network {net.id} needs both `vlan` and `physical`")
    elif net.kind == NetworkKind.TENANT:
        if net.vni is None:
            raise NetworkError(f"tenant network {net.id} needs a `vni`")
        if not underlay_ip:
            raise NetworkError(f"tenant network {net.id} needs this node's underlay address")
        if underlay_ip in net.peers:
            raise NetworkError(f"tenant network {net.id}: this node ({underlay_ip}) "
                               "is listed among its own peers")


class NetworkDriver(ABC):
    """Builds the layer-2 networks of the region on one node."""

    @abstractmethod
    def info(self) -> NetworkInfo:
        """Capabilities of this driver."""

    @abstractmethod
    def ensure_network(self, net: DesiredNetwork, underlay_ip: str | None) -> None:
        """Make the node carry `net`, creating or correcting what is missing or different.

        After success the bridge `bridge_name(net.id)` exists, is up, carries the
        network's alias and has MTU `net.mtu`; its one uplink is enslaved to it, up,
        with MTU `net.mtu`:
        - provider: a VLAN subinterface (`net.vlan`) of `net.physical`;
        - tenant: a VXLAN device (VNI `net.vni`, local `underlay_ip`, UDP port
          4789, no multicast group) with exactly one `00:00:00:00:00:00 dst <peer>`
          forwarding entry per address of `net.peers` (head-end replication of
          broadcast and unknown unicast); entries of peers no longer listed are
          removed. Learning is on, so a VM's frames go only to the node of the VM
          they are for once its MAC was seen, not to every peer.
        A tenant network's MTU must leave `VXLAN_OVERHEAD` bytes below the MTU of
        the underlay interface, else NetworkError (nothing is changed). Calling it
        again with the same network is a no-op.

        On failure every device this call created is removed again; devices that
        existed before are left in place (except the uplink of the other kind, which
        a network whose kind changed loses first, so that the bridge never joins two
        segments).
        """

    @abstractmethod
    def remove_network(self, network_id: str) -> None:
        """Remove the network's bridge and uplink. An unknown network is a no-op.

        After success no device marked for `network_id` is left. VM taps still
        plugged into the bridge are released (not deleted) by the kernel.
        """

    @abstractmethod
    def list_networks(self) -> list[str]:
        """Ids of the networks whose (marked) bridge exists on this node, sorted."""

    def reconcile(self, nets: list[DesiredNetwork], underlay_ip: str | None) -> None:
        """Make the node carry exactly `nets`.

        Networks this driver made that are not in `nets` are removed first, then
        every network of `nets` is ensured (so a device deleted by hand comes back).
        Devices this driver did not make are never touched. One network failing
        does not stop the others: after all were tried, NetworkError names the
        failures (retryable if all of them were).
        """
        wanted = {net.id for net in nets}
        errors: list[NetworkError] = []
        for network_id in self.list_networks():
            if network_id not in wanted:
                try:
                    self.remove_network(network_id)
                except NetworkError as exc:
                    errors.append(exc)
        for net in nets:
            try:
                self.ensure_network(net, underlay_ip)
            except NetworkError as exc:
                errors.append(exc)
        if errors:
            raise NetworkError("; ".join(str(e) for e in errors),
                               retryable=all(e.retryable for e in errors))
