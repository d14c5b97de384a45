"""Networks, their subnets and ports: what operators ask for.

A provider network is a VLAN on a physical interface (or bond) of the nodes; a
tenant network is a VXLAN overlay between the nodes that carry it, with a VNI the
region allocates. A node carries a network while one of its VMs has a port on it.
Every refusal is raised before the caller commits, so nothing half-made is left.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.authz import Level, Perm
from controller.db.models import Instance, Network, Node, Port, SecurityGroup, Subnet
from controller.errors import Conflict, InvalidInput, NotFound
from controller.schemas import NetworkCreate, SubnetCreate
from controller.services import audit, desired, ipam, quotas, tenancy
from controller.services import security_groups as secgroups

TENANT_MTU = 1450  # 50 bytes of a 1500 underlay go to the VXLAN encapsulation
PROVIDER_MTU = 1500
def find(db: Session, ref: str) -> Network:
    """A network by id or name among the caller's and the shared ones, or NotFound."""
    return tenancy.find(db, Network, ref, "network", shared=True)


def find_port(db: Session, ref: str) -> Port:
    """A port by id among the caller's, or NotFound."""
    port = db.scalar(tenancy.visible(select(Port).where(Port.id == ref), Port.project_id))
    if port is None:
        raise NotFound(f"port '{ref}' does not exist")
    level, _ = tenancy.route_level()
    tenancy.require(db, port.project_id, level)
    return port


def port_count(db: Session, net: Network) -> int:
    """How many ports the caller sees on `net` (a shared network's others are not told)."""
    return int(db.scalar(tenancy.visible(select(func.count(Port.id)), Port.project_id)
                         .where(Port.network_id == net.id)) or 0)


def create(db: Session, actor: str, body: NetworkCreate, vnis: tuple[int, int]) -> Network:
    """Validate and record a network with its first subnets: a tenant network in its
    project (with the lowest free VNI of the range `vnis`), a provider network shared by
    all (made by who may: see NETWORKS_PROVIDER)."""
    project_id = _project_of_new(db, body)
    if db.scalar(select(Network.id).where(_same_project(project_id),
                                          Network.name == body.name)) is not None:
        raise Conflict(f"a network named '{body.name}' already exists{_where(db, project_id)}")
    if body.kind == "provider":
        if body.vlan is None or body.physical is None:
            raise InvalidInput("a provider network needs vlan (the VLAN id, 1-4094) and "
                               "physical (the interface or bond that carries it)")
        other = db.scalar(select(Network.name).where(Network.kind == "provider",
                                                     Network.vlan == body.vlan,
                                                     Network.physical == body.physical))
        if other is not None:
            raise Conflict(f"VLAN {body.vlan} on {body.physical} is already network '{other}'")
    elif body.vlan is not None or body.physical is not None or body.xapi_network is not None:
        raise InvalidInput("a tenant network is a VXLAN overlay: vlan, physical and "
                           "xapi_network are for provider networks only")
    checked = _check_subnets([], body.subnets)
    mtu = body.mtu or (TENANT_MTU if body.kind == "tenant" else PROVIDER_MTU)
    net = _insert(db, vnis, Network(name=body.name, kind=body.kind, vlan=body.vlan,
                                    physical=body.physical, mtu=mtu, project_id=project_id,
                                    xapi_network=body.xapi_network))
    net.subnets.extend(checked)
    db.flush()
    audit.record(db, actor, "network.create", f"network/{net.id}", name=net.name,
                 kind=net.kind, vlan=net.vlan, physical=net.physical, vni=net.vni, mtu=net.mtu,
                 subnets=[s.cidr for s in checked], xapi_network=net.xapi_network)
    return net


def _project_of_new(db: Session, body: NetworkCreate) -> str | None:
    if body.kind == "tenant":
        project = quotas.lock(db, tenancy.target_project(db, body.project).id)
        quotas.check(db, project, quotas.Ask(networks=1))
        return project.id
    if body.project is not None:
        raise InvalidInput("a provider network is shared by every project: give no project")
    tenancy.require(db, None, Level.WRITE, Perm.NETWORKS_PROVIDER)
    return None


def _same_project(project_id: str | None) -> ColumnElement[bool]:
    return Network.project_id.is_(None) if project_id is None \
        else Network.project_id == project_id


def _where(db: Session, project_id: str | None) -> str:
    return " among the shared networks" if project_id is None \
        else f" in project '{tenancy.project_name(db, project_id)}'"


def _insert(db: Session, vnis: tuple[int, int], net: Network) -> Network:
    """Insert the network; a tenant one gets the lowest free VNI, retried if taken meanwhile."""
    for _ in range(ipam.ATTEMPTS):
        if net.kind == "tenant":
            net.vni = ipam.allocate_vni(db, *vnis)
        try:
            with db.begin_nested():
                db.add(net)
        except IntegrityError:
            if db.scalar(select(Network.id).where(_same_project(net.project_id),
                                                  Network.name == net.name)) is not None:
                raise Conflict(f"a network named '{net.name}' already exists"
                               f"{_where(db, net.project_id)}") from None
            continue
        return net
    raise Conflict("no free VNI found; try again")


def _check_subnets(existing: list[Subnet], wanted: list[SubnetCreate]) -> list[Subnet]:
    """New Subnet rows (not added) for `wanted`, refused if one overlaps another."""
    made: list[Subnet] = []
    for body in wanted:
        net = ipam.parse_cidr(body.cidr)
        gateway = ipam.check_gateway(net, body.gateway) if body.gateway else None
        dns = [str(ipam.parse_ip(d, "dns server")) for d in body.dns]
        clash = ipam.overlapping(net, existing + made)
        if clash is not None:
            raise InvalidInput(f"subnet {net} overlaps subnet {clash.cidr} of the same network")
        made.append(Subnet(cidr=str(net), gateway=gateway, dns=dns))
    return made


def add_subnet(db: Session, actor: str, net: Network, body: SubnetCreate) -> Subnet:
    """Add a subnet; ports made from now on get an address from it too."""
    [sub] = _check_subnets(list(net.subnets), [body])
    net.subnets.append(sub)
    db.flush()
    audit.record(db, actor, "network.subnet-add", f"network/{net.id}", name=net.name,
                 cidr=sub.cidr, gateway=sub.gateway, dns=sub.dns)
    return sub


def delete(db: Session, actor: str, net: Network) -> None:
    """Delete a network and its subnets; refused while it has ports."""
    ports = port_count(db, net)
    if ports:
        users = sorted(set(db.scalars(select(Instance.name).join(Port).where(
            Port.network_id == net.id))))
        on = f" (VMs: {', '.join(users)})" if users else ""
        raise Conflict(f"network '{net.name}' still has {ports} port(s){on}; "
                       "delete them first")
    audit.record(db, actor, "network.delete", f"network/{net.id}", name=net.name,
                 vni=net.vni)
    db.delete(net)
    db.flush()


def create_port(db: Session, actor: str, net: Network, fixed_ips: list[str],
                inst: Instance | None = None,
                groups: list[SecurityGroup] | None = None,
                project_id: str | None = None, *, dhcp: bool = False) -> Port:
    """A port of `project_id` (the VM's for a VM's port) with one address per subnet of
    `net`: the fixed one asked for, else the lowest free.

    It is in `groups` (None: its project's group 'default'); the nodes shown those
    groups learn of its addresses.
    """
    project_id = inst.project_id if inst is not None else project_id
    assert project_id is not None, "a port belongs to a project"
    if inst is None and net.project_id is None:  # a VM's were counted with the VM
        quotas.check(db, quotas.lock(db, project_id),
                     quotas.Ask(public_addresses=len(net.subnets)))
    if groups is None:
        groups = secgroups.resolve(db, None, project_id)
    wanted: dict[str, str] = {}
    subnets = list(net.subnets)
    for text in fixed_ips:
        ip = ipam.parse_ip(text, "fixed IP")
        sub = next((s for s in subnets if ip in ipaddress.ip_network(s.cidr)), None)
        if sub is None:
            cidrs = ", ".join(s.cidr for s in subnets) or "it has none"
            raise InvalidInput(f"address {ip} is outside every subnet of network "
                               f"'{net.name}' ({cidrs})")
        if sub.id in wanted:
            raise InvalidInput(f"two addresses asked in subnet {sub.cidr}: {wanted[sub.id]} "
                               f"and {ip}")
        ipam.check_host(ipaddress.ip_network(sub.cidr), ip, sub.gateway, "address")
        wanted[sub.id] = str(ip)
    port = ipam.add_port(db, net, inst.id if inst else None, project_id)
    port.dhcp = dhcp
    addresses = [ipam.assign(db, port, sub, wanted.get(sub.id)) for sub in subnets]
    db.expire(port, ["addresses"])
    port.security_groups = list(groups)
    db.flush()
    audit.record(db, actor, "port.create", f"port/{port.id}", network=net.name, mac=port.mac,
                 addresses=addresses, instance=inst.name if inst else None,
                 security_groups=[g.name for g in groups], dhcp=dhcp)
    if inst is not None:
        bump_carriers(db, [net.id], exclude_node_id=inst.node_id)
    secgroups.bump_viewers(db, [g.id for g in groups],
                           exclude_node_id=inst.node_id if inst else None)
    return port


def delete_port(db: Session, actor: str, port: Port) -> None:
    """Delete a port that no VM has (a VM's ports go with the VM)."""
    if port.instance_id is not None:
        name = port.instance.name if port.instance else port.instance_id
        raise Conflict(f"port {port.id} is a NIC of VM '{name}'; it goes when the VM is deleted")
    audit.record(db, actor, "port.delete", f"port/{port.id}", network=port.network.name,
                 mac=port.mac, addresses=[a.address for a in port.addresses])
    groups = [g.id for g in port.security_groups]
    db.delete(port)
    db.flush()
    secgroups.bump_viewers(db, groups)


DHCP_SUFFIX = ",dhcp"


@dataclass(frozen=True)
class Attachment:
    """A NIC a new VM asks for: its network, a fixed IP or None, and whether its guest is
    told to configure IPv4 by DHCP."""

    network: Network
    ip: str | None
    dhcp: bool


def parse_attachment(ref: str) -> tuple[str, str | None, bool]:
    """'NET', 'NET:IP', each optionally followed by ',dhcp' (network names hold no ':' nor
    ',', so an IPv6 address may follow the colon)."""
    dhcp = ref.endswith(DHCP_SUFFIX)
    body = ref[:-len(DHCP_SUFFIX)] if dhcp else ref
    name, sep, ip = body.partition(":")
    if not name or (sep and not ip) or "," in body:
        raise InvalidInput(f"network '{ref}': write NETWORK or NETWORK:IP, either followed "
                           "by ,dhcp for a NIC configured by DHCP")
    return name, ip if sep else None, dhcp


def _check_dhcp(net: Network) -> None:
    """DHCP is answered by the nodes only on tenant networks, for IPv4."""
    if net.kind != "tenant":
        raise InvalidInput(f"network '{net.name}' is a provider network: its VLAN may have the "
                           "datacenter's own DHCP server, so Vauban answers DHCP only on "
                           "tenant networks; leave ',dhcp' out (the seed gives the address)")
    if not any(ipaddress.ip_network(s.cidr).version == 4 for s in net.subnets):
        raise InvalidInput(f"network '{net.name}' has no IPv4 subnet to hand out by DHCP")


def resolve_attachments(db: Session, refs: list[str], project_id: str) -> list[Attachment]:
    """The networks a new VM of `project_id` asks for (its project's or shared ones),
    checked before anything is created."""
    out = []
    for ref in refs:
        name, ip, dhcp = parse_attachment(ref)
        net = tenancy.find_input(db, Network, name, "network", project_id, shared=True,
                                 hint=" (see 'vauban network list')")
        if dhcp:
            _check_dhcp(net)
        out.append(Attachment(net, ip, dhcp))
    return out


def attach_new_instance(db: Session, actor: str, inst: Instance, wanted: list[Attachment],
                        groups: list[SecurityGroup] | None = None) -> list[Port]:
    return [create_port(db, actor, a.network, [a.ip] if a.ip else [], inst, groups,
                        dhcp=a.dhcp) for a in wanted]


def carriers(db: Session, network_ids: list[str]) -> set[str]:
    """Ids of the nodes carrying any of these networks: a live VM of theirs has a port on
    it, or is migrating to them."""
    if not network_ids:
        return set()
    return {node_id for _, node_id in desired.carrier_rows(db, network_ids)}


def bump_carriers(db: Session, network_ids: list[str], exclude_node_id: str | None) -> None:
    for node_id in sorted(carriers(db, network_ids) - {exclude_node_id}):
        node = db.get(Node, node_id)
        if node is not None:
            desired.bump(node)


def instance_network_ids(db: Session, inst: Instance) -> list[str]:
    return list(set(db.scalars(select(Port.network_id).where(Port.instance_id == inst.id))))


def release_instance(db: Session, inst: Instance) -> None:
    """A VM being deleted leaves its networks: the other nodes carrying them learn of it."""
    db.flush()
    bump_carriers(db, instance_network_ids(db, inst), exclude_node_id=inst.node_id)
    port_ids = list(db.scalars(select(Port.id).where(Port.instance_id == inst.id)))
    secgroups.bump_viewers(db, secgroups.port_group_ids(db, port_ids),
                           exclude_node_id=inst.node_id)


def delete_instance_ports(db: Session, inst: Instance) -> None:
    """The node confirmed the VM is gone: its ports and addresses go too."""
    for port in db.scalars(select(Port).where(Port.instance_id == inst.id)):
        db.delete(port)
    db.flush()


def instance_ports(db: Session, inst: Instance) -> list[Port]:
    return list(db.scalars(select(Port).where(Port.instance_id == inst.id)
                           .order_by(Port.created_at, Port.id)))
