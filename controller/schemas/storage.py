"""Block volumes and their snapshots."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.protocol import UtcDatetime
from controller.schemas.base import (
    NAME_PATTERN,
    NAME_RULE,
    PROJECT_INPUT,
    Input,
    Output,
    ProjectName,
)

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
