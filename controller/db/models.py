"""The controller's tables: desired state, what agents report, and the audit trail."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(t: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Node(Base):
    """A server running an agent. `generation` numbers its desired state."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    cert_serial: Mapped[str] = mapped_column(String(64))
    # the serial it renewed away from, still accepted until the agent first calls with the
    # new one: an agent that crashed before saving its new certificate is not locked out
    previous_cert_serial: Mapped[str | None] = mapped_column(String(64), default=None)
    cert_expires_at: Mapped[datetime | None] = mapped_column(default=None)  # None: before 0015
    cpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    kvm_usable: Mapped[bool] = mapped_column(Boolean, default=False)
    inventory: Mapped[dict[str, Any]] = mapped_column(default=dict)
    storage_status: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # what the agent last reported failing (agent.protocol.NodeFailure, as JSON)
    failures: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=list)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    applied_generation: Mapped[int] = mapped_column(Integer, default=-1)
    last_seen_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # an operator's key=value labels: the rollout's inventory groups nodes by them
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # up/down/new as last told in an event (controller.services.events.announce_node_states)
    announced_state: Mapped[str | None] = mapped_column(String(8), default=None)
    # takes no new VMs; its VMs are moved away (`vauban node maintenance`)
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # powered off through its BMC and cut off from Ceph by a failover; takes no VMs until
    # `vauban node recover`
    fenced_at: Mapped[datetime | None] = mapped_column(default=None)
    # when its agent last fenced itself (agent.fencing; None: not fenced), and the fence the
    # controller cleared: sent back in its desired state, the agent then starts VMs again
    self_fenced_at: Mapped[datetime | None] = mapped_column(default=None)
    fence_cleared_at: Mapped[datetime | None] = mapped_column(default=None)
    # where other nodes reach its libvirtd and QEMU for a migration (its underlay address, an
    # IP SAN of its hypervisor certificate), and that certificate's serial: None before the
    # agent first asked for one
    migration_address: Mapped[str | None] = mapped_column(String(45), default=None)
    hypervisor_cert_serial: Mapped[str | None] = mapped_column(String(64), default=None)

    instances: Mapped[list[Instance]] = relationship(back_populates="node",
                                                     foreign_keys="Instance.node_id")


class Image(Base):
    """A guest disk image held by the controller; agents fetch it by id."""

    __tablename__ = "images"
    # the list's keyset order (controller/api/paging.py)
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_images_project_name"),
                      Index("ix_images_name_id", "name", "id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63))
    # None: a public image, shared read-only with every project
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), default=None,
                                                   index=True)
    project: Mapped[Project | None] = relationship()
    disk_format: Mapped[str] = mapped_column(String(8))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    virtual_size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    os: Mapped[str | None] = mapped_column(String(63), default=None)
    min_disk_gib: Mapped[int] = mapped_column(Integer, default=1)
    # the firmware it boots with ("bios", "uefi" or "bios,uefi"), and whether its boot
    # chain is signed for Secure Boot: as its importer said
    firmware: Mapped[str] = mapped_column(String(16), default="bios", server_default="bios")
    secure_boot: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImageTombstone(Base):
    """A deleted image: nodes remove their stored copy of it (ids are never reused)."""

    __tablename__ = "image_tombstones"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    deleted_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class InstanceTombstone(Base):
    """A deleted VM: its node removes its disks too when it finds the VM's leftovers (a
    VM merely gone from a node keeps them: it may run elsewhere from them)."""

    __tablename__ = "instance_tombstones"
    __table_args__ = (Index("ix_instance_tombstones_node_id_deleted_at", "node_id",
                            "deleted_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(36))
    deleted_at: Mapped[datetime] = mapped_column(default=utcnow)


class Instance(Base):
    """A VM: what the operator wants (desired_*) and what its node last reported (observed_*)."""

    __tablename__ = "instances"
    # the list's keyset order (controller/api/paging.py)
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_instances_project_name"),
                      Index("ix_instances_name_id", "name", "id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    project: Mapped[Project | None] = relationship()
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    root_disk_gib: Mapped[int | None] = mapped_column(Integer, default=None)
    hostname: Mapped[str] = mapped_column(String(63))
    user_data: Mapped[str] = mapped_column(Text, default="")
    ssh_keys: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    default_user: Mapped[str | None] = mapped_column(String(32), default=None)
    # its virtual hardware: agent.protocol.MachineSpec
    firmware: Mapped[str] = mapped_column(String(8), default="bios", server_default="bios")
    secure_boot: Mapped[bool] = mapped_column(Boolean, default=False)
    machine: Mapped[str] = mapped_column(String(8), default="i440fx", server_default="i440fx")
    disk_bus: Mapped[str] = mapped_column(String(16), default="virtio-blk",
                                          server_default="virtio-blk")
    desired_power: Mapped[str] = mapped_column(String(16), default="running")
    power_seq: Mapped[int] = mapped_column(Integer, default=1)
    # how the node carries out power action power_seq: agent.protocol.PowerMode
    power_mode: Mapped[str] = mapped_column(String(16), default="normal",
                                            server_default="normal")
    deleting: Mapped[bool] = mapped_column(Boolean, default=False)
    flatten_root: Mapped[bool] = mapped_column(Boolean, default=False)
    # its root disk was made (reported running or stopped once): a node taking it over
    # (moved while stopped, restarted elsewhere) defines it on that disk
    disk_made: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # restarted on another node when its node is lost (after the node is fenced)
    ha: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    observed_state: Mapped[str | None] = mapped_column(String(16), default=None)
    observed_power_seq: Mapped[int] = mapped_column(Integer, default=0)
    observed_error: Mapped[str | None] = mapped_column(Text, default=None)
    console_log: Mapped[str | None] = mapped_column(Text, default=None)
    # what its guest agent last said (agent.protocol.GuestInfo), None without one
    observed_guest: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # a live migration in flight: to this node, numbered migration_seq; phase "preparing"
    # (the target readies itself) then "migrating" (the source moves it)
    migration_target_node_id: Mapped[str | None] = mapped_column(
        ForeignKey("nodes.id", name="fk_instances_migration_target_node_id_nodes"),
        index=True, default=None)
    migration_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    migration_phase: Mapped[str | None] = mapped_column(String(16), default=None)
    migration_bandwidth_mib_s: Mapped[int] = mapped_column(Integer, default=0,
                                                           server_default="0")
    migration_max_downtime_ms: Mapped[int] = mapped_column(Integer, default=300,
                                                           server_default="300")
    # the move copies the root disk to the target (local storage), as decided when asked
    migration_copy_disks: Mapped[bool] = mapped_column(Boolean, default=False,
                                                       server_default=false())
    # its hypervisor's own uuid where that is not ours (an XCP-ng pool's VM), as reported
    hypervisor_uuid: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    node: Mapped[Node] = relationship(back_populates="instances", foreign_keys=[node_id])
    migration_target: Mapped[Node | None] = relationship(
        foreign_keys=[migration_target_node_id])
    image: Mapped[Image] = relationship()
    gpus: Mapped[list[GpuAssignment]] = relationship(
        back_populates="instance", cascade="all, delete-orphan", order_by="GpuAssignment.address")
    vgpus: Mapped[list[VgpuAssignment]] = relationship(
        back_populates="instance", cascade="all, delete-orphan")


class GpuAssignment(Base):
    """A whole GPU given to a VM; the unique key forbids giving one GPU to two VMs.

    Kept until the VM's record goes (its node confirmed the delete), so the GPU is
    not offered again while the old domain may still hold it.
    """

    __tablename__ = "gpu_assignments"
    __table_args__ = (UniqueConstraint("node_id", "address"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    address: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(128))
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    instance: Mapped[Instance] = relationship(back_populates="gpus")


class VgpuAssignment(Base):
    """A vGPU (mediated device) of one type carved from a GPU for a VM; id is its UUID."""

    __tablename__ = "vgpu_assignments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    parent_address: Mapped[str] = mapped_column(String(16))
    type_id: Mapped[str] = mapped_column(String(64))
    type_name: Mapped[str] = mapped_column(String(128))
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    instance: Mapped[Instance] = relationship(back_populates="vgpus")


class Volume(Base):
    """A block volume on shared storage, looked after by one node (its steward).

    While attached, the steward is the VM's node; detached, any node that is up.
    """

    __tablename__ = "volumes"
    # the list's keyset order (controller/api/paging.py)
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_volumes_project_name"),
                      Index("ix_volumes_name_id", "name", "id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    project: Mapped[Project | None] = relationship()
    pool: Mapped[str] = mapped_column(String(63))
    size_gib: Mapped[int] = mapped_column(Integer)
    steward_node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("instances.id"), default=None,
                                                    index=True)
    target: Mapped[str | None] = mapped_column(String(8), default=None)
    snapshots: Mapped[list[str]] = mapped_column(JSON, default=list)
    clone_of_volume_id: Mapped[str | None] = mapped_column(String(36), default=None)
    clone_of_snapshot: Mapped[str | None] = mapped_column(String(63), default=None)
    rollback_snapshot: Mapped[str | None] = mapped_column(String(63), default=None)
    rollback_seq: Mapped[int] = mapped_column(Integer, default=0)
    deleting: Mapped[bool] = mapped_column(Boolean, default=False)
    observed_size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    observed_used_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    observed_snapshots: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    # those of observed_snapshots taken with the guest's filesystems frozen
    observed_quiesced_snapshots: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    observed_rollback_seq: Mapped[int] = mapped_column(Integer, default=0)
    observed_attached_to: Mapped[str | None] = mapped_column(String(36), default=None)
    observed_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    steward: Mapped[Node] = relationship()
    instance: Mapped[Instance | None] = relationship()


class Network(Base):
    """A provider network (a VLAN on a physical interface) or a tenant one (a VXLAN overlay)."""

    __tablename__ = "networks"
    # the list's keyset order (controller/api/paging.py)
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_networks_project_name"),
                      Index("ix_networks_name_id", "name", "id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63))
    # None: a provider network, shared with every project (its VMs attach to it)
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), default=None,
                                                   index=True)
    project: Mapped[Project | None] = relationship()
    kind: Mapped[str] = mapped_column(String(16))
    vlan: Mapped[int | None] = mapped_column(Integer, default=None)
    physical: Mapped[str | None] = mapped_column(String(63), default=None)
    vni: Mapped[int | None] = mapped_column(Integer, unique=True, default=None)
    mtu: Mapped[int] = mapped_column(Integer)
    # the XCP-ng pool network (its name_label) a pool's VMs join for this provider network
    xapi_network: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    subnets: Mapped[list[Subnet]] = relationship(
        back_populates="network", cascade="all, delete-orphan", order_by="Subnet.created_at")


class Subnet(Base):
    """An IPv4 or IPv6 range of a network; ports get their addresses from it."""

    __tablename__ = "subnets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"))
    cidr: Mapped[str] = mapped_column(String(64))
    gateway: Mapped[str | None] = mapped_column(String(64), default=None)
    dns: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    network: Mapped[Network] = relationship(back_populates="subnets")


class Port(Base):
    """A NIC on a network, with one address per subnet; a VM's while instance_id is set."""

    __tablename__ = "ports"
    # the list's keyset order (controller/api/paging.py)
    __table_args__ = (Index("ix_ports_created_at_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    project: Mapped[Project | None] = relationship()
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("instances.id"), default=None,
                                                    index=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    # the seed tells the guest to configure the NIC's IPv4 by DHCP (its node answers it)
    dhcp: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    network: Mapped[Network] = relationship()
    instance: Mapped[Instance | None] = relationship()
    addresses: Mapped[list[PortAddress]] = relationship(
        back_populates="port", cascade="all, delete-orphan")
    security_groups: Mapped[list[SecurityGroup]] = relationship(
        secondary="port_security_groups", order_by="SecurityGroup.name")


class PortAddress(Base):
    """An address of a port in one subnet; the unique key forbids handing one out twice."""

    __tablename__ = "port_addresses"
    __table_args__ = (UniqueConstraint("subnet_id", "address"),)

    port_id: Mapped[str] = mapped_column(ForeignKey("ports.id"), primary_key=True)
    subnet_id: Mapped[str] = mapped_column(ForeignKey("subnets.id"), primary_key=True)
    address: Mapped[str] = mapped_column(String(64))

    port: Mapped[Port] = relationship(back_populates="addresses")
    subnet: Mapped[Subnet] = relationship()


port_security_groups = Table(
    "port_security_groups",
    Base.metadata,
    Column("port_id", ForeignKey("ports.id"), primary_key=True),
    Column("group_id", ForeignKey("security_groups.id"), primary_key=True),
)


class SecurityGroup(Base):
    """A named set of allow rules; a port in no group is not filtered."""

    __tablename__ = "security_groups"
    # the list's keyset order (controller/api/paging.py)
    __table_args__ = (UniqueConstraint("project_id", "name",
                                       name="uq_security_groups_project_name"),
                      Index("ix_security_groups_name_id", "name", "id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    project: Mapped[Project | None] = relationship()
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    rules: Mapped[list[SecurityGroupRule]] = relationship(
        back_populates="group", cascade="all, delete-orphan",
        foreign_keys="SecurityGroupRule.group_id",
        order_by="(SecurityGroupRule.created_at, SecurityGroupRule.id)")


class SecurityGroupRule(Base):
    """One allow rule: traffic of a direction, ethertype, protocol (and ports) from or to a
    CIDR or the ports of a group (remote_group_id), or anywhere when neither is set."""

    __tablename__ = "security_group_rules"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    group_id: Mapped[str] = mapped_column(ForeignKey("security_groups.id"))
    direction: Mapped[str] = mapped_column(String(8))
    ethertype: Mapped[str] = mapped_column(String(8))
    protocol: Mapped[str] = mapped_column(String(8))
    port_min: Mapped[int | None] = mapped_column(Integer, default=None)
    port_max: Mapped[int | None] = mapped_column(Integer, default=None)
    remote_cidr: Mapped[str | None] = mapped_column(String(64), default=None)
    remote_group_id: Mapped[str | None] = mapped_column(
        ForeignKey("security_groups.id"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    group: Mapped[SecurityGroup] = relationship(back_populates="rules", foreign_keys=[group_id])
    remote_group: Mapped[SecurityGroup | None] = relationship(foreign_keys=[remote_group_id])


class Operation(Base):
    """A long action the API accepted with 202; finished when the node reports the outcome."""

    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # the project of its target; None for the region's own (a node, a rollout)
    project_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    project: Mapped[Project | None] = relationship(
        primaryjoin="foreign(Operation.project_id) == Project.id", viewonly=True)
    kind: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(36), index=True)
    target_name: Mapped[str] = mapped_column(String(63))
    node_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    expect_power_seq: Mapped[int] = mapped_column(Integer, default=0)
    expect_generation: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    progress: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    message: Mapped[str | None] = mapped_column(Text, default=None)  # how it stands, in words
    requested_by: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class NodeBmc(Base):
    """How the controller reaches a node's baseboard management controller, to power it
    off before its VMs are restarted elsewhere. The password is sealed with the region
    key for this node alone (controller.secretbox)."""

    __tablename__ = "node_bmcs"

    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # ipmi
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(64))
    password_sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class XapiPool(Base):
    """An XCP-ng pool managed as one node: how its agent reaches the pool master. The
    password is sealed with the region key for this node alone (controller.secretbox);
    `members` pins each host's certificate: [{host_uuid, name, address, sha256}]."""

    __tablename__ = "xapi_pools"

    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    url: Mapped[str] = mapped_column(String(255))
    username: Mapped[str] = mapped_column(String(64))
    password_sealed: Mapped[str] = mapped_column(Text)
    pool_uuid: Mapped[str] = mapped_column(String(36), unique=True)
    pool_name: Mapped[str] = mapped_column(String(255))
    members: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # the storage repository its VMs' disks and images go to; None: the pool's default SR
    sr_uuid: Mapped[str | None] = mapped_column(String(36), default=None)
    # the VM template its VMs are cloned from; None: "Other install media"
    template: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


FAILOVER_OPEN = ("detected", "powered-off", "fenced")  # a failover under way
OPEN_FAILOVERS = "state IN ('detected', 'powered-off', 'fenced')"


class Failover(Base):
    """The HA VMs of a lost node restarted elsewhere, after the node is fenced.

    States, each committed before the next step starts: detected (fence it: power off
    through its BMC), powered-off (cut it off from Ceph), fenced (restart its HA VMs
    elsewhere), done; or cancelled (the node came back before it was fenced). `reason`
    says what it waits on, in words."""

    __tablename__ = "failovers"
    # one open failover per node (controller.ha.failover.ACTIVE)
    __table_args__ = (Index("uq_failovers_open_node", "node_id", unique=True,
                            sqlite_where=text(OPEN_FAILOVERS),
                            postgresql_where=text(OPEN_FAILOVERS)),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="detected", index=True)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # a controller process works on it until then (a step may take a BMC's timeout)
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class JoinToken(Base):
    """A one-time secret that lets one new agent join; only its hash is kept."""

    __tablename__ = "join_tokens"
    __table_args__ = (Index("ix_join_tokens_created_at_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(default=None)
    used_by_node_id: Mapped[str | None] = mapped_column(String(36), default=None)
    # a node made beforehand (an enrolled XCP-ng pool) that this token gives its
    # certificate to; None: the join makes a new node
    node_id: Mapped[str | None] = mapped_column(String(36), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Project(Base):
    """A tenant: its VMs, volumes, networks, security groups, ports and private images
    are its own, seen and touched only by its members (and the region's roles)."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(String(255), default="")
    # how much it may hold (controller/services/quotas.py); a quota not set is no limit
    quotas: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the TOTP seed, sealed with the region key for "totp-seed/<id>" (controller.secretbox);
    # None: no second factor enrolled
    totp_seed: Mapped[str | None] = mapped_column(String(512), default=None)
    # a seed being enrolled, active once a code of it is confirmed (then moved to totp_seed)
    totp_pending_seed: Mapped[str | None] = mapped_column(String(512), default=None)
    # the last time step (Unix time // 30) whose code was accepted: that step's code and
    # every earlier one are refused from then on (no replay)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, default=None)

    bindings: Mapped[list[RoleBinding]] = relationship(
        back_populates="user", cascade="all, delete-orphan", order_by="RoleBinding.role")


class RoleBinding(Base):
    """A role a user holds: a region role (project None) or a role in one project."""

    __tablename__ = "role_bindings"
    __table_args__ = (UniqueConstraint("user_id", "role", "project_id",
                                       name="uq_role_bindings_user_role_project"),
                      Index("ix_role_bindings_created_at_id", "created_at", "id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), default=None,
                                                   index=True)
    created_by: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship(back_populates="bindings")
    project: Mapped[Project | None] = relationship()


class ApiToken(Base):
    """A bearer token for the API, or a browser's session; only hashes are kept.

    `kind` "api": a bearer token, `expires_at` fixed at creation; a login's token acts
    with all its user's roles, a named token (`name` set) with at most `role` (in
    `project_id` for a project role), never more than its user holds at the time of each
    request. `kind` "session": the secret of a session cookie (never accepted as a bearer
    token, nor an API token as a cookie), `csrf_sha256` the hash of its CSRF token,
    `expires_at` its idle deadline, moved on at use but never past `created_at` + the
    sessions' absolute lifetime."""

    __tablename__ = "api_tokens"
    # a user's list of tokens in its keyset order (controller/api/paging.py)
    __table_args__ = (Index("ix_api_tokens_user_id_created_at_id", "user_id", "created_at",
                            "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(63), default=None)
    role: Mapped[str | None] = mapped_column(String(32), default=None)
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), default=None)
    expires_at: Mapped[datetime] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    kind: Mapped[str] = mapped_column(String(16), default="api", server_default="api")
    csrf_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship()
    project: Mapped[Project | None] = relationship()


class LoginThrottle(Base):
    """Failed logins counted under one key ("user:<name>" or "source:<address>"), whether
    or not the user exists, and until when logins under it are refused."""

    __tablename__ = "login_throttles"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[datetime] = mapped_column()
    locked_until: Mapped[datetime | None] = mapped_column(default=None)


class AuditEvent(Base):
    """One entry of the audit trail: who (with which token, from which address) did what to
    which object, and how it ended; chained to the entry before it by `prev_hash`.

    Append-only: rows are written by controller.services.audit only, never updated or
    deleted (triggers refuse both); `seq` numbers them 1, 2, 3... without gaps."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(63))
    token_id: Mapped[str | None] = mapped_column(String(36), default=None)
    source: Mapped[str | None] = mapped_column(String(64), default=None)
    action: Mapped[str] = mapped_column(String(63))
    target: Mapped[str] = mapped_column(String(255))
    project: Mapped[str | None] = mapped_column(String(63), default=None)
    admin_in_project: Mapped[bool | None] = mapped_column(Boolean, default=None)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The audit chain's last entry, one row (id 1): appends lock it, so they take turns."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class FleetHost(Base):
    """A server the controller reaches over SSH to roll software out to: its address and
    its pinned host key (never learnt on first use). Its node, once joined, has its name."""

    __tablename__ = "fleet_hosts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=22)
    user: Mapped[str] = mapped_column(String(32), default="root")
    host_key: Mapped[str] = mapped_column(Text)  # "ssh-ed25519 AAAA...", as in known_hosts
    role: Mapped[str] = mapped_column(String(16), default="node")  # node | controller
    qualification: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_by: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RolloutJob(Base):
    """One run of the site playbook over some hosts, batch by batch."""

    __tablename__ = "rollout_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # running, succeeded, failed
    upgrade: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[str] = mapped_column(String(32))
    batch_size: Mapped[int] = mapped_column(Integer)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    # a host's tasks in the last rollout that succeeded with the same tags (0: unknown)
    tasks_expected: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    worker_pid: Mapped[int | None] = mapped_column(Integer, default=None)
    operation_id: Mapped[str | None] = mapped_column(String(36), default=None)
    requested_by: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    hosts: Mapped[list[RolloutHost]] = relationship(
        back_populates="job", order_by="(RolloutHost.batch, RolloutHost.host)")


class RolloutHost(Base):
    """One host's progress in a rollout: its batch, the task it is at, its counts."""

    __tablename__ = "rollout_hosts"
    __table_args__ = (UniqueConstraint("job_id", "host"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("rollout_jobs.id"), index=True)
    host: Mapped[str] = mapped_column(String(63))
    batch: Mapped[int] = mapped_column(Integer)
    # pending, running, ok, changed, failed, unreachable, not run
    state: Mapped[str] = mapped_column(String(16), default="pending")
    task: Mapped[str] = mapped_column(String(255), default="")
    tasks_done: Mapped[int] = mapped_column(Integer, default=0)
    changed: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text, default=None)

    job: Mapped[RolloutJob] = relationship(back_populates="hosts")


class ConsoleSession(Base):
    """One console of a VM asked for by a user: its ticket (kept hashed), then the tunnel.

    `state` moves forward only: "issued" (ticket made) → "waiting" (ticket used by its
    user's websocket, the node's agent not told yet) → "dispatched" (the agent was told)
    → "connected" (the agent dialed back) → "closed". No foreign keys: a console's rows
    outlive its VM and user for the record, and never stand in the way of deleting them.
    """

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    ticket_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(8))  # "vnc" or "serial"
    instance_id: Mapped[str] = mapped_column(String(36), index=True)
    node_id: Mapped[str] = mapped_column(String(36), index=True)
    user_id: Mapped[str] = mapped_column(String(36))
    state: Mapped[str] = mapped_column(String(16), default="issued", index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    expires_at: Mapped[datetime] = mapped_column()
    connected_at: Mapped[datetime | None] = mapped_column(default=None)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)
    close_reason: Mapped[str | None] = mapped_column(Text, default=None)


EVENT_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite: a rowid, increasing


class Event(Base):
    """A change told to event-stream subscribers (controller.services.events), written in
    the transaction of the change it tells of; pruned by age and count."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    type: Mapped[str] = mapped_column(String(32))  # <kind>.changed or <kind>.deleted
    project_id: Mapped[str | None] = mapped_column(String(36), default=None)
    object_kind: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(36))
    object_name: Mapped[str] = mapped_column(String(255), default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
