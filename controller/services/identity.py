"""Projects, users, who holds which role, and named API tokens: the region's identity.

Every change is audited. Refusals are raised before the caller commits, so a refused
request changes nothing. The region keeps at least one region-admin: the last one's
role cannot be taken and the last one cannot be deleted.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from controller.authz import (
    PROJECT_ROLES,
    REGION_ADMIN,
    Caller,
    Level,
    Perm,
    may_grant,
    token_scope_allowed,
)
from controller.db.models import (
    ApiToken,
    Image,
    Instance,
    Network,
    Port,
    Project,
    RoleBinding,
    SecurityGroup,
    User,
    Volume,
)
from controller.errors import Conflict, Forbidden, InvalidInput, NotFound
from controller.schemas import (
    ApiTokenCreate,
    ProjectCreate,
    ProjectQuotas,
    RoleBindingCreate,
    UserCreate,
)
from controller.services import audit, passwords, tenancy
from controller.services import security_groups as secgroups
from controller.services.auth import sha256_hex

OWNED = ((Instance, "VMs"), (Volume, "volumes"), (Network, "networks"), (Port, "ports"),
         (Image, "images"))


def create_project(db: Session, actor: str, body: ProjectCreate) -> Project:
    """A new project with its security group 'default'; Conflict if the name is taken."""
    if db.scalar(select(Project.id).where(Project.name == body.name)) is not None:
        raise Conflict(f"a project named '{body.name}' already exists")
    project = Project(name=body.name, description=body.description, created_by=actor)
    db.add(project)
    db.flush()
    secgroups.ensure_default(db, project.id, actor)
    audit.record(db, actor, "project.create", f"project/{project.id}", name=project.name)
    return project


def set_quotas(db: Session, actor: str, project: Project, body: ProjectQuotas) -> Project:
    """Replace the project's quotas (what it holds already stays, even above them)."""
    project.quotas = body.model_dump(exclude_none=True)
    audit.record(db, actor, "project.quotas", f"project/{project.id}", name=project.name,
                 quotas=project.quotas)
    return project


def delete_project(db: Session, actor: str, project: Project) -> None:
    """Delete an empty project (its group 'default' and its members' roles go with it);
    Conflict naming what it still holds otherwise."""
    if project.name == tenancy.DEFAULT_PROJECT:
        raise Conflict("the project 'default' holds what was made before projects existed "
                       "and what a region admin makes without naming one; it stays")
    held = []
    for model, what in OWNED:
        n = int(db.scalar(select(func.count()).select_from(model)
                          .where(model.project_id == project.id)) or 0)
        if n:
            held.append(f"{n} {what}")
    groups = list(db.scalars(select(SecurityGroup).where(SecurityGroup.project_id == project.id)))
    if any(g.name != secgroups.DEFAULT for g in groups):
        held.append(f"{sum(g.name != secgroups.DEFAULT for g in groups)} security groups")
    if held:
        raise Conflict(f"project '{project.name}' still holds {', '.join(held)}; delete them "
                       "first")
    for group in groups:
        db.delete(group)
    for row in db.scalars(select(RoleBinding).where(RoleBinding.project_id == project.id)):
        db.delete(row)
    for token in db.scalars(select(ApiToken).where(ApiToken.project_id == project.id)):
        db.delete(token)
    audit.record(db, actor, "project.delete", f"project/{project.id}", name=project.name)
    db.delete(project)
    db.flush()


def find_user(db: Session, ref: str) -> User:
    user = db.scalar(select(User).where(or_(User.id == ref, User.name == ref)))
    if user is None:
        raise NotFound(f"user '{ref}' does not exist")
    return user


def create_user(db: Session, actor: str, body: UserCreate) -> tuple[User, str | None]:
    """A new user holding no role; returns it and the password made for it (None when
    the body gave one)."""
    if db.scalar(select(User.id).where(User.name == body.name)) is not None:
        raise Conflict(f"a user named '{body.name}' already exists")
    made = None if body.password is not None else secrets.token_urlsafe(18)
    user = User(name=body.name, password_hash=passwords.hash_password(body.password or made or ""))
    db.add(user)
    db.flush()
    audit.record(db, actor, "user.create", f"user/{user.id}", name=user.name)
    return user, made


def delete_user(db: Session, caller: Caller, user: User) -> None:
    """Delete a user, its roles and its tokens; never oneself, nor the last region-admin."""
    if user.id == caller.user_id:
        raise Conflict("you cannot delete yourself")
    if any(b.role == REGION_ADMIN for b in user.bindings):
        _keep_a_region_admin(db, user.id)
    for token in db.scalars(select(ApiToken).where(ApiToken.user_id == user.id)):
        db.delete(token)
    audit.record(db, caller.name, "user.delete", f"user/{user.id}", name=user.name)
    db.delete(user)
    db.flush()


def _keep_a_region_admin(db: Session, leaving_user_id: str) -> None:
    others = db.scalar(select(func.count(RoleBinding.id)).where(
        RoleBinding.role == REGION_ADMIN, RoleBinding.user_id != leaving_user_id))
    if not others:
        raise Conflict("this is the region's last region-admin; make another one first")


def _binding_project(db: Session, role: str, ref: str | None) -> Project | None:
    if role in PROJECT_ROLES:
        if ref is None:
            raise InvalidInput(f"{role} is a role in one project: give the project")
        return tenancy.find_project(db, ref)
    if ref is not None:
        raise InvalidInput(f"{role} is a region role: give no project")
    return None


def grant(db: Session, caller: Caller, body: RoleBindingCreate) -> RoleBinding:
    """Give `body.role` to a user; Forbidden unless the caller may grant it there."""
    project = _binding_project(db, body.role, body.project)
    project_id = project.id if project is not None else None
    if not may_grant(caller, body.role, project_id):
        raise Forbidden(f"giving {body.role}{_in(project)} needs {Perm.IDENTITY} or "
                        "project-admin in that project")
    user = find_user(db, body.user)
    if any(b.role == body.role and b.project_id == project_id for b in user.bindings):
        raise Conflict(f"user '{user.name}' already holds {body.role}{_in(project)}")
    binding = RoleBinding(user_id=user.id, role=body.role, project_id=project_id,
                          created_by=caller.name)
    db.add(binding)
    db.flush()
    audit.record(db, caller.name, "role.grant", f"user/{user.id}", user=user.name,
                 role=body.role, project=project.name if project else None)
    return binding


def find_binding(db: Session, binding_id: str) -> RoleBinding:
    """A role binding the caller may see (its own, its projects', or all with identity
    rights); NotFound otherwise."""
    caller = tenancy.current()
    if caller is None:
        row = db.get(RoleBinding, binding_id)
    else:
        row = db.scalar(visible_bindings(db, caller, None, None)
                        .where(RoleBinding.id == binding_id))
    if row is None:
        raise NotFound(f"role binding {binding_id} does not exist")
    return row


def visible_bindings(db: Session, caller: Caller, user: str | None,
                     project: str | None) -> Select[RoleBinding]:
    """The query of the role bindings the caller may see (all with identity rights, else
    its own and those of the projects it administers), by user and project if given;
    NotFound for a user or project that does not exist."""
    stmt = select(RoleBinding)
    if not caller.has(Perm.IDENTITY):
        administered = caller.projects_at(Level.ADMIN)  # None: every project
        in_theirs = RoleBinding.project_id.is_not(None) if administered is None \
            else RoleBinding.project_id.in_(sorted(administered))
        stmt = stmt.where(or_(RoleBinding.user_id == caller.user_id, in_theirs))
    if user is not None:
        stmt = stmt.where(RoleBinding.user_id == find_user(db, user).id)
    if project is not None:
        stmt = stmt.where(RoleBinding.project_id == tenancy.find_project(db, project).id)
    return stmt


def revoke(db: Session, caller: Caller, binding: RoleBinding) -> None:
    """Take a role away; Forbidden unless the caller may grant it; the last
    region-admin's is refused."""
    if not may_grant(caller, binding.role, binding.project_id):
        raise Forbidden(f"taking {binding.role}{_in(binding.project)} away needs "
                        f"{Perm.IDENTITY} or project-admin in that project")
    if binding.role == REGION_ADMIN:
        _keep_a_region_admin(db, binding.user_id)
    audit.record(db, caller.name, "role.revoke", f"user/{binding.user_id}",
                 user=binding.user.name, role=binding.role,
                 project=binding.project.name if binding.project else None)
    db.delete(binding)
    db.flush()


def _in(project: Project | None) -> str:
    return f" in project '{project.name}'" if project is not None else ""


def create_api_token(db: Session, caller: Caller, body: ApiTokenCreate,
                     now: datetime) -> tuple[str, ApiToken]:
    """A named token of the caller's acting as `body.role` (in `body.project`), no wider
    than the caller's own; returns its secret (kept only as a hash) and its row."""
    project = _binding_project(db, body.role, body.project)
    project_id = project.id if project is not None else None
    if not token_scope_allowed(caller, body.role, project_id):
        raise Forbidden(f"a token acts with at most your own roles: you do not hold "
                        f"{body.role}{_in(project)}")
    if db.scalar(select(ApiToken.id).where(ApiToken.user_id == caller.user_id,
                                           ApiToken.name == body.name,
                                           ApiToken.revoked_at.is_(None))) is not None:
        raise Conflict(f"you have a token named '{body.name}' already; revoke it first")
    secret = "vbt_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=caller.user_id, token_sha256=sha256_hex(secret), name=body.name,
                   role=body.role, project_id=project_id,
                   expires_at=now + timedelta(seconds=body.ttl_seconds))
    db.add(row)
    db.flush()
    audit.record(db, caller.name, "token.create", f"token/{row.id}", name=body.name,
                 role=body.role, project=project.name if project else None,
                 expires_at=row.expires_at.isoformat())
    return secret, row


def tokens_of(user_id: str, now: datetime) -> Select[ApiToken]:
    """The query of the user's tokens that still act or were revoked (expired ones are
    not listed)."""
    return select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.expires_at > now)


def revoke_api_token(db: Session, caller: Caller, token_id: str, now: datetime) -> ApiToken:
    """Revoke one of the caller's tokens (anyone's with identity rights): it is refused
    from the next request on."""
    row = db.get(ApiToken, token_id)
    if row is None or (row.user_id != caller.user_id and not caller.has(Perm.IDENTITY)):
        raise NotFound(f"token {token_id} does not exist")
    if row.revoked_at is None:
        row.revoked_at = now
        audit.record(db, caller.name, "token.revoke", f"token/{row.id}", name=row.name,
                     user=row.user.name)
    return row

