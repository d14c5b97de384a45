"""API wire types: `…Create` for what a client sends, the bare name for what it reads back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from agent.protocol import (
    GpuTelemetry,
    GuestInfo,
    MachineSpec,
    MigState,
    StrictInput,
    UtcDatetime,
)
from controller.guest_input import check_ssh_keys, check_user_data


def _in_utc(value: datetime) -> datetime:
    """`value` in UTC; ValueError (a 422) where UTC cannot hold it (year 1 east of Greenwich,
    year 9999 west of it), which datetime raises as OverflowError."""
    try:
        return value.astimezone(UTC)
    except OverflowError as e:
        raise ValueError(f"{value.isoformat()} is out of range in UTC") from e


# a time a client gives, with its zone; handed on in UTC
UtcInput = Annotated[AwareDatetime, AfterValidator(_in_utc)]

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
TOTP_CODE = r"^[0-9]{6}$"  # a one-time code: exactly 6 ASCII digits
NAME_RULE = "1-63 characters: lowercase letters, digits and '-', not starting or ending with '-'"


def _name_of(value: Any) -> Any:
    """A project row read from an object's attributes, as its name."""
    return getattr(value, "name", value)


# the project an object belongs to, by name (None: shared with every project)
ProjectName = Annotated[str | None, BeforeValidator(_name_of),
                        Field(description="Its project (null: shared with every project)")]
PROJECT_INPUT = Field(default=None, min_length=1, max_length=63, examples=["web-shop"],
                      description="Project (name or id); default: yours if you have one, "
                                  "else 'default' for a region admin")


class Input(StrictInput):
    """Base of client input: unknown fields and NUL characters are errors, never silently
    ignored or left for the database to fail on."""


class Output(BaseModel):
    """Base of what a client reads back; timestamps are `UtcDatetime`, so they carry a zone."""

    model_config = ConfigDict(from_attributes=True)


class ProblemField(BaseModel):
    """One invalid input of a request."""

    field: str = Field(description="Where: a body field path (dots between levels), or a "
                       "query parameter's name", examples=["vcpus", "cursor"])
    message: str = Field(examples=["Input should be greater than or equal to 1"])


class Problem(BaseModel):
    """An error (RFC 9457, application/problem+json): every 4xx and 5xx answer is one.
    `type` is stable per kind of error; `detail` says what went wrong in this request."""

    model_config = ConfigDict(extra="allow")  # members a kind of error adds are kept

    type: str = Field(examples=["https://vauban.dev/problems/not-found"],
                      description="URI naming the kind of error; stable, branch on it")
    title: str = Field(examples=["Not found"], description="Short phrase of the kind")
    status: int = Field(ge=400, le=599, examples=[404], description="The HTTP status")
    detail: str = Field(examples=["instance 'web' does not exist"],
                        description="What went wrong in this request, for a person")
    instance: str = Field(examples=["/api/v1/instances/web"],
                          description="The request's path (secrets in it redacted)")
    errors: list[ProblemField] | None = Field(
        default=None, description="422, a bad cursor: each invalid input")
    retry_after_s: int | None = Field(
        default=None, description="429, 503: seconds to wait (as Retry-After)")
    max_bytes: int | None = Field(default=None, description="413: the largest body accepted")
    reasons: dict[str, str] | None = Field(
        default=None, description="No node can host it: why not, per node")


class PageQuery(Input):
    """A page of a list (docs/architecture.md, "Lists"): at most `limit` items after
    `cursor`; the answer's `Link: <...>; rel="next"` header names the next page."""

    limit: int = Field(default=100, ge=1, le=1000, description="Most items in the page")
    cursor: str | None = Field(
        default=None, min_length=1, max_length=512, pattern=r"^[A-Za-z0-9_-]+$",
        description="Where the page starts: the `cursor` of the Link header of the page "
        "before (opaque); absent, the first page")


class TokenCreate(Input):
    """Log in: trade a user name and password (and a one-time code when the user has a
    second factor) for a bearer token."""

    username: str = Field(min_length=1, max_length=63, examples=["admin"])
    password: str = Field(min_length=1, max_length=1024)
    totp: str | None = Field(default=None, pattern=TOTP_CODE, examples=["123456"],
                             description="the current one-time code of the user's "
                             "authenticator (6 digits); each code is accepted once")
    ttl_seconds: int = Field(default=12 * 3600, ge=60, le=30 * 86400)


class Token(Output):
    """A bearer token: send it as `Authorization: Bearer <token>`."""

    token: str
    expires_at: UtcDatetime
    username: str


class SessionCreate(Input):
    """Log in from a browser: trade a user name and password for a session cookie."""

    username: str = Field(min_length=1, max_length=63, examples=["admin"])
    password: str = Field(min_length=1, max_length=1024)
    totp: str | None = Field(default=None, pattern=TOTP_CODE, examples=["123456"],
                             description="the current one-time code, when the user has a "
                             "second factor; each code is accepted once")


class Session(Output):
    """The session of the request's cookie: whose it is and until when it lasts."""

    username: str = Field(examples=["admin"])
    # unused until then, the session ends; each use moves it on (within a minute)
    expires_at: UtcDatetime
    ends_at: UtcDatetime  # the session ends then however much it is used


class SessionCreated(Session):
    """A new session: its secret is in the cookie set with this answer; a request by
    cookie other than GET/HEAD/OPTIONS must send `csrf_token` as `X-CSRF-Token`."""

    csrf_token: str


class JoinTokenCreate(Input):
    """Ask for a one-time token that lets one new node join the region."""

    description: str = Field(default="", max_length=255, examples=["rack 3, slot 12"])
    ttl_seconds: int = Field(default=3600, ge=60, le=7 * 86400)


class JoinToken(Output):
    """A join token as listed (the secret is shown only once, at creation)."""

    id: str
    description: str
    state: Literal["unused", "used", "revoked", "expired"] = Field(
        description="unused: can still join one node; used: joined `used_by_node_id`; "
                    "revoked or expired: can join nothing")
    expires_at: UtcDatetime
    used_at: UtcDatetime | None
    used_by_node_id: str | None
    revoked_at: UtcDatetime | None
    created_by: str
    created_at: UtcDatetime


class JoinTokenCreated(JoinToken):
    """A new join token; `token` and `ca_sha256` go to `vauban-agent join`."""

    token: str
    ca_sha256: str = Field(description="SHA-256 of the region CA certificate, for pinning")


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


class Node(Output):
    """A node of the region, with what its agent last reported."""

    id: str
    name: str
    state: Literal["up", "down", "new"] = Field(
        description="up: heartbeat recent; down: silent too long; new: joined, never reported"
    )
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
    created_at: UtcDatetime


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
    networks: list[str] = Field(
        default_factory=list, max_length=16, examples=[["lan", "dmz:192.0.2.10"]],
        description="One NIC per entry, in guest order: NETWORK (name or id) for the lowest "
        "free address of each subnet, or NETWORK:IP for that fixed address")
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
        description="creating, running, stopped, starting, stopping, rebooting, deleting, "
        "error or unknown"
    )
    desired_power: str
    node_id: str
    node_name: str
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
    state: Literal["pending", "running", "succeeded", "failed"]
    progress: int
    error: str | None
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
    state: str | None = Field(default=None, max_length=16, description="Only in this state",
                              examples=["running"])


SNAPSHOT_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class VolumeCreate(Input):
    """A new block volume on the region's shared storage."""

    name: str = Field(pattern=NAME_PATTERN, examples=["db-data"], description=NAME_RULE)
    project: str | None = PROJECT_INPUT
    size_gib: int = Field(ge=1, le=65536, examples=[20])
    pool: str | None = Field(default=None, max_length=63, description="Default: the first "
                             "volume pool of the region")
    source: str | None = Field(default=None, pattern=r"^[a-z0-9-]+@[a-z0-9][a-z0-9._-]*$",
                               description="Clone of VOLUME@SNAPSHOT", examples=["db@nightly"])


class VolumeResize(Input):
    size_gib: int = Field(ge=1, le=65536, description="New size; volumes only grow")


class VolumeSnapshotCreate(Input):
    name: str = Field(pattern=SNAPSHOT_PATTERN, examples=["before-upgrade"])


class VolumeRollbackRequest(Input):
    snapshot: str = Field(pattern=SNAPSHOT_PATTERN)


class VolumeAttach(Input):
    instance: str = Field(min_length=1, max_length=63, description="VM name or id")
    target: str | None = Field(default=None, pattern=r"^vd[a-z]$",
                               description="Guest disk name; default: the next free vdc..vdz")


class Volume(Output):
    """A block volume: what was asked for and what its steward node reports."""

    id: str
    name: str
    project: ProjectName = None
    state: str = Field(description="creating, available, in-use, attaching, detaching, "
                       "resizing, snapshotting, rolling-back, deleting or error")
    pool: str
    size_gib: int
    size_bytes: int | None
    used_bytes: int | None
    snapshots: list[str]
    snapshot_consistency: dict[str, Literal["filesystem", "crash"]] = Field(
        default_factory=dict, examples=[{"before-upgrade": "filesystem", "nightly": "crash"}],
        description="Each snapshot its steward has taken: 'filesystem' when it was taken "
        "with the guest's filesystems frozen by its guest agent (quiesced), 'crash' when "
        "not (no guest agent answered, or no running VM had the volume: as after a power "
        "cut). A snapshot not taken yet is not listed")
    source: str | None
    attached_to: str | None = Field(description="VM name")
    target: str | None
    steward: str = Field(description="The node that looks after it")
    error: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


IFNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$"


class SubnetCreate(Input):
    """An IPv4 or IPv6 range of a network; ports get one address from each subnet."""

    cidr: str = Field(min_length=1, max_length=64, examples=["10.0.0.0/24"],
                      description="Network address and prefix length, IPv4 or IPv6")
    gateway: str | None = Field(default=None, max_length=64, examples=["10.0.0.1"],
                                description="Router address inside the subnet (default: none); "
                                "never given to a port")
    dns: list[str] = Field(default_factory=list, max_length=8, examples=[["10.0.0.1"]],
                           description="Name servers the VMs are told about")


class NetworkCreate(Input):
    """A new network: provider (a VLAN of a physical interface) or tenant (VXLAN overlay)."""

    name: str = Field(pattern=NAME_PATTERN, examples=["lan"], description=NAME_RULE)
    kind: Literal["provider", "tenant"] = Field(examples=["tenant"])
    project: str | None = Field(default=None, min_length=1, max_length=63,
                                description="tenant only: its project (name or id); default: "
                                "yours if you have one, else 'default' for a region admin")
    vlan: int | None = Field(default=None, ge=1, le=4094, examples=[100],
                             description="provider only (required): the VLAN id, 1-4094")
    physical: str | None = Field(default=None, pattern=IFNAME_PATTERN, examples=["bond0"],
                                 description="provider only (required): the interface or bond "
                                 "of every node that carries the VLAN")
    mtu: int | None = Field(default=None, ge=576, le=9000,
                            description="Default: 1450 for tenant (VXLAN over a 1500 underlay), "
                            "1500 for provider")
    subnets: list[SubnetCreate] = Field(default_factory=list, max_length=16)


class Subnet(Output):
    id: str
    cidr: str
    gateway: str | None
    dns: list[str]
    created_at: UtcDatetime


class Network(Output):
    """A network of the region."""

    id: str
    name: str
    project: ProjectName = None
    kind: Literal["provider", "tenant"]
    vlan: int | None
    physical: str | None
    vni: int | None = Field(description="tenant: the VXLAN id, allocated by the region")
    mtu: int
    subnets: list[Subnet]
    ports: int = Field(description="How many ports it has")
    created_at: UtcDatetime


class PortCreate(Input):
    """A port (a NIC's address reservation) on a network, not bound to a VM."""

    network: str = Field(min_length=1, max_length=63, description="Network name or id")
    project: str | None = PROJECT_INPUT
    fixed_ips: list[str] = Field(default_factory=list, max_length=16, examples=[["10.0.0.10"]],
                                 description="At most one per subnet; the other subnets give "
                                 "their lowest free address")
    security_groups: list[str] | None = Field(
        default=None, max_length=16, description="Security groups (names or ids); default: "
        "the group 'default'; [] for an unfiltered port")


class Port(Output):
    """A NIC on a network, with one address per subnet."""

    id: str
    project: ProjectName = None
    network: str
    network_id: str
    instance: str | None = Field(description="VM name, if it is a VM's")
    mac: str
    addresses: list[str]
    security_groups: list[str] = Field(default_factory=list, description="Group names")
    created_at: UtcDatetime


class PortSecurityGroups(Input):
    """The security groups a port is in, replacing those it had."""

    groups: list[str] = Field(max_length=16, examples=[["default", "web"]],
                              description="Names or ids; [] leaves the port unfiltered")


class SecurityRuleCreate(Input):
    """An allow rule; everything inbound that no rule allows is dropped (replies pass)."""

    direction: Literal["ingress", "egress"] = Field(examples=["ingress"])
    ethertype: Literal["ipv4", "ipv6"] = "ipv4"
    protocol: Literal["any", "tcp", "udp", "icmp"] = "any"
    port_min: int | None = Field(default=None, ge=1, le=65535, description="tcp/udp only")
    port_max: int | None = Field(default=None, ge=1, le=65535,
                                 description="tcp/udp only; default: port_min")
    remote_cidr: str | None = Field(default=None, max_length=64, examples=["0.0.0.0/0"],
                                    description="Peers in this network (of the ethertype)")
    remote_group: str | None = Field(default=None, max_length=63,
                                     description="Peers that are ports of this group (name or "
                                     "id); not with remote_cidr; neither: anywhere")


class SecurityGroupCreate(Input):
    """A new security group, with its first rules."""

    name: str = Field(pattern=NAME_PATTERN, examples=["web"], description=NAME_RULE)
    project: str | None = PROJECT_INPUT
    description: str = Field(default="", max_length=255)
    rules: list[SecurityRuleCreate] = Field(default_factory=list, max_length=256)


class SecurityRule(Output):
    id: str
    direction: str
    ethertype: str
    protocol: str
    port_min: int | None
    port_max: int | None
    remote_cidr: str | None
    remote_group: str | None = Field(description="Group name")
    remote_group_id: str | None
    created_at: UtcDatetime


class SecurityGroup(Output):
    """A security group: its allow rules, and how many ports are in it."""

    id: str
    name: str
    project: ProjectName = None
    description: str
    rules: list[SecurityRule]
    ports: int = Field(description="How many ports are in it")
    created_at: UtcDatetime


class AuditQuery(PageQuery):
    """Which entries to list, newest first; every filter given must hold."""

    actor: str | None = Field(default=None, max_length=63)
    action: str | None = Field(default=None, max_length=63, examples=["instance.create"])
    target: str | None = Field(
        default=None, max_length=255, examples=["project/5d0c…", "project/"],
        description="The object acted on; ending with '/', every object of that kind")
    project: str | None = Field(default=None, max_length=63, description="Project acted in")
    since: UtcInput | None = Field(default=None, examples=["2026-12-01T00:00:00Z"],
                                        description="Entries made at or after this time")
    until: UtcInput | None = Field(default=None, examples=["2026-12-02T00:00:00Z"],
                                        description="Entries made before this time")
    before: int | None = Field(
        default=None, ge=1, lt=2**63, examples=[4711],
        description="Entries before this sequence number: the next page after one that "
        "ended with it")


class AuditEvent(Output):
    """One entry of the audit trail: who, with which token, from where, did what to which
    object in which project, and how it ended; `hash` chains it to the entry before."""

    seq: int = Field(description="Its place in the chain: 1, 2, 3... without gaps")
    at: UtcDatetime
    actor: str = Field(examples=["admin", "node:n1", "controller"])
    token_id: str | None = Field(description="Id of the API token used (never its secret)")
    source: str | None = Field(description="Address the request came from",
                               examples=["192.0.2.10"])
    action: str = Field(examples=["instance.create"])
    target: str = Field(examples=["instance/5d0c…"])
    project: str | None = Field(description="Project acted in (none before projects exist)")
    admin_in_project: bool | None = Field(
        description="An administrator acted inside a customer's project")
    outcome: str = Field(examples=["accepted", "succeeded", "refused", "failed"])
    detail: dict[str, Any]
    prev_hash: str = Field(description="Hash of the entry before (64 zeros before entry 1)")
    hash: str = Field(description="SHA-256 of prev_hash's bytes and the entry's canonical "
                      "JSON (docs/audit.md)")


class AuditExportQuery(Input):
    since: UtcInput | None = Field(
        default=None, description="First entry made at or after this time (ISO 8601 with a "
        "zone); all entries when absent", examples=["2026-12-01T00:00:00Z"])
    after: int | None = Field(
        default=None, ge=0, description="Entries after this sequence number: the head of the "
        "previous export, so that consecutive exports link up", examples=[97])

    @model_validator(mode="after")
    def _one_start(self) -> AuditExportQuery:
        if self.since is not None and self.after is not None:
            raise ValueError("give 'since' or 'after', not both")
        return self


class AuditFinding(Output):
    """One break of the chain, at the entry where it shows."""

    seq: int
    kind: Literal["edited", "removed", "inserted-or-reordered", "out-of-order",
                  "beyond-head", "head"]
    message: str = Field(examples=["entry 12 was edited: its fields no longer give its hash"])


class AuditVerification(Output):
    """The whole chain checked entry by entry against its hashes and its head."""

    ok: bool
    entries: int = Field(description="Entries checked")
    head_seq: int | None = Field(description="The chain head's entry (None if its row is gone)")
    head_hash: str | None
    breaks: int = Field(description="Breaks found; `findings` lists the first 50")
    findings: list[AuditFinding]


class AgentDesiredQuery(Input):
    after: int = Field(default=-1, ge=-1, description="Answer once the generation exceeds this")
    wait: float = Field(default=25.0, ge=0, le=3600,
                        description="Longest wait in seconds (the controller may end it sooner)")


class AgentConsolesQuery(Input):
    wait: float = Field(default=25.0, ge=0, le=3600,
                        description="Longest wait in seconds (the controller may end it sooner)")


class RegionStatus(Output):
    """The region at a glance."""

    version: str
    database: str
    nodes_up: int
    nodes_down: int
    instances: int
    instances_running: int
    images: int
    operations_pending: int
    agents_waiting: int = Field(description="Agents' long-polls waiting for a change right now")
    ca_sha256: str
    storage_driver: str
    storage: dict[str, Any] | None = Field(
        description="Health and pool usage, as the most recently reporting node sees them")


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
    state: Literal["free", "in-use", "vgpu", "unusable"] = Field(
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


ROLE_NAMES = Literal["region-admin", "operator", "auditor", "project-admin", "project-member",
                     "project-viewer"]


class ProjectCreate(Input):
    """A new project (a tenant)."""

    name: str = Field(pattern=NAME_PATTERN, examples=["web-shop"], description=NAME_RULE)
    description: str = Field(default="", max_length=255)


class ProjectQuotas(Input):
    """How much a project may hold; a quota left out (or null) is no limit."""

    instances: int | None = Field(default=None, ge=0, le=1_000_000)
    vcpus: int | None = Field(default=None, ge=0, le=100_000_000)
    memory_mib: int | None = Field(default=None, ge=0, le=2**40)
    gpus: dict[str, int] | None = Field(
        default=None, max_length=32, examples=[{"H100": 4}],
        description="Whole GPUs, per model (words of the model name, as VMs ask for them)")
    vgpus: int | None = Field(default=None, ge=0, le=1_000_000)
    storage_gib: int | None = Field(default=None, ge=0, le=2**40,
                                    description="Root disks and volumes")
    volumes: int | None = Field(default=None, ge=0, le=1_000_000)
    networks: int | None = Field(default=None, ge=0, le=1_000_000)
    public_addresses: int | None = Field(default=None, ge=0, le=1_000_000,
                                         description="Addresses on shared (provider) networks")

    @model_validator(mode="after")
    def _gpu_counts(self) -> ProjectQuotas:
        for model, count in (self.gpus or {}).items():
            if not model.strip() or len(model) > 64 or not 0 <= count <= 1_000_000:
                raise ValueError(f"gpus: '{model[:64]}': a model name of 1-64 characters and "
                                 "a count of 0 or more")
        return self


class Project(Output):
    """A project: its resources are seen and touched only by its members (and the
    region's roles)."""

    id: str
    name: str
    description: str
    quotas: dict[str, Any] = Field(title="Limits", description="Its limits (absent: no limit)")
    created_by: str
    created_at: UtcDatetime


class ProjectDetail(Project):
    usage: dict[str, Any] = Field(description="What it holds now, per quota")


class UserCreate(Input):
    """A new local user; without a password, one is made and shown once."""

    name: str = Field(pattern=NAME_PATTERN, examples=["alice"], description=NAME_RULE)
    password: str | None = Field(default=None, min_length=12, max_length=1024,
                                 description="At least 12 characters; default: a random one, "
                                 "shown once")


class RoleBindingCreate(Input):
    """Give a user a role: a region role (no project) or a role in one project."""

    user: str = Field(min_length=1, max_length=63, description="User name or id")
    role: ROLE_NAMES
    project: str | None = Field(default=None, min_length=1, max_length=63,
                                description="Project name or id: for project roles only")


class RoleBinding(Output):
    id: str
    user: str
    role: str
    project: ProjectName = None
    created_by: str
    created_at: UtcDatetime


class RoleBindingsQuery(Input):
    user: str | None = Field(default=None, min_length=1, max_length=63)
    project: str | None = Field(default=None, min_length=1, max_length=63)


class User(Output):
    """A user and the roles it holds."""

    id: str
    name: str
    roles: list[RoleBinding]
    created_at: UtcDatetime


class UserCreated(User):
    password: str | None = Field(description="The password made for it, shown only now "
                                 "(null when one was given)")


class ApiTokenCreate(Input):
    """A named API token that acts with one role (no wider than yours), until it expires
    or is revoked."""

    name: str = Field(pattern=NAME_PATTERN, examples=["ci-deploy"], description=NAME_RULE)
    role: ROLE_NAMES
    project: str | None = Field(default=None, min_length=1, max_length=63,
                                description="Project name or id: for project roles only")
    ttl_seconds: int = Field(default=90 * 86400, ge=60, le=366 * 86400)


class ApiToken(Output):
    """An API token as listed: its secret was shown once, at creation."""

    id: str
    name: str | None = Field(description="null for a login's token")
    role: str | None = Field(description="null: all its user's roles (a login's token)")
    project: ProjectName = None
    expires_at: UtcDatetime
    last_used_at: UtcDatetime | None = Field(description="To the minute")
    revoked_at: UtcDatetime | None
    created_at: UtcDatetime


class ApiTokenCreated(ApiToken):
    token: str = Field(description="The secret: send it as 'Authorization: Bearer <token>'; "
                       "shown only now")


class Account(Output):
    """Who you are, and with which roles this token acts."""

    id: str
    name: str
    token_id: str | None
    roles: list[RoleBinding] = Field(description="Your roles")
    acting_as: list[str] = Field(description="What this token may use of them")


class TotpEnrollment(Output):
    """A new TOTP seed, pending until a code of it is confirmed; shown this once."""

    username: str
    provisioning_uri: str = Field(examples=[
        "otpauth://totp/Vauban:alice?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=Vauban"])
    state: Literal["pending"] = "pending"


class TotpEnroll(Input):
    """Start enrolling a new seed: the password, and the current code when the user has
    one, show the request is the user's (a token alone does not do)."""

    password: str = Field(min_length=1, max_length=1024)
    totp: str | None = Field(default=None, pattern=TOTP_CODE, examples=["123456"],
                             description="a one-time code, if the user has a second factor")


class TotpConfirm(Input):
    """Activate the pending seed with a code it makes now."""

    code: str = Field(pattern=TOTP_CODE, examples=["123456"])


class TotpStatus(Output):
    """Whether the user logs in with a one-time code."""

    username: str
    enrolled: bool
    required: bool = Field(description="whether this user must use a second factor")


class PasswordChange(Input):
    """Change one's own password; the user's other tokens are revoked."""

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=12, max_length=1024,
                              description="at least 12 characters, not the current one")
    totp: str | None = Field(default=None, pattern=TOTP_CODE, examples=["123456"],
                             description="a one-time code, if the user has a second factor")


class PasswordChanged(Output):
    username: str
    tokens_revoked: int = Field(description="the user's other tokens, now unusable")


class UserReset(Input):
    """Reset a user's password (and, with `totp`, give it a new TOTP seed)."""

    totp: bool = False


class UserResetDone(Output):
    """The new credentials, shown this once; every token of the user was revoked."""

    username: str
    password: str
    provisioning_uri: str | None = None
    tokens_revoked: int
