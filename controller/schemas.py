"""API wire types: `…Create` for what a client sends, the bare name for what it reads back."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
NAME_RULE = "1-63 characters: lowercase letters, digits and '-', not starting or ending with '-'"


class Input(BaseModel):
    """Base of client input: unknown fields are an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class TokenCreate(Input):
    """Log in: trade a user name and password for a bearer token."""

    username: str = Field(min_length=1, max_length=63, examples=["admin"])
    password: str = Field(min_length=1, max_length=1024)
    ttl_seconds: int = Field(default=12 * 3600, ge=60, le=30 * 86400)


class Token(Output):
    """A bearer token: send it as `Authorization: Bearer <token>`."""

    token: str
    expires_at: datetime
    username: str


class JoinTokenCreate(Input):
    """Ask for a one-time token that lets one new node join the region."""

    description: str = Field(default="", max_length=255, examples=["rack 3, slot 12"])
    ttl_seconds: int = Field(default=3600, ge=60, le=7 * 86400)


class JoinToken(Output):
    """A join token as listed (the secret is shown only once, at creation)."""

    id: str
    description: str
    expires_at: datetime
    used_at: datetime | None
    used_by_node_id: str | None
    created_at: datetime


class JoinTokenCreated(JoinToken):
    """A new join token; `token` and `ca_sha256` go to `vauban-agent join`."""

    token: str
    ca_sha256: str = Field(description="SHA-256 of the region CA certificate, for pinning")


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
    last_seen_at: datetime | None
    inventory: dict[str, Any]
    created_at: datetime


class ImageImportQuery(Input):
    """Metadata of an image upload; the body is the image file itself."""

    name: str = Field(pattern=NAME_PATTERN, examples=["debian-12"], description=NAME_RULE)
    disk_format: Literal["raw", "qcow2"] = Field(examples=["qcow2"])
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Expected SHA-256 of the file")
    os: str | None = Field(default=None, max_length=63, examples=["debian12"])
    min_disk_gib: int = Field(default=1, ge=1, le=65536)


class Image(Output):
    """A guest image held by the region."""

    id: str
    name: str
    disk_format: str
    size_bytes: int
    virtual_size_bytes: int
    sha256: str
    os: str | None
    min_disk_gib: int
    signature: str | None
    created_at: datetime


class InstanceCreate(Input):
    """A new VM."""

    name: str = Field(pattern=NAME_PATTERN, examples=["web-1"], description=NAME_RULE)
    image: str = Field(min_length=1, max_length=63, description="Image name or id")
    vcpus: int = Field(ge=1, le=256, examples=[2])
    memory_mib: int = Field(ge=64, le=4 * 1024 * 1024, examples=[1024])
    root_disk_gib: int | None = Field(default=None, ge=1, le=65536)
    hostname: str | None = Field(default=None, pattern=NAME_PATTERN, description="Default: name")
    user_data: str = Field(default="", max_length=64 * 1024, description="cloud-init user-data")
    node: str | None = Field(default=None, description="Pin to this node (name or id)")
    start: bool = Field(default=True, description="Start the VM once it is created")


class Instance(Output):
    """A VM: what was asked for and what its node reports."""

    id: str
    name: str
    state: str = Field(
        description="creating, running, stopped, starting, stopping, deleting, error or unknown"
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
    error: str | None
    console_log: str | None
    created_at: datetime
    updated_at: datetime


class Operation(Output):
    """A long action: follow it until `state` is succeeded or failed."""

    id: str
    kind: str
    target_id: str
    target_name: str
    node_id: str | None
    state: Literal["pending", "running", "succeeded", "failed"]
    progress: int
    error: str | None
    requested_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class OperationsQuery(Input):
    target: str | None = Field(default=None, description="Only operations on this object id")
    limit: int = Field(default=100, ge=1, le=1000)


SNAPSHOT_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class VolumeCreate(Input):
    """A new block volume on the region's shared storage."""

    name: str = Field(pattern=NAME_PATTERN, examples=["db-data"], description=NAME_RULE)
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
    state: str = Field(description="creating, available, in-use, attaching, detaching, "
                       "resizing, snapshotting, rolling-back, deleting or error")
    pool: str
    size_gib: int
    size_bytes: int | None
    used_bytes: int | None
    snapshots: list[str]
    source: str | None
    attached_to: str | None = Field(description="VM name")
    target: str | None
    steward: str = Field(description="The node that looks after it")
    error: str | None
    created_at: datetime
    updated_at: datetime


class AuditQuery(Input):
    actor: str | None = Field(default=None, max_length=63)
    action: str | None = Field(default=None, max_length=63, examples=["instance.create"])
    limit: int = Field(default=100, ge=1, le=1000)


class AuditEvent(Output):
    """One mutating action: who did what to which object, and how it ended."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any]


class AgentDesiredQuery(Input):
    after: int = Field(default=-1, ge=-1, description="Answer once the generation exceeds this")
    wait: float = Field(default=25.0, ge=0, le=60, description="Longest wait in seconds")


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
    ca_sha256: str
    storage_driver: str
    storage: dict[str, Any] | None = Field(
        description="Health and pool usage, as the most recently reporting node sees them")
