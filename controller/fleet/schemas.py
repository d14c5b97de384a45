"""API wire types of the fleet: servers added over SSH, rollouts, node labels."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from agent.protocol import UtcDatetime
from controller.schemas import NAME_PATTERN, NAME_RULE, Input, Output
from hardware.model import QualificationReport

ADDRESS_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,253}[A-Za-z0-9])?$"  # a host name or IP
TAG_PATTERN = r"^[A-Za-z0-9_-]{1,63}$"


class FleetHostCreate(Input):
    """Add a server: reach it over SSH with its host key pinned, qualify it, authorize
    the controller's fleet key. The private key is used for this connection only. The
    pin (host_key_sha256 or known_hosts) is required, except for a node that joined by
    itself: the keys its agent reported are pinned then."""

    address: str = Field(pattern=ADDRESS_PATTERN, examples=["10.0.0.21"])
    name: str = Field(pattern=NAME_PATTERN, description=f"its node name; {NAME_RULE}")
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(default="root", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    ssh_private_key: str = Field(min_length=64, max_length=16384,
                                 description="an unencrypted private key accepted by the server")
    host_key_sha256: str | None = Field(default=None, max_length=60,
                                        examples=["SHA256:oECuZ8uxX9TH3qqA9PnGO5PjOSz0BSCtevLFKVI+xs4"])
    known_hosts: str | None = Field(default=None, max_length=65536,
                                    description="known_hosts lines listing the server's key")
    role: Literal["node", "controller"] = "node"
    profile: Literal["compute", "gpu", "storage", "lab"] = Field(
        default="compute", description="the hardware profile the server must pass")

    @model_validator(mode="after")
    def _one_pin(self) -> FleetHostCreate:
        if self.host_key_sha256 is not None and self.known_hosts is not None:
            raise ValueError("give the server's host key one way: host_key_sha256 or "
                             "known_hosts, not both")
        return self


class FleetHost(Output):
    """A server of the fleet, as rollouts reach it."""

    id: str
    name: str
    address: str
    port: int
    user: str
    role: str
    host_key_sha256: str
    qualification: QualificationReport | None
    created_by: str
    created_at: UtcDatetime


class RolloutCreate(Input):
    """Run the site playbook on the fleet, or on `limit`, batch after batch."""

    limit: list[str] | None = Field(default=None, min_length=1, max_length=10000,
                                    description="host names (default: the whole fleet)")
    tags: list[str] = Field(default_factory=list, max_length=32)
    batch: int | None = Field(default=None, ge=1, le=10000,
                              description="hosts per batch (default: all at once)")
    upgrade: bool = Field(default=False, description="each batch's nodes must report the "
                          "new agent version before the next batch starts")
    version: str | None = Field(default=None, pattern=r"^[0-9][0-9A-Za-z.+-]{0,30}$",
                                description="the release to install (default: the "
                                "controller's own version)")

    @model_validator(mode="after")
    def _names(self) -> RolloutCreate:
        for name in self.limit or []:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"limit: {name[:70]!r} is not a host name ({NAME_RULE})")
        for tag in self.tags:
            if not re.match(TAG_PATTERN, tag):
                raise ValueError(f"tags: {tag[:70]!r}: 1-63 of letters, digits, '_' and '-'")
        return self


class RolloutHost(Output):
    host: str
    batch: int
    state: str = Field(description="pending, running, ok, changed, failed, unreachable, not run")
    task: str
    tasks_done: int
    changed: int
    message: str | None


class Rollout(Output):
    id: str
    state: str = Field(description="pending, running, succeeded or failed")
    upgrade: bool
    version: str
    batch_size: int
    tags: list[str]
    tasks_expected: int = Field(description="a host's tasks in the last like rollout (0: unknown)")
    error: str | None
    operation_id: str | None
    requested_by: str
    created_at: UtcDatetime
    finished_at: UtcDatetime | None
    hosts: list[RolloutHost]


class NodeLabels(Input):
    """Labels to set (key: value) and to remove (keys)."""

    set: dict[str, str] = Field(default_factory=dict, max_length=64)
    remove: list[str] = Field(default_factory=list, max_length=64)
