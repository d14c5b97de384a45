"""Each node's desired state, numbered by a generation that grows with every change."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, joinedload, object_session, selectinload

from agent.protocol import (
    CloudInitSeed,
    DesiredNetwork,
    DesiredPort,
    DesiredSecurityGroup,
    DesiredState,
    DesiredVgpu,
    DesiredVm,
    DesiredVolume,
    ImageRef,
    IncomingMigration,
    MachineSpec,
    MigrationOrder,
    NetworkKind,
    PowerMode,
    PowerState,
    SecurityRule,
    VolumeAttachment,
    VolumeClone,
    VolumeRollback,
)
from controller.db.models import (
    ImageTombstone,
    Instance,
    InstanceTombstone,
    Network,
    Node,
    Port,
    PortAddress,
    SecurityGroup,
    Volume,
    port_security_groups,
)
from controller.db.session import mark_changed

TOMBSTONE_DAYS = timedelta(days=30)  # a node down longer keeps a deleted image's copy
MIGRATION_TIMEOUT_S = 600  # a live migration not done by then is aborted (and failed)


def bump(node: Node) -> int:
    """Mark the node's desired state changed; its long-poll wakes once the caller commits."""
    node.generation += 1
    session = object_session(node)
    if session is not None:
        mark_changed(session, node.id)
    return node.generation


def build(db: Session, node: Node) -> DesiredState:
    """Every VM the node should have: all its instances that are not being deleted, and
    those migrating to it (to prepare for); and the deleted VMs whose disks it may remove."""
    instances = db.scalars(
        select(Instance)
        .where(or_(Instance.node_id == node.id, Instance.migration_target_node_id == node.id),
               Instance.deleting.is_(False))
        .order_by(Instance.created_at)
        # loaded with the instances: a query per VM would add up across thousands of nodes
        .options(joinedload(Instance.image), selectinload(Instance.gpus),
                 selectinload(Instance.vgpus), joinedload(Instance.migration_target))
    )
    attached: dict[str, list[VolumeAttachment]] = {}
    stewarded = list(db.scalars(
        select(Volume).where(Volume.steward_node_id == node.id).order_by(Volume.created_at)))
    for vol in stewarded:
        if vol.instance_id and vol.target and not vol.deleting:
            attached.setdefault(vol.instance_id, []).append(
                VolumeAttachment(volume_id=vol.id, target=vol.target))
    since = datetime.now(UTC) - TOMBSTONE_DAYS
    retired = db.scalars(select(ImageTombstone.id).where(ImageTombstone.deleted_at >= since)
                         .order_by(ImageTombstone.deleted_at))
    networks, ports, group_ids = _networking(db, node)
    return DesiredState(
        node_id=node.id,
        generation=node.generation,
        vms=[_with_migration(_vm(i, attached.get(i.id, []), ports.get(i.id, [])), i, node)
             for i in instances],
        volumes=[_volume(v) for v in stewarded],
        retired_images=list(retired),
        networks=networks,
        security_groups=_security_groups(db, group_ids),
        delete_vm_disks=_deleted_vms(db, node, since),
        fence_cleared=node.fence_cleared_at,
    )


def _deleted_vms(db: Session, node: Node, since: datetime) -> list[str]:
    """VMs of the node being deleted, or deleted (tombstones) since `since`."""
    deleting = db.scalars(select(Instance.id).where(Instance.node_id == node.id,
                                                    Instance.deleting.is_(True)))
    gone = db.scalars(select(InstanceTombstone.id).where(
        InstanceTombstone.node_id == node.id, InstanceTombstone.deleted_at >= since))
    return sorted({*deleting, *gone})


def migration_address(node: Node) -> str | None:
    """The address other nodes' hypervisors reach this node's at: the one its hypervisor
    certificate names (its underlay, when it reported none yet)."""
    address = node.migration_address or (node.inventory or {}).get("underlay_ip")
    return str(address) if address else None


def _with_migration(vm: DesiredVm, i: Instance, node: Node) -> DesiredVm:
    """`vm` with its migration order for `node`: the source moves it once the target is
    ready (phase migrating); the target prepares for it meanwhile. A stopped VM moves
    cold."""
    target = i.migration_target
    if target is None:
        return vm
    cold = i.desired_power == "stopped"  # its power is not changed while it moves
    if i.node_id != node.id:
        return vm.model_copy(update={"incoming_from": IncomingMigration(
            seq=i.migration_seq, source_node_id=i.node_id,
            copy_disks=i.migration_copy_disks, cold=cold)})
    address = migration_address(target)
    if i.migration_phase != "migrating" or address is None:
        return vm
    return vm.model_copy(update={"migrate_to": MigrationOrder(
        seq=i.migration_seq, target_node_id=target.id, target_address=address,
        bandwidth_mib_s=i.migration_bandwidth_mib_s,
        max_downtime_ms=i.migration_max_downtime_ms, timeout_s=MIGRATION_TIMEOUT_S,
        copy_disks=i.migration_copy_disks, cold=cold)})


def _networking(
    db: Session, node: Node
) -> tuple[list[DesiredNetwork], dict[str, list[DesiredPort]], set[str]]:
    """The networks the node's VMs are on (with the other nodes carrying each tenant one as
    VXLAN peers), each VM's ports, and the ids of the ports' security groups."""
    live = (Port.instance_id == Instance.id, Instance.deleting.is_(False))
    here = or_(Instance.node_id == node.id, Instance.migration_target_node_id == node.id)
    ports = db.scalars(select(Port).join(Instance, live[0]).where(
        live[1], here).order_by(Port.created_at, Port.id)
        .options(joinedload(Port.network), selectinload(Port.security_groups),
                 selectinload(Port.addresses).joinedload(PortAddress.subnet)))
    nets: dict[str, Network] = {}
    by_vm: dict[str, list[DesiredPort]] = {}
    group_ids: set[str] = set()
    for p in ports:
        nets.setdefault(p.network_id, p.network)
        by_vm.setdefault(str(p.instance_id), []).append(_port(p))
        group_ids.update(g.id for g in p.security_groups)
    peers: dict[str, set[str]] = {}
    tenant = [n.id for n in nets.values() if n.kind == NetworkKind.TENANT.value]
    if tenant:
        carriers = [(net_id, node_id) for net_id, node_id in carrier_rows(db, tenant)
                    if node_id != node.id]
        underlays: dict[str, dict[str, object]] = {
            node_id: inventory for node_id, inventory in db.execute(
                select(Node.id, Node.inventory).where(
                    Node.id.in_({node_id for _, node_id in carriers})))} if carriers else {}
        for net_id, node_id in carriers:
            underlay = (underlays.get(node_id) or {}).get("underlay_ip")
            if underlay:
                peers.setdefault(net_id, set()).add(str(underlay))
    networks = [
        DesiredNetwork(id=n.id, name=n.name, kind=NetworkKind(n.kind), mtu=n.mtu, vlan=n.vlan,
                       physical=n.physical, vni=n.vni, peers=sorted(peers.get(n.id, set())))
        for n in sorted(nets.values(), key=lambda n: n.name)
    ]
    return networks, by_vm, group_ids


def carrier_rows(db: Session, network_ids: list[str]) -> list[tuple[str, str]]:
    """(network id, node id) for each node carrying one of these networks: a live VM of
    its has a port on it, or is migrating to it."""
    live = (Port.instance_id == Instance.id, Instance.deleting.is_(False))
    rows = db.execute(select(Port.network_id, Instance.node_id).join(Instance, live[0])
                      .where(live[1], Port.network_id.in_(network_ids)).distinct())
    moving = db.execute(select(Port.network_id, Instance.migration_target_node_id)
                        .join(Instance, live[0])
                        .where(live[1], Port.network_id.in_(network_ids),
                               Instance.migration_target_node_id.is_not(None)).distinct())
    return sorted({(str(n), str(c)) for n, c in [*rows, *moving]})


def _security_groups(db: Session, port_group_ids: set[str]) -> list[DesiredSecurityGroup]:
    """The groups of the node's ports and those their rules name as remote group, each
    with its rules and the plain addresses of its ports (region-wide, live VMs' or free)."""
    groups = {g.id: g for g in (db.get(SecurityGroup, i) for i in port_group_ids) if g}
    for g in list(groups.values()):
        for r in g.rules:
            if r.remote_group is not None:
                groups.setdefault(r.remote_group.id, r.remote_group)
    if not groups:
        return []
    members: dict[str, set[str]] = {}
    rows = db.execute(
        select(port_security_groups.c.group_id, PortAddress.address)
        .join(Port, Port.id == port_security_groups.c.port_id)
        .join(PortAddress, PortAddress.port_id == Port.id)
        .outerjoin(Instance, Instance.id == Port.instance_id)
        .where(port_security_groups.c.group_id.in_(list(groups)),
               or_(Port.instance_id.is_(None), Instance.deleting.is_(False))))
    for group_id, address in rows:
        members.setdefault(group_id, set()).add(address)
    return [
        DesiredSecurityGroup(
            id=g.id, name=g.name,
            rules=[SecurityRule(
                direction=r.direction, ethertype=r.ethertype,  # type: ignore[arg-type]
                protocol=r.protocol,  # type: ignore[arg-type]
                port_min=r.port_min, port_max=r.port_max, remote_cidr=r.remote_cidr,
                remote_group=r.remote_group_id) for r in g.rules],
            member_addresses=sorted(members.get(g.id, set()),
                                    key=lambda a: ipaddress.ip_address(a).packed.rjust(16)))
        for g in sorted(groups.values(), key=lambda g: g.name)
    ]


def _port(p: Port) -> DesiredPort:
    addresses: list[str] = []
    gateways: list[str] = []
    dns: list[str] = []
    for a in sorted(p.addresses, key=lambda a: (a.subnet.created_at, a.subnet.id)):
        prefix = ipaddress.ip_network(a.subnet.cidr).prefixlen
        addresses.append(f"{a.address}/{prefix}")
        if a.subnet.gateway:
            gateways.append(a.subnet.gateway)
        dns.extend(d for d in a.subnet.dns if d not in dns)
    return DesiredPort(id=p.id, network_id=p.network_id, mac=p.mac, addresses=addresses,
                       gateways=gateways, dns=dns, mtu=p.network.mtu,
                       security_groups=sorted(g.id for g in p.security_groups), dhcp=p.dhcp,
                       xapi_network=p.network.xapi_network)


def _volume(v: Volume) -> DesiredVolume:
    return DesiredVolume(
        id=v.id, name=v.name, pool=v.pool, size_gib=v.size_gib, present=not v.deleting,
        snapshots=list(v.snapshots),
        clone_of=VolumeClone(volume_id=v.clone_of_volume_id, snapshot=v.clone_of_snapshot)
        if v.clone_of_volume_id and v.clone_of_snapshot else None,
        rollback=VolumeRollback(snapshot=v.rollback_snapshot, seq=v.rollback_seq)
        if v.rollback_snapshot and v.rollback_seq else None,
    )


def _vm(i: Instance, volumes: list[VolumeAttachment], ports: list[DesiredPort]) -> DesiredVm:
    return DesiredVm(
        id=i.id,
        name=i.name,
        vcpus=i.vcpus,
        memory_mib=i.memory_mib,
        root_disk_gib=i.root_disk_gib,
        image=ImageRef(
            id=i.image.id,
            name=i.image.name,
            disk_format=i.image.disk_format,  # type: ignore[arg-type]
            size_bytes=i.image.size_bytes,
            sha256=i.image.sha256,
        ),
        power=PowerState(i.desired_power),
        power_seq=i.power_seq,
        power_mode=PowerMode(i.power_mode),
        seed=CloudInitSeed(instance_id=i.id, hostname=i.hostname, user_data=i.user_data,
                           public_keys=list(i.ssh_keys or []), default_user=i.default_user),
        machine=machine_spec(i),
        volumes=volumes,
        flatten_root=i.flatten_root,
        adopt_disk=i.disk_made,
        ports=ports,
        gpus=[g.address for g in i.gpus],
        vgpus=[DesiredVgpu(uuid=v.id, parent=v.parent_address, type_id=v.type_id)
               for v in i.vgpus],
    )


def machine_spec(i: Instance) -> MachineSpec:
    """The instance's virtual hardware, as its row holds it."""
    return MachineSpec.model_validate({"firmware": i.firmware, "secure_boot": i.secure_boot,
                                       "machine": i.machine, "disk_bus": i.disk_bus})
