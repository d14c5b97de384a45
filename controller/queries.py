"""Query parameters of the list endpoints: a page (limit, cursor) and the filters that
apply to each list. Every filter given must hold; a name filter matches the whole name."""

from __future__ import annotations

from pydantic import Field

from controller.schemas import PageQuery

NAME = Field(default=None, min_length=1, max_length=63, description="Only the one so named")
PROJECT = Field(default=None, min_length=1, max_length=63,
                description="Only those of this project (name or id)")


class InstancesQuery(PageQuery):
    """Which VMs to list, by name."""

    name: str | None = NAME
    project: str | None = PROJECT
    node: str | None = Field(default=None, min_length=1, max_length=63,
                             description="Only those on this node (name or id)")


class ImagesQuery(PageQuery):
    """Which images to list, by name."""

    name: str | None = NAME
    project: str | None = PROJECT


class VolumesQuery(PageQuery):
    """Which volumes to list, by name."""

    name: str | None = NAME
    project: str | None = PROJECT


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

    state: str | None = Field(default=None, max_length=16, examples=["running"],
                              description="Only those in this state")
