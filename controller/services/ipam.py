"""Address management: subnets and addresses checked with the stdlib `ipaddress` module.

Addresses are handed out lowest free first. Allocations in one subnet queue on
its row lock; the unique key on (subnet, address) is the final word: two
requests that picked the same address cannot both insert it, and the loser
picks again (inside a savepoint, so nothing else of its transaction is lost).
"""

from __future__ import annotations

import ipaddress
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.db.models import Network, Port, PortAddress, Subnet
from controller.errors import Conflict, InvalidInput

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAC_PREFIX = "52:54:00"  # locally administered, unicast (the prefix QEMU uses)
ATTEMPTS = 20
SMALLEST = {4: 30, 6: 126}  # longest prefix that still leaves a host address


def parse_cidr(cidr: str) -> IPNetwork:
    """A subnet in CIDR form, or InvalidInput saying precisely what is wrong with it."""
    if "/" not in cidr:
        raise InvalidInput(f"cidr '{cidr}' has no prefix length; write it like 10.0.0.0/24 "
                           "or fd00::/64")
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise InvalidInput(f"cidr '{cidr}' is not an IPv4 or IPv6 network: {e}") from e
        raise InvalidInput(f"cidr '{cidr}' has host bits set; the network is {loose}") from e
    if net.prefixlen > SMALLEST[net.version]:
        raise InvalidInput(f"subnet {net} is too small: IPv{net.version} subnets need a prefix "
                           f"of /{SMALLEST[net.version]} or shorter")
    return net


def parse_ip(text: str, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError as e:
        raise InvalidInput(f"{what} '{text}' is not an IPv4 or IPv6 address") from e


def check_host(net: IPNetwork, ip: IPAddress, gateway: str | None, what: str) -> None:
    """Refuse an address a port may not have: outside the subnet, its network, broadcast or
    gateway address."""
    if ip.version != net.version or ip not in net:
        raise InvalidInput(f"{what} {ip} is outside subnet {net}")
    if ip == net.network_address:
        raise InvalidInput(f"{what} {ip} is the network address of subnet {net}")
    if net.version == 4 and ip == net.broadcast_address:
        raise InvalidInput(f"{what} {ip} is the broadcast address of subnet {net}")
    if gateway is not None and ip == ipaddress.ip_address(gateway):
        raise InvalidInput(f"{what} {ip} is the gateway of subnet {net}")


def check_gateway(net: IPNetwork, gateway: str) -> str:
    ip = parse_ip(gateway, "gateway")
    check_host(net, ip, None, "gateway")
    return str(ip)


def lowest_free(net: IPNetwork, gateway: str | None, used: set[str]) -> str | None:
    """The lowest host address of `net` not in `used` (skipping network, broadcast, gateway)."""
    make = type(net.network_address)
    skip = {str(net.network_address)} | used | ({gateway} if gateway else set())
    last = int(net.broadcast_address) - (1 if net.version == 4 else 0)
    for n in range(int(net.network_address) + 1, last + 1):
        text = str(make(n))
        if text not in skip:
            return text
    return None


def overlapping(net: IPNetwork, subnets: list[Subnet]) -> Subnet | None:
    for s in subnets:
        other = ipaddress.ip_network(s.cidr)
        if other.version == net.version and net.overlaps(other):
            return s
    return None


def new_mac() -> str:
    return MAC_PREFIX + "".join(f":{b:02x}" for b in secrets.token_bytes(3))


def add_port(db: Session, net: Network, instance_id: str | None, project_id: str) -> Port:
    """A new port of `project_id` with a MAC address no other port has."""
    for _ in range(ATTEMPTS):
        mac = new_mac()
        if db.scalar(select(Port.id).where(Port.mac == mac)) is not None:
            continue
        port = Port(network_id=net.id, instance_id=instance_id, mac=mac, project_id=project_id)
        try:
            with db.begin_nested():
                db.add(port)
        except IntegrityError:
            continue
        return port
    raise Conflict("no unique MAC address found; try again")


def assign(db: Session, port: Port, subnet: Subnet, fixed: str | None) -> str:
    """Give the port an address in `subnet`: `fixed` (already checked) or the lowest free."""
    net = ipaddress.ip_network(subnet.cidr)
    # queue behind other allocations in this subnet (PostgreSQL; SQLite serialises writers
    # already), so a busy subnet does not starve anyone; the unique key stays the guarantee
    db.scalar(select(Subnet.id).where(Subnet.id == subnet.id).with_for_update())
    for _ in range(ATTEMPTS):
        if fixed is not None:
            address = fixed
            if db.scalar(select(PortAddress.port_id).where(
                    PortAddress.subnet_id == subnet.id, PortAddress.address == fixed)):
                raise Conflict(f"address {fixed} of subnet {subnet.cidr} is taken")
        else:
            used = set(db.scalars(select(PortAddress.address)
                                  .where(PortAddress.subnet_id == subnet.id)))
            free = lowest_free(net, subnet.gateway, used)
            if free is None:
                raise Conflict(f"subnet {subnet.cidr} has no free address left")
            address = free
        try:
            with db.begin_nested():
                db.add(PortAddress(port_id=port.id, subnet_id=subnet.id, address=address))
        except IntegrityError:
            if fixed is not None:
                raise Conflict(f"address {fixed} of subnet {subnet.cidr} is taken") from None
            continue  # another request took it meanwhile: pick again
        return address
    raise Conflict(f"subnet {subnet.cidr} is too busy; try again")


def allocate_vni(db: Session, first: int, last: int) -> int:
    """The lowest VNI from `first` to `last` that no network has (the caller inserts it,
    retrying on IntegrityError); Conflict when every one is taken."""
    used = set(db.scalars(select(Network.vni).where(Network.vni.between(first, last))))
    vni = first
    while vni in used:
        vni += 1
    if vni > last:
        raise Conflict(f"every VNI of the region's range {first}-{last} is taken; widen it "
                       "(VAUBAN_VNI_FIRST, VAUBAN_VNI_LAST) or delete unused tenant networks")
    return vni
