"""High availability: nodes' BMCs and failovers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.protocol import UtcDatetime
from controller.schemas.base import Input, Output


class NodeBmcSet(Input):
    """How the controller reaches the node's BMC over IPMI (RMCP+), to power it off before
    its HA VMs are restarted elsewhere. Checked live: the BMC must answer with these."""

    kind: Literal["ipmi"] = "ipmi"
    address: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:\[\]-]+$",
                         description="Its IP address or DNS name", examples=["10.0.9.11"])
    port: int = Field(default=623, ge=1, le=65535)
    username: str = Field(min_length=1, max_length=16, pattern=r"^[\x21-\x7e]+$")
    password: str = Field(min_length=1, max_length=20, description="Kept sealed with the "
                          "region key; never shown again (IPMI passwords: at most 20)")


class NodeBmc(Output):
    """A node's BMC as configured (never its password)."""

    kind: str
    address: str
    port: int
    username: str
    power_state: str | None = Field(default=None, description="What it read when set")
    updated_at: UtcDatetime


class NodeFence(Input):
    """The operator vouches that the lost node's power is off (its BMC cannot)."""

    confirm_powered_off: Literal[True]


class Failover(Output):
    """A lost node's fencing and the restart of its HA VMs elsewhere."""

    id: str
    node_id: str
    state: str = Field(description="detected (powering it off), powered-off (cutting it off "
                       "from Ceph), fenced (restarting its HA VMs), done, or cancelled")
    reason: str | None = Field(description="What it does or waits on, in words")
    attempts: int
    created_at: UtcDatetime
    updated_at: UtcDatetime
    finished_at: UtcDatetime | None
