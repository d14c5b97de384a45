"""Projects, users, role bindings, named API tokens, the caller's account and its
second factor."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from agent.protocol import UtcDatetime
from controller.schemas.base import NAME_PATTERN, NAME_RULE, TOTP_CODE, Input, Output, ProjectName

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
