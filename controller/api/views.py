"""Turn database rows into API read models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import GuestInfo
from controller import schemas
from controller.db.models import (
    Failover,
    Instance,
    Network,
    Node,
    NodeBmc,
    Operation,
    Port,
    SecurityGroup,
    Volume,
    XapiPool,
)
from controller.ha.ceph import HeartbeatView
from controller.services import networks, operations, scheduler, security_groups, tenancy
from controller.services.desired import machine_spec
from controller.services.instances import display_state
from controller.services.nodes import node_state
from controller.services.volumes import display_state as volume_state
from controller.services.xcpng import shown as format_fingerprint


def node_view(n: Node, usage: scheduler.Usage, down_after_s: float,
              storage: HeartbeatView | None = None,
              failover: Failover | None = None, bmc: NodeBmc | None = None,
              pool: XapiPool | None = None) -> schemas.Node:
    now = datetime.now(UTC)
    beat = schemas.StorageHeartbeat(seq=storage.seq, changed_at=storage.changed_at,
                                    stale=storage.stale, detail=storage.describe(now)) \
        if storage is not None else None
    return schemas.Node(
        id=n.id, name=n.name, state=node_state(n, datetime.now(UTC), down_after_s),  # type: ignore[arg-type]
        maintenance=n.maintenance,
        cpus=n.cpus, memory_mib=n.memory_mib, kvm_usable=n.kvm_usable,
        vcpus_used=usage.vcpus, memory_mib_used=usage.memory_mib, instances=usage.instances,
        generation=n.generation, applied_generation=n.applied_generation,
        last_seen_at=n.last_seen_at, inventory=n.inventory, created_at=n.created_at,
        failures=[schemas.NodeFailure.model_validate(f) for f in n.failures or []],
        labels=n.labels or {}, cert_serial=n.cert_serial, cert_expires_at=n.cert_expires_at,
        storage_heartbeat=beat, self_fenced_at=n.self_fenced_at,
        fence_cleared_at=n.fence_cleared_at, fenced_at=n.fenced_at,
        failover={"id": failover.id, "state": failover.state, "reason": failover.reason,
                  "since": failover.created_at.isoformat()} if failover else None,
        migration_address=n.migration_address, hypervisor_cert_serial=n.hypervisor_cert_serial,
        bmc={"kind": bmc.kind, "address": bmc.address, "port": bmc.port,
             "username": bmc.username} if bmc else None,
        xcpng=_pool_view(pool) if pool else None,
    )


def _pool_view(pool: XapiPool) -> dict[str, Any]:
    """How a pool node is reached, its members' pins as AA:BB:… (never the password)."""
    return {"url": pool.url, "username": pool.username, "pool_uuid": pool.pool_uuid,
            "pool_name": pool.pool_name, "sr_uuid": pool.sr_uuid, "template": pool.template,
            "members": [{"host_uuid": m["host_uuid"], "name": m["name"], "address": m["address"],
                         "sha256": format_fingerprint(m["sha256"])} for m in pool.members]}


def instance_failures(db: Session, i: Instance, ports: list[Port]) -> list[schemas.NodeFailure]:
    """The failures its node reports that concern the instance: its own, its networks',
    the firewall's when a port of it is filtered, its volumes'."""
    mine = {("vm", i.id)} | {("network", p.network_id) for p in ports}
    if any(p.security_groups for p in ports):
        mine.add(("firewall", "security-groups"))
    mine |= {("volume", v) for v in db.scalars(select(Volume.id).where(Volume.instance_id == i.id))}
    return [schemas.NodeFailure.model_validate(f) for f in i.node.failures or []
            if (f.get("kind"), f.get("object_id")) in mine]


def instance_view(db: Session, i: Instance, down_after_s: float) -> schemas.Instance:
    up = node_state(i.node, datetime.now(UTC), down_after_s) == "up"
    ports = networks.instance_ports(db, i)
    return schemas.Instance(
        id=i.id, name=i.name, project=i.project,  # type: ignore[arg-type]
        state=display_state(i, up, operations.active_for(db, i.id)),
        desired_power=i.desired_power, node_id=i.node_id, node_name=i.node.name,
        migrating_to=i.migration_target.name if i.migration_target else None, ha=i.ha,
        hypervisor_uuid=i.hypervisor_uuid,
        image_id=i.image_id, image_name=i.image.name, vcpus=i.vcpus, memory_mib=i.memory_mib,
        root_disk_gib=i.root_disk_gib, hostname=i.hostname, ssh_keys=list(i.ssh_keys or []),
        default_user=i.default_user, error=i.observed_error,
        guest=GuestInfo.model_validate(i.observed_guest) if i.observed_guest else None,
        machine=machine_spec(i),
        console_log=i.console_log, created_at=i.created_at, updated_at=i.updated_at,
        ports=[schemas.InstancePort(network=p.network.name, mac=p.mac,
                                    addresses=_addresses(p), dhcp=p.dhcp,
                                    security_groups=sorted(g.name for g in p.security_groups))
               for p in ports],
        failures=instance_failures(db, i, ports),
        gpus=[schemas.InstanceGpu(address=g.address, model=g.model) for g in i.gpus],
        vgpus=[schemas.InstanceVgpu(uuid=v.id, parent=v.parent_address, type_id=v.type_id,
                                    type_name=v.type_name) for v in i.vgpus],
    )


def _addresses(p: Port) -> list[str]:
    return [a.address for a in sorted(p.addresses, key=lambda a: (a.subnet.created_at,
                                                                   a.subnet.id))]


def network_view(db: Session, n: Network) -> schemas.Network:
    return schemas.Network(
        id=n.id, name=n.name, project=n.project, kind=n.kind, vlan=n.vlan, physical=n.physical,  # type: ignore[arg-type]
        vni=n.vni, mtu=n.mtu, xapi_network=n.xapi_network,
        subnets=[schemas.Subnet(id=s.id, cidr=s.cidr, gateway=s.gateway, dns=list(s.dns),
                                created_at=s.created_at) for s in n.subnets],
        ports=networks.port_count(db, n), created_at=n.created_at,
    )


def port_view(p: Port) -> schemas.Port:
    return schemas.Port(
        id=p.id, project=p.project, network=p.network.name,  # type: ignore[arg-type]
        network_id=p.network_id,
        instance=p.instance.name if p.instance else None, mac=p.mac, addresses=_addresses(p),
        dhcp=p.dhcp, security_groups=sorted(g.name for g in p.security_groups),
        created_at=p.created_at,
    )


def security_group_view(db: Session, g: SecurityGroup) -> schemas.SecurityGroup:
    return schemas.SecurityGroup(
        id=g.id, name=g.name, project=g.project,  # type: ignore[arg-type]
        description=g.description,
        rules=[schemas.SecurityRule(
            id=r.id, direction=r.direction, ethertype=r.ethertype, protocol=r.protocol,
            port_min=r.port_min, port_max=r.port_max, remote_cidr=r.remote_cidr,
            remote_group=r.remote_group.name if r.remote_group else None,
            remote_group_id=r.remote_group_id, created_at=r.created_at)
            for r in g.rules],
        ports=security_groups.port_count(db, g), created_at=g.created_at,
    )


def operation_view(op: Operation) -> schemas.Operation:
    return schemas.Operation.model_validate(op)


def all_instances(db: Session) -> list[Instance]:
    """The VMs the caller sees (see tenancy.visible), by name."""
    return list(db.scalars(tenancy.visible(select(Instance), Instance.project_id)
                           .order_by(Instance.name, Instance.id)))


def volume_view(db: Session, v: Volume) -> schemas.Volume:
    return schemas.Volume(
        id=v.id, name=v.name, project=v.project,  # type: ignore[arg-type]
        state=volume_state(v, operations.active_for(db, v.id)),
        pool=v.pool, size_gib=v.size_gib, size_bytes=v.observed_size_bytes,
        used_bytes=v.observed_used_bytes, snapshots=list(v.snapshots),
        snapshot_consistency=snapshot_consistency(v),
        source=_source_name(db, v),
        attached_to=v.instance.name if v.instance else None, target=v.target,
        steward=v.steward.name, error=v.observed_error, created_at=v.created_at,
        updated_at=v.updated_at,
    )


def snapshot_consistency(v: Volume) -> dict[str, Literal["filesystem", "crash"]]:
    """Each snapshot asked for that the steward shows: quiesced ("filesystem") or not."""
    taken, quiesced = v.observed_snapshots or [], v.observed_quiesced_snapshots or []
    return {s: "filesystem" if s in quiesced else "crash" for s in v.snapshots if s in taken}


def _source_name(db: Session, v: Volume) -> str | None:
    if not v.clone_of_volume_id:
        return None
    parent = db.get(Volume, v.clone_of_volume_id)  # kept while it has clones
    return f"{parent.name if parent else v.clone_of_volume_id}@{v.clone_of_snapshot}"
