"""XCP-ng pools: probing a pool master and enrolling the pool as a node."""

from __future__ import annotations

from pydantic import Field

from controller.schemas.base import NAME_PATTERN, NAME_RULE, Input, Output

FINGERPRINT = r"^(sha256:)?([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$|^(sha256:)?[0-9A-Fa-f]{64}$"
FINGERPRINT_RULE = "SHA-256 of the certificate: 64 hex digits, with or without ':' between pairs"


class XcpngProbe(Input):
    """A pool master to read (nothing is changed, nothing kept)."""

    url: str = Field(min_length=9, max_length=255, examples=["https://10.0.9.20"],
                     description="The pool master: https://HOST[:PORT]")
    username: str = Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$",
                          examples=["root"])
    password: str = Field(min_length=1, max_length=256, description="Kept sealed with the "
                          "region key once enrolled; never shown again")
    fingerprint: str = Field(pattern=FINGERPRINT, description="The master's certificate, "
                             "as its console shows it. " + FINGERPRINT_RULE)


class XcpngEnroll(XcpngProbe):
    """Enroll the pool as a node, its members pinned as confirmed."""

    name: str = Field(pattern=NAME_PATTERN, description="The node's name. " + NAME_RULE,
                      examples=["xcp-pool-a"])
    members: dict[str, str] = Field(
        min_length=1, max_length=64,
        description="Each member's host UUID -> the SHA-256 the operator confirmed (as a "
        "probe showed it); refused when the pool now shows other members or certificates")
    sr: str | None = Field(default=None, min_length=1, max_length=255,
                           description="The storage repository (uuid or name) for the "
                           "pool's images and VM disks; default: the pool's default SR, "
                           "whichever it is when the agent starts")
    template: str | None = Field(default=None, min_length=1, max_length=255,
                                 pattern=r"^[^\x00-\x1f\x7f]+$",
                                 description="The VM template (by name) the pool's VMs are "
                                 "cloned from; default: \"Other install media\"")


class XcpngRepinProbe(Input):
    """Read an enrolled pool again with its stored credentials (nothing is changed)."""

    fingerprint: str | None = Field(default=None, pattern=FINGERPRINT, description=(
        "The master's certificate as its console shows it now, when it changed; default: "
        "the pinned one. " + FINGERPRINT_RULE))


class XcpngRepin(XcpngRepinProbe):
    """Pin the members' certificates as the pool shows them now."""

    members: dict[str, str] = Field(
        min_length=1, max_length=64,
        description="Each member's host UUID -> the SHA-256 the operator confirmed (as a "
        "probe showed it); refused when the pool now shows other members or certificates")


class XcpngMember(Output):
    """One host of a pool and its pinned certificate."""

    host_uuid: str
    name: str
    address: str
    sha256: str = Field(description="AA:BB:… as openssl prints it")
    master: bool = False


class XcpngRepository(Output):
    """A storage repository of a pool that can hold VM disks."""

    uuid: str
    name: str
    type: str = Field(examples=["ext", "lvm", "nfs"])
    default: bool = Field(description="The pool's default SR")


class XcpngPool(Output):
    """A pool as probed, or as enrolled."""

    url: str
    pool_uuid: str
    pool_name: str
    members: list[XcpngMember]
    repositories: list[XcpngRepository] = Field(default_factory=list)


class XcpngEnrolled(Output):
    """The enrolled pool's node, and the one-time token its agent joins with."""

    node_id: str
    name: str
    pool: XcpngPool
    join_token: str = Field(description="Shown once: `vauban-agent join --name NAME` with "
                            "it, then run the agent with hypervisor = \"xapi\"")


class XcpngJoinToken(Output):
    """A new one-time token for an agent to join a pool's node again (a rebuilt host)."""

    node_id: str
    name: str
    join_token: str = Field(description="Shown once, valid 24 h: `vauban-agent join --name "
                            "NAME` with it; earlier unused tokens of the node are revoked")
