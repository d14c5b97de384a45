"""Wire types between the agent and the controller.

The controller imports from the agent only this module. Every message is a
pydantic model that rejects unknown fields, so a version skew between agent
and controller fails loudly instead of silently dropping data.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from hardware.model import GpuInfo, HardwareInventory, QualificationReport

# 2: NodeStatus carries `failures`; a long-poll that saw no change answers 204 with no
# body; every /agent/v1 answer names the report interval and the long-poll wait
# 3: the qualification report names the disks free for OSDs (`free_osd_disks`); agents
# renew their certificate (POST /agent/v1/nodes/<id>/certificate)
# 4: a desired VM carries `power_mode` (reboot, reset, forced stop); agents long-poll
# console requests (GET /agent/v1/nodes/<id>/consoles) and dial back each console
# 5: the inventory carries the node's SSH host keys; a VM's seed its default user's keys
# and name; an observed VM what its guest agent says (`guest`); a desired VM its
# virtual hardware (`machine`: firmware, Secure Boot, machine type, disk bus)
# 6: a desired port says whether its guest configures IPv4 by DHCP (`dhcp`); an observed
# volume which of its snapshots are quiesced (`quiesced_snapshots`)
# 7: live migration (a desired VM's `migrate_to` on the source, `incoming_from` on the
# target; an observed VM's `migration`, state `incoming`); a desired state lists the VMs
# whose disks may be deleted (`delete_vm_disks`): an unwanted VM's disks are kept otherwise;
# a desired VM may be defined on its existing root disk (`adopt_disk`); storage heartbeat
# and self-fence (RBD settings `heartbeat_interval_s`/`fence_after_s`, observed
# `self_fenced_at` and Ceph `client_addrs`, desired `fence_cleared`); the inventory says
# whether the node takes and makes migrations (`migration_ready`); a migration order and
# an incoming migration say whether the VM's disks are copied with it (`copy_disks`, local
# storage; False, the default and left out of the message, is what an agent of 7 without
# the field did: shared disks)
# (still 7) the inventory lists the migration features its agent carries out
# (`migration_features`: `copy_disks`, `cold`): the controller sends an order with one only
# to agents that list it, as an agent without them refuses the whole desired state
# 8: an XCP-ng pool's agent reports its pool (`Inventory.pool`) and reads how to reach
# it (GET /agent/v1/nodes/<id>/xapi); an observed VM may carry its hypervisor's own uuid
PROTOCOL_VERSION = 8
MIGRATION_FEATURES = ("copy_disks", "cold")
# Every agent call (/agent/v1 and the join request) carries the agent's PROTOCOL_VERSION
# in this header, and every /agent/v1 answer the controller's. Each side refuses another
# version; a message without the header comes from a release before it, which spoke 1.
PROTOCOL_HEADER = "Vauban-Agent-Protocol"
PROTOCOL_WITHOUT_HEADER = 1
# Seconds between two status reports of an agent with nothing new to say: the controller
# sets it from the region's size on every /agent/v1 answer (controller/services/pace.py)
REPORT_INTERVAL_HEADER = "Vauban-Report-Interval"
# Seconds a long-poll should ask to wait: the controller sets it from its down delay, so
# that a live agent is never counted down between two polls
POLL_WAIT_HEADER = "Vauban-Poll-Wait"
PACE_RANGE = (1.0, 3600.0)  # what either header may name

PROTOCOL_MISMATCH = "protocol-mismatch"  # the problem type's last path segment
# the problem type (last path segment) of a 403 to a node removed from the region
NODE_REMOVED = "node-removed"
# the problem type (last path segment) of a 409 to an agent of the wrong kind for its node:
# a KVM agent on an XCP-ng pool's node, or a pool's agent on a KVM node
WRONG_AGENT = "wrong-agent"


def protocol_from_header(raw: str | None) -> int | None:
    """The protocol version a peer's header names (PROTOCOL_WITHOUT_HEADER when absent), or
    None when it is not one: ASCII digits only, at most 6 of them, at least 1."""
    if raw is None:
        return PROTOCOL_WITHOUT_HEADER
    value = raw.strip()
    if not re.fullmatch(r"[0-9]{1,6}", value) or int(value) < 1:
        return None
    return int(value)


def seconds_from_header(raw: str | None) -> float | None:
    """The seconds a controller's pace header names, or None when absent or not a number
    of seconds within PACE_RANGE (decimal digits and at most one point)."""
    if raw is None or not re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,6})?", raw.strip()):
        return None
    value = float(raw)
    low, high = PACE_RANGE
    return value if low <= value <= high else None


RENEW_FRACTION = 1 / 3  # certificates are renewed once less than this part of them is left


def renewal_due(not_before: datetime, not_after: datetime,
                fraction: float = RENEW_FRACTION) -> datetime:
    """When a certificate valid from `not_before` to `not_after` is renewed: once less
    than `fraction` of its lifetime is left (the agent's node certificate and the
    controller's server certificate alike)."""
    return not_after - (not_after - not_before) * fraction


def pace_from_headers(headers: Mapping[str, str]) -> tuple[float | None, float | None]:
    """(report interval, poll wait) an answer's headers name; None for one it does not
    name as a sane number of seconds."""
    return (seconds_from_header(headers.get(REPORT_INTERVAL_HEADER)),
            seconds_from_header(headers.get(POLL_WAIT_HEADER)))


def utc_time(t: datetime) -> datetime:
    """The same instant in UTC. A time without a zone is taken as UTC: every time the
    region stores or sends is UTC (SQLite hands them back without their zone)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


# a timestamp that always carries its zone on the wire ("...Z"), whatever it was made from
UtcDatetime = Annotated[datetime, AfterValidator(utc_time)]


def refuse_nul(value: Any) -> Any:
    """`value`, or ValueError if a string in it (keys included, at any depth of plain lists
    and dicts) holds a NUL character: no name, path or text of Vauban has one, and
    PostgreSQL cannot store one."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL characters (\\u0000)")
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_nul(key)
            refuse_nul(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            refuse_nul(item)
    return value


class StrictInput(BaseModel):
    """Base of whatever a peer sends: unknown fields and NUL characters are errors."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        return refuse_nul(value)


class Wire(StrictInput):
    """Base of every wire message: unknown fields are an error."""


class PowerState(StrEnum):
    """Power state of a VM, desired or observed."""

    RUNNING = "running"
    STOPPED = "stopped"


class PowerMode(StrEnum):
    """How the agent carries out a VM's latest power action (its `power_seq`)."""

    NORMAL = "normal"  # start; or stop by ACPI, forced off after the grace period
    FORCE = "force"  # stop: cut the power at once, no grace period
    REBOOT = "reboot"  # ACPI shutdown (forced after the grace period), then start
    RESET = "reset"  # hard reset of a running VM, like its reset button


class ObservedVmState(StrEnum):
    """What the agent sees of a VM on its node."""

    PROVISIONING = "provisioning"  # the agent is building it (image, disk, seed, domain)
    RUNNING = "running"
    STOPPED = "stopped"
    ERROR = "error"  # the last reconcile of this VM failed; see `error`
    INCOMING = "incoming"  # being migrated to this node: not running here yet


class ImageRef(Wire):
    """An image a VM's root disk is made from; the agent fetches it by id."""

    id: str = Field(examples=["6f1c0d5e-5b5e-4d8e-9a36-0d7c3f1b2a10"])
    name: str = Field(examples=["testguest"])
    disk_format: Literal["raw", "qcow2"] = Field(examples=["raw"])
    size_bytes: int = Field(ge=0, description="Size of the image file as stored")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class CloudInitSeed(Wire):
    """What goes into the VM's NoCloud `cidata` seed."""

    instance_id: str
    hostname: str
    user_data: str = ""
    public_keys: list[str] = Field(
        default_factory=list, max_length=32,
        description="OpenSSH public keys for the image's default user (meta-data public-keys)")
    default_user: str | None = Field(
        default=None, description="The default user's name (None: the image's own, e.g. "
        "debian); given to cloud-init as vendor-data, which the user-data may override")


class VolumeAttachment(Wire):
    """A volume plugged into a VM as a guest disk."""

    volume_id: str
    target: str = Field(pattern=r"^vd[c-z]$", examples=["vdc"])


class VolumeClone(Wire):
    """Where a new volume's content comes from: a snapshot of another volume."""

    volume_id: str
    snapshot: str


class VolumeRollback(Wire):
    """Roll the volume back to `snapshot`; `seq` numbers the request so it runs once."""

    snapshot: str
    seq: int = Field(ge=1)


class DesiredVolume(Wire):
    """A volume this node looks after: it exists (or not) with this size and these snapshots."""

    id: str
    name: str
    pool: str
    size_gib: int = Field(ge=1)
    present: bool = Field(description="False: delete it (and its snapshots)")
    snapshots: list[str] = Field(default_factory=list)
    clone_of: VolumeClone | None = None
    rollback: VolumeRollback | None = None


class DesiredVgpu(Wire):
    """A vGPU the agent creates on a GPU for one VM."""

    uuid: str = Field(description="The mediated device's UUID, chosen by the controller")
    parent: str = Field(examples=["0000:17:00.0"])
    type_id: str = Field(examples=["nvidia-1030"])


class MachineSpec(Wire):
    """The virtual hardware a VM boots on."""

    firmware: Literal["bios", "uefi"] = "bios"
    secure_boot: bool = Field(default=False, description="UEFI with Secure Boot on "
                              "(Microsoft's keys enrolled); needs machine q35")
    machine: Literal["i440fx", "q35"] = "i440fx"
    disk_bus: Literal["virtio-blk", "virtio-scsi"] = Field(
        default="virtio-blk", description="Bus of the root disk and the seed (volumes "
        "plugged in later are virtio-blk); discard reaches the storage either way")


def _unset(value: object) -> bool:
    """A field added within a protocol version is left out of the message while it is
    False: an agent of that version built before it reads the message as ever."""
    return value is False


class MigrationOrder(Wire):
    """On the source node: move the VM to another node once per `seq`: live when it runs,
    `cold` when it is stopped."""

    seq: int = Field(ge=1, description="Numbers the VM's migrations: each is tried once")
    target_node_id: str
    target_address: str = Field(description="The target node's migration address (an IP "
                                "its hypervisor certificate names)")
    bandwidth_mib_s: int = Field(ge=0, description="Most MiB/s the memory copy may use; "
                                 "0: no limit")
    max_downtime_ms: int = Field(ge=1, description="Longest pause of the guest at switchover")
    timeout_s: int = Field(ge=1, description="Aborted (and failed) if not done by then")
    copy_disks: bool = Field(
        default=False, exclude_if=_unset, description="The disks are local to each node: "
        "copy the root disk's own data (not its image, stored on both) to the disk the "
        "target made for it")
    cold: bool = Field(
        default=False, exclude_if=_unset, description="The VM is stopped and stays so: "
        "started paused here only to be moved (its guest never runs), paused there, then "
        "turned off by the target")


class IncomingMigration(Wire):
    """On the target node: prepare for the VM arriving from `source_node_id`; never
    define, create or start it here (the migration does)."""

    seq: int = Field(ge=1)
    source_node_id: str
    copy_disks: bool = Field(
        default=False, exclude_if=_unset, description="The disks are local to each node: "
        "make the VM's image and an empty root disk of the same size on it here, for the "
        "source to copy into")
    cold: bool = Field(
        default=False, exclude_if=_unset, description="The VM is stopped: it arrives "
        "paused and is turned off here before its arrival is reported")


class MigrationReport(Wire):
    """How a migration of the VM stands, as the node that drives (source) or prepares
    (target) it sees it."""

    seq: int = Field(ge=1)
    state: Literal["ready", "running", "completed", "failed"] = Field(
        description="ready: the target is prepared; running/completed/failed: the source's "
        "copy of the VM")
    progress: int = Field(default=0, ge=0, le=100)
    downtime_ms: int | None = Field(default=None, ge=0, description="Guest pause, once done")
    error: str | None = Field(default=None, max_length=4096)


class DesiredVm(Wire):
    """One VM as the controller wants it on this node."""

    id: str = Field(description="Instance UUID; also the libvirt domain UUID")
    name: str = Field(examples=["web-1"])
    vcpus: int = Field(ge=1)
    memory_mib: int = Field(ge=16)
    root_disk_gib: int | None = Field(
        default=None, ge=1, description="Root disk size; None keeps the image's virtual size"
    )
    image: ImageRef
    power: PowerState
    power_seq: int = Field(
        ge=0,
        description="Incremented on every operator power action, so the agent can tell "
        "a requested start from a VM that its guest powered off",
    )
    power_mode: PowerMode = Field(
        default=PowerMode.NORMAL,
        description="How to carry out the power action numbered power_seq, once: reboot "
        "(ACPI shutdown, then start) and reset restart a running VM and start a stopped one "
        "(power is then running); force stops without a grace period (power is then stopped)")
    seed: CloudInitSeed
    machine: MachineSpec = Field(default_factory=MachineSpec)
    volumes: list[VolumeAttachment] = Field(default_factory=list)
    flatten_root: bool = Field(
        default=False, description="Make the root disk independent of its image (copy its data)")
    ports: list[DesiredPort] = Field(default_factory=list, description="NICs, in guest order")
    gpus: list[str] = Field(
        default_factory=list,
        description="PCI addresses of GPUs passed through whole (with their IOMMU groups)")
    vgpus: list[DesiredVgpu] = Field(default_factory=list)
    adopt_disk: bool = Field(
        default=False, description="Its root disk exists already on shared storage (it "
        "ran on another node): define the VM on it, never make one")
    migrate_to: MigrationOrder | None = Field(
        default=None, description="Source node: move the VM away (see MigrationOrder)")
    incoming_from: IncomingMigration | None = Field(
        default=None, description="Target node: the VM is arriving; prepare only")


class DesiredState(Wire):
    """Everything the controller wants on one node, numbered by generation."""

    node_id: str
    generation: int = Field(ge=0)
    vms: list[DesiredVm]
    volumes: list[DesiredVolume] = Field(
        default_factory=list, description="Volumes this node looks after (shared storage)"
    )
    retired_images: list[str] = Field(
        default_factory=list, description="Deleted images: remove any stored copy of them"
    )
    security_groups: list[DesiredSecurityGroup] = Field(
        default_factory=list, description="The groups of this node's ports")
    networks: list[DesiredNetwork] = Field(
        default_factory=list, description="Networks the VMs of this node are on"
    )
    delete_vm_disks: list[str] = Field(
        default_factory=list, description="Deleted VMs (ids): remove their disks with "
        "them. Any other VM not wanted here loses its domain and files but keeps its "
        "disks: it may run elsewhere now (migrated, restarted by HA)")
    fence_cleared: UtcDatetime | None = Field(
        default=None, description="The `self_fenced_at` of this node's fence that the "
        "controller lifts: the agent then starts VMs again (a later fence stays)")


class GuestInterface(Wire):
    """A network interface as the guest itself sees it."""

    name: str = Field(max_length=64, examples=["eth0"])
    mac: str | None = Field(default=None, max_length=64)
    addresses: list[str] = Field(default_factory=list, max_length=64,
                                 examples=[["10.77.0.10/24", "fe80::1/64"]])


class GuestInfo(Wire):
    """What the VM's own qemu-guest-agent says of it (None without an agent)."""

    os_id: str | None = Field(default=None, max_length=64, examples=["debian"])
    os_name: str | None = Field(default=None, max_length=256,
                                examples=["Debian GNU/Linux 12 (bookworm)"])
    os_version: str | None = Field(default=None, max_length=64, examples=["12"])
    kernel_release: str | None = Field(default=None, max_length=128)
    interfaces: list[GuestInterface] = Field(default_factory=list, max_length=64)


class ObservedVm(Wire):
    """One VM as the agent observes it."""

    id: str
    name: str
    state: ObservedVmState
    power_seq: int = Field(ge=0, description="Last power_seq the agent applied")
    error: str | None = None
    failed_power_seq: int | None = Field(
        default=None, ge=0, description="With state error: the power action that failed"
    )
    progress: int = Field(default=0, ge=0, le=100)
    root_cloned: bool | None = Field(
        default=None, description="Whether the root disk still depends on its image "
        "(reported once a flatten was asked for)")
    console_log: str | None = Field(default=None, description="Path of the serial log on the node")
    guest: GuestInfo | None = Field(
        default=None, description="What its guest agent reports (a running VM whose "
        "qemu-guest-agent answers)")
    migration: MigrationReport | None = Field(
        default=None, description="Its migration, while one is asked of this node")
    hypervisor_uuid: str | None = Field(
        default=None, max_length=36, description="Its hypervisor's own uuid where that is "
        "not the VM's id (an XCP-ng pool's VM)")


class ObservedVolume(Wire):
    """A volume as this node sees it in storage."""

    id: str
    size_bytes: int = Field(ge=0)
    used_bytes: int = Field(ge=0)
    snapshots: list[str]
    quiesced_snapshots: list[str] = Field(
        default_factory=list,
        description="Those of `snapshots` taken while the guest's filesystems were frozen "
        "(filesystem-consistent); the others are crash-consistent (an older agent never "
        "freezes, and sends none)")
    rollback_seq: int = Field(ge=0, description="Last rollback request applied")
    attached_to: str | None = Field(default=None, description="VM id, when plugged in")
    target: str | None = None
    error: str | None = None
    failed_generation: int | None = Field(
        default=None, description="With error: the desired generation whose request failed")


class PoolUsage(Wire):
    pool: str
    used_bytes: int = Field(ge=0)
    max_avail_bytes: int = Field(ge=0)


class StorageStatus(Wire):
    """Health and capacity of the node's storage backend."""

    driver: str
    health: str = Field(examples=["HEALTH_OK"])
    detail: str = ""
    pools: list[PoolUsage] = Field(default_factory=list)
    client_addrs: list[str] = Field(
        default_factory=list, examples=[["10.0.0.11:0/3120448913"]],
        description="The node's Ceph client addresses (ip:port/nonce), as a fence blocklists")


class DiskInfo(Wire):
    name: str
    size_bytes: int
    rotational: bool
    model: str | None = None


class NicInfo(Wire):
    name: str
    mac: str | None
    mtu: int
    up: bool


class XidEvent(Wire):
    """An NVIDIA Xid error reported by the driver (e.g. 79: the GPU fell off the bus)."""

    xid: int
    at: UtcDatetime


class GpuTelemetry(Wire):
    """One NVML reading of a GPU; a value is None where the GPU does not report it."""

    utilization_pct: int | None = Field(default=None, ge=0, le=100)
    memory_utilization_pct: int | None = Field(default=None, ge=0, le=100)
    memory_total_bytes: int | None = Field(default=None, ge=0)
    memory_used_bytes: int | None = Field(default=None, ge=0)
    temperature_c: int | None = None
    power_w: float | None = Field(default=None, ge=0)
    power_limit_w: float | None = Field(default=None, ge=0)
    ecc_uncorrected_volatile: int | None = Field(
        default=None, ge=0, description="Uncorrected ECC errors since the driver loaded")
    ecc_uncorrected_aggregate: int | None = Field(
        default=None, ge=0, description="Uncorrected ECC errors over the GPU's life")
    xid_events: list[XidEvent] = Field(default_factory=list, description="Most recent last")


class MigProfile(Wire):
    """A GPU instance profile the GPU offers in MIG mode."""

    profile_id: int
    name: str = Field(examples=["1g.10gb"])
    slices: int = Field(ge=1)
    memory_mib: int = Field(ge=0)
    max_instances: int = Field(ge=0)
    free_instances: int = Field(ge=0)


class MigInstance(Wire):
    instance_id: int
    profile_id: int
    start: int = Field(ge=0, description="First slice of its placement")
    size: int = Field(ge=1, description="Slices it spans")


class MigState(Wire):
    current: bool = Field(description="MIG mode is on now")
    pending: bool = Field(description="MIG mode after the next GPU reset")
    profiles: list[MigProfile] = Field(default_factory=list)
    instances: list[MigInstance] = Field(default_factory=list)


class NvmlGpu(Wire):
    """What the NVIDIA driver says of a GPU it drives."""

    address: str = Field(examples=["0000:17:00.0"])
    name: str = Field(examples=["NVIDIA H100 80GB HBM3"])
    uuid: str
    telemetry: GpuTelemetry
    mig: MigState | None = Field(default=None, description="None: the GPU has no MIG")


class MdevInstance(Wire):
    """A vGPU (mediated device) that exists on the node."""

    uuid: str
    type_id: str = Field(examples=["nvidia-1030"])
    parent: str = Field(description="PCI address of the GPU it lives on")


class NodeGpu(Wire):
    """A GPU of the node: its PCI view, the vGPUs carved from it, and NVML's view."""

    pci: GpuInfo
    mdevs: list[MdevInstance] = Field(default_factory=list)
    nvml: NvmlGpu | None = Field(default=None, description="None: not driven by nvidia")


class Inventory(Wire):
    """What the node is made of, as probed by the agent."""

    hostname: str
    cpu_model: str
    cpu_flags: list[str] = Field(description="Virtualization-related CPU flags (vmx, svm, ...)")
    cpus: int = Field(ge=1)
    memory_mib: int = Field(ge=1)
    kvm_device: bool = Field(description="/dev/kvm exists")
    kvm_usable: bool = Field(description="A KVM guest was probed and booted")
    kvm_probe_detail: str
    disks: list[DiskInfo]
    nics: list[NicInfo]
    hypervisor: str = Field(examples=["libvirt"])
    storage: str = Field(examples=["localfs"])
    storage_free_bytes: int = Field(ge=0)
    agent_version: str
    underlay_ip: str | None = Field(
        default=None, description="This node's address for VXLAN tunnels (tenant networks)")
    hardware: HardwareInventory | None = Field(
        default=None, description="Everything the hardware probes found")
    qualification: QualificationReport | None = Field(
        default=None, description="The node checked against its requirement profile")
    gpus: list[NodeGpu] = Field(default_factory=list)
    nvml_detail: str = Field(default="", examples=["no NVIDIA driver: no NVIDIA GPUs"])
    ssh_host_keys: list[str] = Field(
        default_factory=list, max_length=16,
        description="The node's SSH host public keys ('TYPE BASE64'), pinned when the "
        "controller adopts the node into its fleet", examples=[["ssh-ed25519 AAAAC3Nza..."]])
    migration_ready: bool = Field(
        default=False, description="Its libvirtd listens for TLS with a hypervisor "
        "certificate from the region CA in place: VMs can be migrated to and from it")
    migration_features: list[str] = Field(
        default_factory=list, max_length=16, examples=[["copy_disks", "cold"]],
        description="The migration orders its agent understands beyond a live move of a "
        "VM on shared disks (MIGRATION_FEATURES); an agent from before them reports none")
    pool: XapiPoolInfo | None = Field(default=None, description="For an XCP-ng pool's "
                                      "agent: the pool it manages")


class XapiHost(Wire):
    """One host of an XCP-ng pool, as its pool agent last read it."""

    uuid: str = Field(max_length=36)
    name: str = Field(max_length=255)
    address: str = Field(max_length=255)
    enabled: bool
    live: bool = Field(description="Its host_metrics say it is alive")
    master: bool
    cpus: int = Field(ge=0)
    memory_total_mib: int = Field(ge=0)
    memory_free_mib: int = Field(ge=0)


class XapiPoolInfo(Wire):
    """The XCP-ng pool a pool agent manages: the scheduler places on its sums, and refuses
    a VM that no single host can take (`largest_free_mib`)."""

    uuid: str = Field(max_length=36)
    name: str = Field(default="", max_length=255)
    reachable: bool = Field(description="Its agent reads the pool now")
    problem: str = Field(default="", max_length=2000,
                         description="Why it cannot, in words (unreachable: nothing is placed "
                         "on it; what it had stays as last read)")
    master_uuid: str = Field(default="", max_length=36)
    master_address: str = Field(default="", max_length=255, description="The master in use")
    hosts: list[XapiHost] = Field(default_factory=list, max_length=64)
    largest_free_mib: int = Field(default=0, ge=0, description="Free memory of the "
                                  "emptiest enabled, live host")

    def capacity(self) -> tuple[int, int]:
        """(CPUs, memory MiB) over the enabled, live hosts: what the region may place on."""
        usable = [h for h in self.hosts if h.enabled and h.live]
        return sum(h.cpus for h in usable), sum(h.memory_total_mib for h in usable)


class XapiSettings(Wire):
    """How a pool agent reaches its pool; the password stays in its memory only (also out
    of validation errors, which would otherwise quote the input)."""

    model_config = ConfigDict(hide_input_in_errors=True)

    url: str = Field(examples=["https://10.0.9.20:443"])
    username: str
    password: str
    pool_uuid: str
    pins: dict[str, str] = Field(description="Each member's address -> the SHA-256 of its "
                                 "certificate (lower-case hex), as enrolled")
    certificates: dict[str, Annotated[str, Field(max_length=16384)]] = Field(
        default_factory=dict, max_length=64,
        description="Each member's address -> its certificate (PEM) whose SHA-256 is its "
        "pin: the only trust anchor of a connection to it. A member without one (a pool "
        "enrolled before they were kept) has the certificate it presents read and "
        "compared to its pin first")

    @model_validator(mode="after")
    def _certificates_are_the_pinned_ones(self) -> XapiSettings:
        for address, pem in self.certificates.items():
            try:
                digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
            except ValueError as e:
                raise ValueError(f"member {address}: no PEM certificate ({e})") from e
            if digest != self.pins.get(address, "").lower():
                raise ValueError(f"member {address}: its certificate is not its pinned one")
        return self
    sr_uuid: str | None = Field(default=None, max_length=36, description="The storage "
                                "repository for images and disks; None: the pool's default")
    template: str | None = Field(default=None, max_length=255, description="The VM "
                                 "template VMs are cloned from; None: \"Other install media\"")


FailureKind = Literal["vm", "network", "firewall", "volume", "image"]


class NodeFailure(Wire):
    """Something the agent tried on its node and could not do, with the cause in words."""

    kind: FailureKind = Field(description="What failed: a VM, network, firewall, volume "
                              "or image action")
    object_id: str = Field(description="Id of the VM, network, volume or image; for the "
                           "firewall, 'security-groups'")
    action: str = Field(examples=["create", "ensure", "apply", "import"],
                        description="What was being done to it")
    message: str = Field(examples=["tenant network 5d0c…: VNI 1000 is already used by "
                                   "device vx-other on this node"])
    retryable: bool = Field(description="Trying the same request again may help")
    final: bool = Field(description="Given up: not retried until the request changes")
    since: UtcDatetime = Field(description="When this request first failed")
    attempts: int = Field(ge=1, description="Failed tries of this request so far")
    next_retry_at: UtcDatetime | None = Field(
        default=None, description="When it is tried again; None once final")


class NodeStatus(Wire):
    """Pushed by the agent: inventory, the observed state of its VMs, and how far it got."""

    protocol: int = PROTOCOL_VERSION
    applied_generation: int = Field(ge=-1, description="Last desired generation fully reconciled")
    inventory: Inventory
    vms: list[ObservedVm]
    volumes: list[ObservedVolume] | None = Field(
        default_factory=list, description="None: storage could not be read (not: no volumes)")
    storage: StorageStatus | None = None
    failures: list[NodeFailure] = Field(
        default_factory=list, description="Every failed action of the agent, oldest first")
    sent_at: UtcDatetime
    self_fenced_at: UtcDatetime | None = Field(
        default=None, description="When the node destroyed its VMs for lack of both the "
        "controller and its storage heartbeat (it starts none until the controller clears it)")


class RbdSettings(Wire):
    """How a node reaches the region's Ceph cluster. The key stays in memory on the node
    (also out of validation errors, which would otherwise quote the input)."""

    model_config = ConfigDict(hide_input_in_errors=True)

    mon_host: str = Field(examples=["10.0.0.1:6789,10.0.0.2:6789"])
    user: str = Field(examples=["vauban"], description="cephx client id, without 'client.'")
    key: str = Field(description="cephx key (base64)")
    pool: str = Field(description="Pool for images and VM root disks")
    volume_pools: list[str] = Field(description="Pools volumes may be created in")
    secret_usage: str = Field(description="Usage name of the hypervisor secret holding the key")
    heartbeat_interval_s: float = Field(
        default=2.0, gt=0, le=3600, description="The node writes its storage heartbeat "
        "object this often")
    fence_after_s: float = Field(
        default=20.0, gt=0, le=86400, description="The node destroys its VMs once it has "
        "heard neither the controller nor its storage this long (see docs/design/ha-plan.md)")


# Each node on shared storage writes a heartbeat object (JSON {"seq", "sent_at"}) in the
# root-disk pool, in this namespace, named by storage_heartbeat_object (agent.storage_heartbeat)
STORAGE_HEARTBEAT_NAMESPACE = "vauban-ha"


def storage_heartbeat_object(node_id: str) -> str:
    """The name of a node's storage heartbeat object."""
    return f"vauban.hb.{node_id}"


class StorageSettings(Wire):
    """The storage backend every node of the region uses (its errors quote no input: the
    Ceph key is in it)."""

    model_config = ConfigDict(hide_input_in_errors=True)

    driver: str = Field(examples=["localfs", "rbd"])
    rbd: RbdSettings | None = None


class JoinRequest(Wire):
    """Presented by a new agent with its one-time join token."""

    token: str = Field(min_length=16)
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", examples=["node-1"])
    csr_pem: str


class JoinResponse(Wire):
    node_id: str
    certificate_pem: str
    ca_pem: str


class CertificateRenewal(Wire):
    """A node asks for a new client certificate, over mutual TLS with its current one: a
    CSR for a new key whose common name is its node id."""

    csr_pem: str = Field(min_length=1, max_length=16384)


class CertificateIssued(Wire):
    """The node's new certificate; the previous one is accepted until it first calls with
    this one."""

    certificate_pem: str
    expires_at: UtcDatetime


def _ip_address(value: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError as e:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from e
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise ValueError(f"{value} cannot be reached by another node")
    return str(ip)


class HypervisorCertificateRequest(Wire):
    """A node asks for its hypervisor certificate (for its libvirtd and QEMU, a key of its
    own apart from the agent's), over mutual TLS: a CSR whose common name is its node id,
    and the address other nodes reach it at for migrations (its underlay address)."""

    csr_pem: str = Field(min_length=1, max_length=16384)
    migration_address: Annotated[str, AfterValidator(_ip_address)] = Field(
        max_length=45, examples=["10.0.0.5"])
    role: Literal["libvirt", "qemu"] = Field(
        default="libvirt", description="Whose key the CSR is for: libvirtd's (other nodes' "
        "libvirtds admit it) or QEMU's (the migration stream only; readable by QEMU's "
        "group, so it must open no libvirtd)")


class HypervisorCertificateIssued(Wire):
    """The node's hypervisor certificate: CN and DNS SAN its id, OU vauban-<role>, DNS SAN
    its name, IP SAN its migration address; client and server."""

    certificate_pem: str
    expires_at: UtcDatetime


class NetworkKind(StrEnum):
    PROVIDER = "provider"  # a VLAN on a physical interface (or bond) of every node
    TENANT = "tenant"  # a VXLAN overlay between the nodes that carry it


class DesiredNetwork(Wire):
    """A network this node must carry: a Linux bridge, plus its VLAN or VXLAN uplink."""

    id: str
    name: str
    kind: NetworkKind
    mtu: int = Field(ge=576, le=9000, description="MTU of the bridge and VM NICs")
    vlan: int | None = Field(default=None, ge=1, le=4094, description="provider: the VLAN id")
    physical: str | None = Field(default=None, description="provider: interface or bond name")
    vni: int | None = Field(default=None, ge=1, le=16777215, description="tenant: VXLAN id")
    peers: list[str] = Field(
        default_factory=list,
        description="tenant: underlay addresses of the other nodes carrying this network")


class DesiredPort(Wire):
    """A VM NIC on a network, with its fixed addresses."""

    id: str
    network_id: str
    mac: str = Field(pattern=r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
    addresses: list[str] = Field(description="CIDR form, e.g. 10.0.0.5/24, fd00::5/64")
    gateways: list[str] = Field(default_factory=list)
    dns: list[str] = Field(default_factory=list)
    mtu: int
    security_groups: list[str] = Field(
        default_factory=list, description="Ids of the port's security groups; none: no filter")
    dhcp: bool = Field(
        default=False, description="The seed tells the guest to configure this NIC's IPv4 "
        "by DHCP (the node answers it with the port's own address); else statically")
    xapi_network: str | None = Field(
        default=None, max_length=255, description="On an XCP-ng pool: the pool network "
        "(its name) the NIC joins")


class SecurityRule(Wire):
    """One allow rule of a security group; everything not allowed inbound is dropped.

    Stateful: replies to allowed traffic are always allowed.
    """

    direction: Literal["ingress", "egress"]
    ethertype: Literal["ipv4", "ipv6"] = "ipv4"
    protocol: Literal["any", "tcp", "udp", "icmp"] = "any"
    port_min: int | None = Field(default=None, ge=1, le=65535, description="tcp/udp only")
    port_max: int | None = Field(default=None, ge=1, le=65535, description="tcp/udp only")
    remote_cidr: str | None = Field(default=None, examples=["0.0.0.0/0"])
    remote_group: str | None = Field(
        default=None, description="Allow the ports of this group (its id)")


class DesiredSecurityGroup(Wire):
    """A security group as a node applies it: its rules and its members' addresses."""

    id: str
    name: str
    rules: list[SecurityRule]
    member_addresses: list[str] = Field(
        default_factory=list, description="Addresses of every port in the group (region-wide)")


# vnc: the display; serial: the serial port, live; log: the serial log's last
# LOG_TAIL_BYTES, sent once (also of a VM that stopped: why did it not boot?)
ConsoleKind = Literal["vnc", "serial", "log"]
LOG_TAIL_BYTES = 256 * 1024
# The close code an agent ends a console's websocket with when the node's side failed;
# the close message says why in words, and the controller passes both on to the user.
CONSOLE_FAILED = 4000


class ConsoleRequest(Wire):
    """A user waits for a VM's console: the agent dials back to
    /agent/v1/nodes/<node id>/consoles/<id> and relays it to the VM."""

    id: str = Field(description="The console session, named in the dial-back URL")
    kind: ConsoleKind = Field(description="vnc: the VM's VNC server (RFB); serial: its "
                              "serial console (raw terminal bytes)")
    vm_id: str = Field(description="The VM (its id, the libvirt domain's UUID)")


class ConsoleRequests(Wire):
    """The console requests for this node that no agent was told of yet."""

    requests: list[ConsoleRequest]
