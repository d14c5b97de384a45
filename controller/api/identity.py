"""Identity: projects, users, roles, named API tokens, and who the caller is."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from controller import schemas
from controller.api.context import db
from controller.api.framework import ApiBlueprint, actor
from controller.api.paging import page
from controller.authz import ANY_USER, AnyOf, Caller, InProject, Level, Perm, Region
from controller.db.models import ApiToken, Project, RoleBinding, User
from controller.queries import ApiTokensQuery, ProjectsQuery, RoleBindingsQuery, UsersQuery
from controller.services import identity as service
from controller.services import quotas, tenancy

projects_api = ApiBlueprint("projects", "/api/v1/projects", "identity")
users_api = ApiBlueprint("users", "/api/v1/users", "identity")
roles_api = ApiBlueprint("role_bindings", "/api/v1/role-bindings", "identity")
tokens_api = ApiBlueprint("api_tokens", "/api/v1/api-tokens", "identity")
account_api = ApiBlueprint("identity_account", "/api/v1/account", "identity")


def _caller() -> Caller:
    caller = tenancy.current()
    assert caller is not None, "a user route runs with its caller"
    return caller


def binding_view(b: RoleBinding) -> schemas.RoleBinding:
    return schemas.RoleBinding(id=b.id, user=b.user.name, role=b.role,
                               project=b.project,  # type: ignore[arg-type]
                               created_by=b.created_by, created_at=b.created_at)


def user_view(u: User) -> schemas.User:
    return schemas.User(id=u.id, name=u.name, roles=[binding_view(b) for b in u.bindings],
                        created_at=u.created_at)


def token_view(t: ApiToken) -> schemas.ApiToken:
    return schemas.ApiToken.model_validate(t)


@projects_api.route("GET", "", access=ANY_USER, summary="List the projects you see",
                    query=ProjectsQuery, responses={200: list[schemas.Project]})
def list_projects(query: ProjectsQuery) -> Any:
    """The projects you see, a page at a time, by name."""
    caller = _caller()
    stmt = select(Project)
    mine = caller.projects_at(Level.READ)
    if mine is not None:
        stmt = stmt.where(Project.id.in_(sorted(mine)))
    if query.name is not None:
        stmt = stmt.where(Project.name == query.name)
    return page(db(), stmt, Project.name, Project.id, query.limit, query.cursor) \
        .map(schemas.Project.model_validate)


@projects_api.route("POST", "", access=Region(Perm.IDENTITY), summary="Create a project",
                    body=schemas.ProjectCreate, responses={201: schemas.Project})
def create_project(body: schemas.ProjectCreate) -> Any:
    project = service.create_project(db(), actor(), body)
    db().commit()
    return schemas.Project.model_validate(project), 201


def project_detail(project: Project) -> schemas.ProjectDetail:
    held: dict[str, Any] = dict(quotas.usage(db(), project.id))
    models = quotas.gpus_in_use(db(), project.id)
    held["gpus"] = {m: quotas.matching(m, models) for m in (project.quotas or {}).get("gpus", {})}
    return schemas.ProjectDetail(**schemas.Project.model_validate(project).model_dump(),
                                 usage=held)


@projects_api.route("GET", "/<ref>", access=InProject(Level.READ),
                    summary="Show a project (by name or id), its quotas and usage",
                    responses={200: schemas.ProjectDetail})
def show_project(ref: str) -> Any:
    return project_detail(tenancy.find_project(db(), ref))


@projects_api.route("PUT", "/<ref>/quotas", access=Region(Perm.IDENTITY),
                    summary="Set a project's quotas (replacing them; null: no limit)",
                    body=schemas.ProjectQuotas, responses={200: schemas.ProjectDetail})
def set_quotas(ref: str, body: schemas.ProjectQuotas) -> Any:
    project = service.set_quotas(db(), actor(), tenancy.find_project(db(), ref), body)
    db().commit()
    return project_detail(project)


@projects_api.route("DELETE", "/<ref>", access=Region(Perm.IDENTITY),
                    summary="Delete an empty project", responses={204: None})
def delete_project(ref: str) -> Any:
    service.delete_project(db(), actor(), tenancy.find_project(db(), ref))
    db().commit()
    return None, 204


@users_api.route("GET", "", access=Region(Perm.IDENTITY), summary="List users",
                 query=UsersQuery, responses={200: list[schemas.User]})
def list_users(query: UsersQuery) -> Any:
    """The region's users, a page at a time, by name."""
    stmt = select(User)
    if query.name is not None:
        stmt = stmt.where(User.name == query.name)
    return page(db(), stmt, User.name, User.id, query.limit, query.cursor).map(user_view)


@users_api.route("POST", "", access=Region(Perm.IDENTITY),
                 summary="Create a user (it holds no role until one is given)",
                 body=schemas.UserCreate, responses={201: schemas.UserCreated})
def create_user(body: schemas.UserCreate) -> Any:
    user, password = service.create_user(db(), actor(), body)
    db().commit()
    return schemas.UserCreated(**user_view(user).model_dump(), password=password), 201


@users_api.route("GET", "/<ref>", access=Region(Perm.IDENTITY),
                 summary="Show a user and its roles", responses={200: schemas.User})
def show_user(ref: str) -> Any:
    return user_view(service.find_user(db(), ref))


@users_api.route("DELETE", "/<ref>", access=Region(Perm.IDENTITY),
                 summary="Delete a user, its roles and its tokens", responses={204: None})
def delete_user(ref: str) -> Any:
    service.delete_user(db(), _caller(), service.find_user(db(), ref))
    db().commit()
    return None, 204


# a project's admins manage its members; identity rights manage everyone's roles
MANAGES_ROLES = AnyOf(Region(Perm.IDENTITY), InProject(Level.ADMIN))


@roles_api.route("GET", "", access=ANY_USER,
                 summary="List the role bindings you may see (yours, your projects' if you "
                         "administer them, all with identity rights)",
                 query=RoleBindingsQuery, responses={200: list[schemas.RoleBinding]})
def list_role_bindings(query: RoleBindingsQuery) -> Any:
    """The role bindings you may see, a page at a time, oldest first."""
    stmt = service.visible_bindings(db(), _caller(), query.user, query.project)
    return page(db(), stmt, RoleBinding.created_at, RoleBinding.id, query.limit,
                query.cursor, key_type=datetime).map(binding_view)


@roles_api.route("POST", "", access=MANAGES_ROLES, summary="Give a user a role",
                 body=schemas.RoleBindingCreate, responses={201: schemas.RoleBinding})
def grant_role(body: schemas.RoleBindingCreate) -> Any:
    binding = service.grant(db(), _caller(), body)
    db().commit()
    return binding_view(binding), 201


@roles_api.route("DELETE", "/<binding_id>", access=MANAGES_ROLES,
                 summary="Take a role away", responses={204: None})
def revoke_role(binding_id: str) -> Any:
    service.revoke(db(), _caller(), service.find_binding(db(), binding_id))
    db().commit()
    return None, 204


@tokens_api.route("GET", "", access=ANY_USER,
                  summary="List your API tokens (a login's too; expired ones are not listed)",
                  query=ApiTokensQuery, responses={200: list[schemas.ApiToken]})
def list_api_tokens(query: ApiTokensQuery) -> Any:
    """Your API tokens, a page at a time, oldest first."""
    stmt = service.tokens_of(_caller().user_id, datetime.now(UTC))
    return page(db(), stmt, ApiToken.created_at, ApiToken.id, query.limit, query.cursor,
                key_type=datetime).map(token_view)


@tokens_api.route("POST", "", access=ANY_USER,
                  summary="Create a named API token with one of your roles (shown once)",
                  body=schemas.ApiTokenCreate, responses={201: schemas.ApiTokenCreated})
def create_api_token(body: schemas.ApiTokenCreate) -> Any:
    secret, row = service.create_api_token(db(), _caller(), body, datetime.now(UTC))
    db().commit()
    return schemas.ApiTokenCreated(**token_view(row).model_dump(), token=secret), 201


@tokens_api.route("DELETE", "/<token_id>", access=ANY_USER,
                  summary="Revoke an API token (it is refused from the next request on)",
                  responses={200: schemas.ApiToken})
def revoke_api_token(token_id: str) -> Any:
    row = service.revoke_api_token(db(), _caller(), token_id, datetime.now(UTC))
    db().commit()
    return token_view(row)


@account_api.route("GET", "", access=ANY_USER, summary="Who you are, with which roles",
                   responses={200: schemas.Account})
def show_account() -> Any:
    caller = _caller()
    user = db().get_one(User, caller.user_id)
    acting = sorted(caller.region_roles) + sorted(
        f"{lv.name.lower()} in {tenancy.project_name(db(), p)}"
        for p, lv in caller.projects.items())
    return schemas.Account(id=user.id, name=user.name, token_id=caller.token_id,
                           roles=[binding_view(b) for b in user.bindings], acting_as=acting)
