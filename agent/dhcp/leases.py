"""Which ports of this node get DHCP answers, and what they are told (pure)."""

from __future__ import annotations

import ipaddress

from agent.dhcp.packet import MAX_HOSTNAME, Lease
from agent.protocol import DesiredPort, DesiredState, NetworkKind

# The server identifier of a subnet without a gateway. It need not answer: leases never
# expire (so no unicast renewal is due) and every DHCP packet is answered at the port.
UNROUTED_SERVER_ID = ipaddress.IPv4Address("169.254.169.253")


def _lease(port: DesiredPort, hostname: str) -> Lease | None:
    """The lease of `port`: its first IPv4 address, with that subnet's gateway as router
    and server identifier; None for a port without IPv4."""
    for text in port.addresses:
        address = ipaddress.ip_interface(text)
        if not isinstance(address, ipaddress.IPv4Interface):
            continue
        gateways = [ipaddress.ip_address(g) for g in port.gateways]
        router = next((g for g in gateways if isinstance(g, ipaddress.IPv4Address)
                       and g in address.network), None)
        dns = tuple(d for d in (ipaddress.ip_address(t) for t in port.dns)
                    if isinstance(d, ipaddress.IPv4Address))
        return Lease(mac=port.mac, address=address, server_id=router or UNROUTED_SERVER_ID,
                     router=router, dns=dns, mtu=port.mtu,
                     hostname=hostname[:MAX_HOSTNAME] if hostname.isascii() else None)
    return None


def leases_of(desired: DesiredState) -> dict[str, Lease]:
    """Port id -> lease, for every port of this node's VMs on a tenant network.

    Every such port is answered, whether or not its seed tells the guest to use DHCP:
    an image without cloud-init gets its address too. Provider networks are left alone:
    the datacenter's own DHCP server may be on their VLAN.
    """
    tenant = {n.id for n in desired.networks if n.kind == NetworkKind.TENANT}
    found: dict[str, Lease] = {}
    for vm in desired.vms:
        for port in vm.ports:
            if port.network_id not in tenant:
                continue
            lease = _lease(port, vm.seed.hostname)
            if lease is not None:
                found[port.id] = lease
    return found
