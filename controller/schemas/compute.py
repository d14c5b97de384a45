"""Nodes, images, VMs, their operations and the region's GPUs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from agent.protocol import GpuTelemetry, GuestInfo, MachineSpec, MigState, UtcDatetime
from controller.guest_input import check_ssh_keys, check_user_data
from controller.schemas.base import (
    NAME_PATTERN,
    NAME_RULE,
    PROJECT_INPUT,
    Input,
    Output,
    PageQuery,
    ProjectName,
)
from controller.states import GpuState, NodeState, OperationState


class NodeFailure(Output):
    """Something a node's agent could not do, with its cause in words."""

    kind: Literal["vm", "network", "firewall", "volume", "image"] = Field(
        description="What failed: a VM, network, firewall, volume or image action")
    object_id: str = Field(description="Id of the VM, network, volume or image; "
                           "'security-groups' for the node's firewall")
    action: str = Field(examples=["create", "ensure", "apply", "import"])
    message: str = Field(examples=["tenant network 5d0c…: VNI 1000 is already used by device "
                                   "vx-other on this node (UDP port 4789)"])
    retryable: bool = Field(description="The agent may succeed trying the same again")
    final: bool = Field(description="The agent gave up; it tries again once the request "
                        "changes")
    since: UtcDatetime = Field(description="When this request first failed")
    attempts: int = Field(description="Failed tries so far")
    next_retry_at: UtcDatetime | None = Field(description="When it is tried again; None once final")


class StorageHeartbeat(Output):
    """A node's storage heartbeat (Ceph regions) as this controller last read it: stale once
    its sequence number has not changed for the storage down delay by the controller's
    clock (the node's own clock is never trusted for it)."""

    seq: int | None = Field(description="The last sequence number read; null: none written")
    changed_at: UtcDatetime = Field(description="When the controller saw it change last "
                                    "(or began watching it)")
    stale: bool
    detail: str = Field(examples=["3 s ago", "stale since 2026-12-02T12:00:00+00:00"])


class Node(Output):
    """A node of the region, with what its agent last reported."""

    id: str
    name: str
    state: NodeState = Field(
        description="up: heartbeat recent; down: silent too long; new: joined, never reported"
    )
    maintenance: bool = Field(default=False, description="Takes no new VMs; its VMs are "
                              "moved away (vauban node maintenance)")
    cpus: int
    memory_mib: int
    kvm_usable: bool
    vcpus_used: int
    memory_mib_used: int
    instances: int
    generation: int
    applied_generation: int
    last_seen_at: UtcDatetime | None
    inventory: dict[str, Any]
    failures: list[NodeFailure] = Field(
        default_factory=list, description="What its agent last reported failing, oldest first")
    labels: dict[str, str] = Field(default_factory=dict, title="LabelMap",
                                   description="An operator's key=value labels")
    cert_serial: str = Field(description="Serial (hex) of its agent's current certificate")
    cert_expires_at: UtcDatetime | None = Field(
        description="When that certificate expires (its agent renews it well before); "
                    "null for a node that has not renewed since this was recorded")
    migration_address: str | None = Field(
        default=None, examples=["10.0.0.5"],
        description="Where other nodes reach its libvirtd and QEMU for migrations (an IP "
                    "of its hypervisor certificate); null before its agent asked for one")
    hypervisor_cert_serial: str | None = Field(
        default=None, description="Serial (hex) of its hypervisor certificate (libvirt TLS)")
    created_at: UtcDatetime
    storage_heartbeat: StorageHeartbeat | None = Field(
        default=None, description="Its storage heartbeat; null without Ceph or before the "
        "controller first read it")
    self_fenced_at: UtcDatetime | None = Field(
        default=None, description="When its agent destroyed its VMs for lack of both the "
        "controller and its storage (it starts none until the fence is cleared); null: "
        "not fenced")
    fence_cleared_at: UtcDatetime | None = Field(
        default=None, description="The fence an operator cleared last (vauban node "
        "clear-fence)")
    fenced_at: UtcDatetime | None = Field(
        default=None, description="When a failover fenced it (powered off, cut off from "
        "Ceph); it takes no VMs until recovered (vauban node recover)")
    failover: dict[str, Any] | None = Field(
        default=None, description="Its failover under way or last ended: state, reason")
    bmc: dict[str, Any] | None = Field(
        default=None, description="How its BMC is reached (kind, address, port, username; "
        "never the password), on a single node's answer; null: none configured, or a list")
    xcpng: dict[str, Any] | None = Field(
        default=None, description="For an XCP-ng pool, on a single node's answer: its URL, "
        "user, pool uuid and name, and each member's pinned certificate (never the password)")


class ImageImportQuery(Input):
    """Metadata of an image upload; the body is the image file itself."""

    name: str = Field(pattern=NAME_PATTERN, examples=["debian-12"], description=NAME_RULE)
    disk_format: Literal["raw", "qcow2"] = Field(examples=["qcow2"])
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Expected SHA-256 of the file")
    os: str | None = Field(default=None, max_length=63, examples=["debian12"])
    min_disk_gib: int = Field(default=1, ge=1, le=65536)
    project: str | None = PROJECT_INPUT
    public: bool = Field(default=False, description="Shared read-only with every project "
                         "(operators and region admins); else the project's own")
    firmware: Literal["bios", "uefi", "bios,uefi"] = Field(
        default="bios", description="The firmware it boots with: an image with an EFI "
        "system partition boots with UEFI")
    secure_boot: bool = Field(default=False, description="Its boot chain is signed for "
                              "Secure Boot (shim and a signed kernel); needs uefi")

    @model_validator(mode="after")
    def _public_or_project(self) -> ImageImportQuery:
        if self.public and self.project is not None:
            raise ValueError("a public image belongs to no project: give public or project")
        if self.secure_boot and "uefi" not in self.firmware:
            raise ValueError("secure_boot is a UEFI feature: give firmware uefi or bios,uefi")
        return self


class Image(Output):
    """A guest image held by the region."""

    id: str
    name: str
    project: ProjectName = None
    disk_format: str
    size_bytes: int
    virtual_size_bytes: int
    sha256: str
    os: str | None
    min_disk_gib: int
    firmware: str = Field(default="bios", examples=["bios,uefi"])
    secure_boot: bool = False
    created_at: UtcDatetime


class GpuRequest(Input):
    """Whole GPUs of one model, passed through to the VM."""

    model: str = Field(min_length=1, max_length=64, examples=["H100"],
                       description="Words of the model name (H100, RTX 4090) or its PCI id")
    count: int = Field(default=1, ge=1, le=16)


class InstanceCreate(Input):
    """A new VM."""

    name: str = Field(pattern=NAME_PATTERN, examples=["web-1"], description=NAME_RULE)
    project: str | None = PROJECT_INPUT
    image: str = Field(min_length=1, max_length=63, description="Image name or id")
    vcpus: int = Field(ge=1, le=256, examples=[2])
    memory_mib: int = Field(ge=64, le=4 * 1024 * 1024, examples=[1024])
    root_disk_gib: int | None = Field(default=None, ge=1, le=65536)
    hostname: str | None = Field(default=None, pattern=NAME_PATTERN, description="Default: name")
    user_data: Annotated[str, AfterValidator(check_user_data)] = Field(
        default="", max_length=64 * 1024,
        description="cloud-init user-data (#cloud-config must be a YAML mapping)")
    ssh_keys: Annotated[list[str], AfterValidator(check_ssh_keys)] = Field(
        default_factory=list, max_length=32,
        examples=[["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI… alice@laptop"]],
        description="OpenSSH public keys the image's default user logs in with")
    default_user: str | None = Field(
        default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$", examples=["ops"],
        description="Name of the image's default user (default: the image's own, e.g. "
        "debian); the keys are its")
    firmware: Literal["bios", "uefi"] = "bios"
    secure_boot: bool = Field(default=False, description="UEFI Secure Boot (needs firmware "
                              "uefi, machine q35 and an image signed for it)")
    machine: Literal["i440fx", "q35"] = "i440fx"
    disk_bus: Literal["virtio-blk", "virtio-scsi"] = Field(
        default="virtio-blk", description="Bus of the root disk (volumes are virtio-blk)")
    node: str | None = Field(default=None, description="Pin to this node (name or id)")
    start: bool = Field(default=True, description="Start the VM once it is created")
    ha: bool = Field(default=False, description="Restart it on another node when its node "
                     "is lost, once that node is fenced (shared storage only)")
    networks: list[str] = Field(
        default_factory=list, max_length=16, examples=[["lan", "dmz:192.0.2.10"]],
        description="One NIC per entry, in guest order: NETWORK (name or id) for the lowest "
        "free address of each subnet, or NETWORK:IP for that fixed address; either followed "
        "by ',dhcp' tells the guest to configure its IPv4 by DHCP (tenant networks: the "
        "VM's node answers with the same address), else the seed sets it statically")
    security_groups: list[str] | None = Field(
        default=None, max_length=16, examples=[["default", "web"]],
        description="Security groups (names or ids) of every NIC; default: the group "
        "'default'; [] for unfiltered NICs")
    gpus: list[GpuRequest] = Field(
        default_factory=list, max_length=4, examples=[[{"model": "H100", "count": 2}]],
        description="Whole GPUs passed through; the VM goes to a node with that many free")
    vgpu: str | None = Field(
        default=None, min_length=1, max_length=64, examples=["H100XM-10C"],
        description="A vGPU of this type (name or id, e.g. nvidia-1030) instead of whole GPUs")

    @model_validator(mode="after")
    def _secure_boot_needs(self) -> InstanceCreate:
        if self.secure_boot and (self.firmware != "uefi" or self.machine != "q35"):
            raise ValueError("secure_boot needs firmware uefi and machine q35")
        return self

    @model_validator(mode="after")
    def _one_kind_of_gpu(self) -> InstanceCreate:
        if self.gpus and self.vgpu:
            raise ValueError("ask for whole GPUs (gpus) or a vGPU (vgpu), not both")
        models = [g.model.lower() for g in self.gpus]
        if len(set(models)) != len(models):
            raise ValueError("each GPU model may appear once in gpus; give it a count instead")
        return self


class InstanceStop(Input):
    """How to stop a VM (the body is optional)."""

    force: bool = Field(default=False, description="Cut the power at once, like pulling the "
                        "plug, instead of asking the guest by ACPI (forced after a grace period)")


class InstanceReboot(Input):
    """How to restart a VM (the body is optional)."""

    force: bool = Field(default=False, description="Hard reset, like the reset button, instead "
                        "of an ACPI shutdown (forced after a grace period) and a start")


class InstanceHa(Input):
    """Whether the VM is restarted on another node when its node is lost."""

    enabled: bool


class NodeMaintenance(Input):
    """Maintenance on (the node takes no new VMs and its VMs are moved away) or off."""

    on: bool


class InstanceMigrate(Input):
    """Where and how to move a running VM live (the body is optional)."""

    to: str | None = Field(default=None, min_length=1, max_length=63,
                           description="Target node (name or id); none: the scheduler picks")
    bandwidth_mib_s: int = Field(default=0, ge=0, le=100_000,
                                 description="Most MiB/s the memory copy may use; 0: no limit")
    max_downtime_ms: int = Field(default=300, ge=10, le=60_000,
                                 description="Longest pause of the guest at the switchover")


class InstanceGpu(Output):
    address: str = Field(examples=["0000:18:00.0"])
    model: str = Field(examples=["H100 SXM5 80GB"])


class InstanceVgpu(Output):
    uuid: str
    parent: str = Field(examples=["0000:18:00.0"])
    type_id: str = Field(examples=["nvidia-1030"])
    type_name: str = Field(examples=["NVIDIA H100XM-10C"])


class Instance(Output):
    """A VM: what was asked for and what its node reports."""

    id: str
    name: str
    project: ProjectName = None
    state: str = Field(
        description="creating, provisioning, running, stopped, starting, stopping, "
        "rebooting, migrating, deleting, error or unknown"
    )
    desired_power: str
    node_id: str
    node_name: str
    migrating_to: str | None = Field(default=None, description="Name of the node it is "
                                     "moving to, while a live migration is in flight")
    ha: bool = Field(default=False, description="Restarted elsewhere when its node is lost")
    hypervisor_uuid: str | None = Field(default=None, description="Its uuid in an XCP-ng "
                                        "pool (XAPI's, not Vauban's), once its node reported it")
    image_id: str
    image_name: str
    vcpus: int
    memory_mib: int
    root_disk_gib: int | None
    hostname: str
    ssh_keys: list[str] = Field(default_factory=list, description="Its default user's keys")
    default_user: str | None = Field(default=None, description="None: the image's own")
    guest: GuestInfo | None = Field(
        default=None, description="What its qemu-guest-agent last said: OS and the "
        "addresses the guest has (None while no agent answers)")
    machine: MachineSpec = Field(default_factory=MachineSpec)
    error: str | None
    console_log: str | None
    ports: list[InstancePort] = Field(default_factory=list, description="NICs, in guest order")
    gpus: list[InstanceGpu] = Field(default_factory=list, description="Whole GPUs it holds")
    vgpus: list[InstanceVgpu] = Field(default_factory=list)
    failures: list[NodeFailure] = Field(
        default_factory=list, description="Failures its node reports of it, of its networks, "
        "of the firewall of its filtered ports and of its volumes")
    created_at: UtcDatetime
    updated_at: UtcDatetime


class InstancePort(Output):
    """A NIC of a VM."""

    network: str = Field(description="Network name")
    mac: str
    addresses: list[str]
    dhcp: bool = Field(default=False, description="Its guest configures IPv4 by DHCP")
    security_groups: list[str] = Field(
        default_factory=list, description="Names of its security groups; none: unfiltered")


class Operation(Output):
    """A long action: follow it until `state` is succeeded or failed."""

    id: str
    project: ProjectName = None
    kind: str
    target_id: str
    target_name: str
    node_id: str | None
    state: OperationState
    progress: int
    error: str | None
    message: str | None = Field(default=None, description="How it stands, in words, while "
                                "it runs (e.g. which VMs a maintenance cannot move, and why)")
    requested_by: str
    created_at: UtcDatetime
    updated_at: UtcDatetime
    finished_at: UtcDatetime | None


class OperationsQuery(PageQuery):
    """Which operations to list, newest first; every filter given must hold."""

    target: str | None = Field(default=None, max_length=36,
                               description="Only operations on this object id")
    kind: str | None = Field(default=None, max_length=63, description="Only this kind",
                             examples=["instance.create"])
    state: OperationState | None = Field(default=None, description="Only in this state",
                                         examples=["running"])


class GpuVgpuType(Output):
    id: str = Field(examples=["nvidia-1030"])
    name: str = Field(examples=["NVIDIA H100XM-10C"])
    capacity: int = Field(description="Instances of this type the GPU can hold")


class GpuVgpu(Output):
    uuid: str
    type_id: str
    instance: str = Field(description="Name of the VM using it")


class Gpu(Output):
    """A GPU of the region: where it is, who holds it, and its last telemetry."""

    node: str = Field(description="Node name")
    address: str = Field(examples=["0000:18:00.0"])
    model: str = Field(examples=["H100 SXM5 80GB"])
    state: GpuState = Field(
        description="free; in-use: passed through whole; vgpu: carved into vGPUs; "
        "unusable: cannot be passed through (see reason)")
    instance: str | None = Field(description="The VM holding it whole")
    reason: str | None = Field(description="Why it cannot be passed through")
    driver: str | None = Field(examples=["nvidia", "vfio-pci"])
    numa_node: int | None
    iommu_group: int | None
    group_devices: list[str]
    vgpu_types: list[GpuVgpuType]
    vgpus: list[GpuVgpu]
    telemetry: GpuTelemetry | None = Field(description="None: NVML does not see it "
                                           "(bound to vfio-pci, or no NVIDIA driver)")
    mig: MigState | None
