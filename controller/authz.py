"""Who may do what: the roles, what each allows, and the caller a request acts as.

Region roles reach the whole region: `region-admin` may do everything; `operator` runs
the infrastructure (nodes, join tokens, rollouts, public images, provider networks) and
reads every project; `auditor` reads everything, the audit trail included, and changes
nothing. Project roles reach one project: `project-viewer` reads it, `project-member`
also makes and changes its resources, `project-admin` also manages its members.

Every route of the API declares what it needs (`Access`), in one place next to its
handler (controller/api/framework.py): a region permission (`Region`), a level in some
project (`InProject`: which project is decided with the object, see
controller/services/tenancy.py), or only a logged-in user (`ANY_USER`, for what a user
does to itself). A route without a declaration does not register, so the API does not
start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum


class Level(IntEnum):
    """How far a caller reaches into a project."""

    READ = 1
    WRITE = 2
    ADMIN = 3


REGION_ADMIN, OPERATOR, AUDITOR = "region-admin", "operator", "auditor"
PROJECT_ADMIN, PROJECT_MEMBER, PROJECT_VIEWER = "project-admin", "project-member", \
    "project-viewer"
REGION_ROLES = (REGION_ADMIN, OPERATOR, AUDITOR)
PROJECT_ROLES = (PROJECT_ADMIN, PROJECT_MEMBER, PROJECT_VIEWER)
ROLES = REGION_ROLES + PROJECT_ROLES

PROJECT_LEVEL: Mapping[str, Level] = {PROJECT_VIEWER: Level.READ,
                                      PROJECT_MEMBER: Level.WRITE,
                                      PROJECT_ADMIN: Level.ADMIN}
# how far each region role reaches into every project
REGION_REACH: Mapping[str, Level] = {REGION_ADMIN: Level.ADMIN, OPERATOR: Level.READ,
                                     AUDITOR: Level.READ}


class Perm(StrEnum):
    """What the region's own routes need."""

    REGION_READ = "region.read"  # status, nodes, GPUs, join tokens, region operations
    NODES_WRITE = "nodes.write"  # labels, removal, join tokens
    FLEET_READ = "fleet.read"  # fleet hosts, rollouts and their logs, the inventory
    FLEET_WRITE = "fleet.write"  # adding servers, running rollouts
    FLEET_KEY = "fleet.key"  # the fleet's public SSH key
    IMAGES_PUBLIC = "images.public"  # import and delete the images every project shares
    NETWORKS_PROVIDER = "networks.provider"  # make and delete provider networks
    AUDIT_READ = "audit.read"  # read, verify and export the audit trail
    IDENTITY = "identity.admin"  # users, projects, anyone's roles
    METRICS_READ = "metrics.read"  # scrape /metrics (docs/metrics.md)


_OPERATOR = frozenset({Perm.REGION_READ, Perm.NODES_WRITE, Perm.FLEET_READ, Perm.FLEET_WRITE,
                       Perm.FLEET_KEY, Perm.IMAGES_PUBLIC, Perm.NETWORKS_PROVIDER,
                       Perm.METRICS_READ})
REGION_PERMS: Mapping[str, frozenset[Perm]] = {
    REGION_ADMIN: frozenset(Perm),
    OPERATOR: _OPERATOR,
    AUDITOR: frozenset({Perm.REGION_READ, Perm.FLEET_READ, Perm.AUDIT_READ,
                        Perm.METRICS_READ}),
}


@dataclass(frozen=True)
class Region:
    """The route needs a region permission."""

    perm: Perm


@dataclass(frozen=True)
class InProject:
    """The route needs `level` in the project of the object it acts on (or makes)."""

    level: Level


@dataclass(frozen=True)
class AnyUser:
    """Any logged-in user: what a user does to itself (its tokens, its account)."""


@dataclass(frozen=True)
class AnyOf:
    """Either declaration lets the caller in (a public image by an operator, or a
    private one by a project member)."""

    region: Region
    project: InProject


ANY_USER = AnyUser()
Access = Region | InProject | AnyUser | AnyOf

# A VM's console is a keyboard on the guest: opening one is operating the VM, as starting
# or stopping it is (a project member or admin, or a region admin); a viewer, an auditor
# or an operator, who read every project, may not.
CONSOLE = InProject(Level.WRITE)


@dataclass(frozen=True)
class Caller:
    """The user a request acts as, with the roles that request may use: all of the user's
    for a login's token, at most the token's for a named one."""

    user_id: str
    name: str
    token_id: str | None
    region_roles: frozenset[str]
    # project id -> the highest level a project role gives there
    projects: Mapping[str, Level] = field(default_factory=dict)

    @classmethod
    def of(cls, user_id: str, name: str, token_id: str | None,
           bindings: Iterable[tuple[str, str | None]],
           token_scope: tuple[str, str | None] | None = None) -> Caller:
        """The caller from the user's (role, project id) bindings, narrowed to
        `token_scope` (a named token's role and project) when given: a token never acts
        with more than its user holds now, whatever it was made with."""
        held = list(bindings)
        if token_scope is not None:
            held = _narrow(held, *token_scope)
        region = frozenset(role for role, project in held if project is None)
        projects: dict[str, Level] = {}
        for role, project in held:
            if project is not None and role in PROJECT_LEVEL:
                projects[project] = max(projects.get(project, Level.READ), PROJECT_LEVEL[role])
        return cls(user_id, name, token_id, region, projects)

    def has(self, perm: Perm) -> bool:
        return any(perm in REGION_PERMS[role] for role in self.region_roles)

    @property
    def reach(self) -> Level | None:
        """How far the caller reaches into every project (by a region role), or None."""
        return max((REGION_REACH[r] for r in self.region_roles), default=None)

    def level_in(self, project_id: str) -> Level | None:
        """The caller's level in `project_id`, or None if it may not even see it."""
        levels = [lv for lv in (self.reach, self.projects.get(project_id)) if lv is not None]
        return max(levels, default=None)

    def projects_at(self, level: Level) -> frozenset[str] | None:
        """The projects the caller reaches at `level` or above; None: every project."""
        if self.reach is not None and self.reach >= level:
            return None
        return frozenset(p for p, lv in self.projects.items() if lv >= level)

    def may(self, access: Access) -> bool:
        """Whether the route's declaration lets this caller in at all (the object's
        project is checked later, with the object)."""
        if isinstance(access, Region):
            return self.has(access.perm)
        if isinstance(access, InProject):
            reach = self.projects_at(access.level)
            return reach is None or bool(reach)
        if isinstance(access, AnyOf):
            return self.may(access.region) or self.may(access.project)
        return True

    def roles_text(self) -> str:
        """The caller's roles in words, for a refusal's message."""
        held = sorted(self.region_roles)
        if self.projects:
            held.append(f"roles in {len(self.projects)} project(s)")
        return ", ".join(held) or "no role"

    def is_admin_outside(self, project_id: str) -> bool:
        """Whether the caller acts in `project_id` by a region role only (an
        administrator inside a customer's project: the audit trail flags it)."""
        return project_id not in self.projects and self.reach is not None


def _narrow(held: list[tuple[str, str | None]], role: str,
            project: str | None) -> list[tuple[str, str | None]]:
    """The token's (role, project) if its user still holds that much, else nothing."""
    if project is None:
        return [(role, None)] if (role, None) in held else []
    level = PROJECT_LEVEL[role]
    for held_role, held_project in held:
        by_region = held_project is None and held_role == REGION_ADMIN
        in_project = held_project == project and PROJECT_LEVEL.get(held_role, 0) >= level
        if by_region or in_project:
            return [(role, project)]
    return []


def may_grant(granter: Caller, role: str, project_id: str | None) -> bool:
    """Whether `granter` may give `role` (in `project_id`) to someone, or to a token of its
    own: region roles only by who holds identity rights; a project role by those, or by
    the project's admins up to their own level."""
    if granter.has(Perm.IDENTITY):
        return True
    if project_id is None:
        return False
    return granter.projects.get(project_id, Level.READ) >= Level.ADMIN and \
        PROJECT_LEVEL[role] <= Level.ADMIN


def token_scope_allowed(caller: Caller, role: str, project_id: str | None) -> bool:
    """Whether `caller` may make a token that acts as `role` (in `project_id`): no wider
    than what the caller holds itself."""
    if project_id is None:
        return role in caller.region_roles
    if REGION_ADMIN in caller.region_roles:
        return True
    return caller.projects.get(project_id, 0) >= PROJECT_LEVEL[role]
