"""Each node's desired state, numbered by a generation that grows with every change."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import (
    CloudInitSeed,
    DesiredNetwork,
    DesiredPort,
    DesiredState,
    DesiredVm,
    DesiredVolume,
    ImageRef,
    NetworkKind,
    PowerState,
    VolumeAttachment,
    VolumeClone,
    VolumeRollback,
)
from controller.db.models import ImageTombstone, Instance, Network, Node, Port, Volume

TOMBSTONE_DAYS = timedelta(days=30)  # a node down longer keeps a deleted image's copy


def bump(node: Node) -> int:
    """Mark the node's desired state changed; the caller commits, then notifies waiters."""
    node.generation += 1
    return node.generation


def build(db: Session, node: Node) -> DesiredState:
    """Every VM the node should have: all its instances that are not being deleted."""
    instances = db.scalars(
        select(Instance)
        .where(Instance.node_id == node.id, Instance.deleting.is_(False))
        .order_by(Instance.created_at)
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
    networks, ports = _networking(db, node)
    return DesiredState(
        node_id=node.id,
        generation=node.generation,
        vms=[_vm(i, attached.get(i.id, []), ports.get(i.id, [])) for i in instances],
        volumes=[_volume(v) for v in stewarded],
        retired_images=list(retired),
        networks=networks,
    )


def _networking(
    db: Session, node: Node
) -> tuple[list[DesiredNetwork], dict[str, list[DesiredPort]]]:
    """The networks the node's VMs are on (with the other nodes carrying each tenant one as
    VXLAN peers), and each VM's ports."""
    live = (Port.instance_id == Instance.id, Instance.deleting.is_(False))
    ports = db.scalars(select(Port).join(Instance, live[0]).where(
        live[1], Instance.node_id == node.id).order_by(Port.created_at, Port.id))
    nets: dict[str, Network] = {}
    by_vm: dict[str, list[DesiredPort]] = {}
    for p in ports:
        nets.setdefault(p.network_id, p.network)
        by_vm.setdefault(str(p.instance_id), []).append(_port(p))
    peers: dict[str, set[str]] = {}
    tenant = [n.id for n in nets.values() if n.kind == NetworkKind.TENANT.value]
    if tenant:
        rows = db.execute(select(Port.network_id, Instance.node_id).join(Instance, live[0])
                          .where(live[1], Port.network_id.in_(tenant),
                                 Instance.node_id != node.id).distinct())
        for net_id, node_id in rows:
            other = db.get(Node, node_id)
            underlay = (other.inventory or {}).get("underlay_ip") if other else None
            if underlay:
                peers.setdefault(net_id, set()).add(str(underlay))
    networks = [
        DesiredNetwork(id=n.id, name=n.name, kind=NetworkKind(n.kind), mtu=n.mtu, vlan=n.vlan,
                       physical=n.physical, vni=n.vni, peers=sorted(peers.get(n.id, set())))
        for n in sorted(nets.values(), key=lambda n: n.name)
    ]
    return networks, by_vm


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
                       gateways=gateways, dns=dns, mtu=p.network.mtu)


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
        seed=CloudInitSeed(instance_id=i.id, hostname=i.hostname, user_data=i.user_data),
        volumes=volumes,
        flatten_root=i.flatten_root,
        ports=ports,
    )
