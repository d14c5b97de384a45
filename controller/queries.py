"""Query parameters of the list endpoints: a page (limit, cursor) and the filters that
apply to each list. Every filter given must hold; a name filter matches the whole name."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from controller.schemas import PageQuery
from controller.states import GpuState, InstanceState, NodeState, RolloutState, VolumeState

NAME = Field(default=None, min_length=1, max_length=63, description="Only the one so named")
PROJECT = Field(default=None, min_length=1, max_length=63,
                description="Only those of this project (name or id)")
NODE = Field(default=None, min_length=1, max_length=63,
             description="Only those on this node (name or id)")


class InstancesQuery(PageQuery):
    """Which VMs to list, by name."""

    name: str | None = NAME
    project: str | None = PROJECT
    node: str | None = NODE
    state: InstanceState | None = Field(default=None, examples=["running"],
                                        description="Only those in this state")


class ImagesQuery(PageQuery):
    """Which images to list, by name."""

    name: str | None = NAME
    project: str | None = PROJECT
    visibility: Literal["public", "project"] | None = Field(
        default=None, description="public: only those shared with every project; project: "
        "only those of a project")


class VolumesQuery(PageQuery):
    """Which volumes to list, by name."""

    name: str | None = NAME
    project: str | None = PROJECT
    state: VolumeState | None = Field(default=None, examples=["available"],
                                      description="Only those in this state")


class NetworksQuery(PageQuery):
    """Which networks to list, by name."""

    name: str | None = NAME
    project: str | None = PROJECT


class PortsQuery(PageQuery):
    """Which ports to list, by id."""

    network: str | None = Field(default=None, min_length=1, max_length=63,
                                description="Only those on this network (name or id)")
    project: str | None = PROJECT


class SecurityGroupsQuery(PageQuery):
    """Which security groups to list, by name."""

    name: str | None = NAME
    project: str | None = PROJECT


class NodesQuery(PageQuery):
    """Which nodes to list, by name."""

    name: str | None = NAME
    state: NodeState | None = Field(default=None, examples=["up"],
                                    description="Only those in this state")
    label: str | None = Field(
        default=None, min_length=3, max_length=127, pattern=r"^[^=]+=.*$",
        examples=["rack=r1"], description="Only those with this label: key=value")


class ProjectsQuery(PageQuery):
    """Which projects to list, by name."""

    name: str | None = NAME


class UsersQuery(PageQuery):
    """Which users to list, by name."""

    name: str | None = NAME


class FleetHostsQuery(PageQuery):
    """Which servers of the fleet to list, by name."""

    name: str | None = NAME


class RolloutsQuery(PageQuery):
    """Which rollouts to list, newest first."""

    state: RolloutState | None = Field(default=None, examples=["running"],
                                       description="Only those in this state")


class RoleBindingsQuery(PageQuery):
    """Which role bindings to list, oldest first."""

    user: str | None = Field(default=None, min_length=1, max_length=63,
                             description="Only this user's (name or id)")
    project: str | None = PROJECT


class ApiTokensQuery(PageQuery):
    """Which of your API tokens to list, oldest first."""


class GpusQuery(PageQuery):
    """Which GPUs to list, by node name and PCI address."""

    node: str | None = NODE
    state: GpuState | None = Field(default=None, description="Only those in this state")
