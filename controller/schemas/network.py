"""Networks, subnets, ports and security groups."""

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
    xapi_network: str | None = Field(
        default=None, min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$",
        examples=["Pool-wide network"], description="provider only: the XCP-ng pool "
        "network (its name) that XCP-ng pools' VMs join for this network")


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
    xapi_network: str | None = Field(default=None, description="provider: the XCP-ng pool "
                                     "network its pools' VMs join")
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
    dhcp: bool = Field(default=False, description="Its guest configures IPv4 by DHCP (a VM's "
                       "port; its node answers with the port's own address)")
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
