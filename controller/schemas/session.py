"""Logging in (bearer tokens, browser sessions), joining nodes, the region's status
and the agent's query parameters."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from agent.protocol import UtcDatetime
from controller.schemas.base import TOTP_CODE, Input, Output


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
