"""Tenancy: what the caller of a request may see and touch, by project.

The API sets the caller around each user request (`acting_as`); every lookup and listing
of a project's resources goes through `visible`/`find`, so an object of a project the
caller cannot read is answered exactly as one that does not exist (404, the same words),
never 403: nothing confirms it exists. A caller that may see an object but not change it
gets 403 (`require`). Outside a request (the controller's own work, agents' calls) no
caller is set and nothing is filtered.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from controller.authz import Access, AnyOf, Caller, InProject, Level, Perm
from controller.db.models import Project
from controller.errors import Conflict, Forbidden, InvalidInput, NotFound
from controller.services import audit

DEFAULT_PROJECT = "default"

_caller: ContextVar[Caller | None] = ContextVar("vauban_caller", default=None)
# the route's declaration: what the object a route looks up must allow (see `find`)
_access: ContextVar[Access | None] = ContextVar("vauban_route_access", default=None)


T = TypeVar("T")


@contextmanager
def acting_as(caller: Caller, access: Access | None = None) -> Iterator[None]:
    """Lookups inside the block see what `caller` may see, and the objects a route acts
    on must allow what its declaration `access` says (per thread and greenlet)."""
    token, route = _caller.set(caller), _access.set(access)
    try:
        yield
    finally:
        _access.reset(route)
        _caller.reset(token)


def route_level() -> tuple[Level, Perm | None]:
    """The level the current route needs in its object's project, and the permission that
    lets a caller change a shared object there."""
    access = _access.get()
    if isinstance(access, InProject):
        return access.level, None
    if isinstance(access, AnyOf):
        return access.project.level, access.region.perm
    return Level.READ, None


def current() -> Caller | None:
    return _caller.get()


def may_see(project_id: str | None) -> bool:
    """Whether the caller sees objects of `project_id` (shared ones: everyone)."""
    caller = current()
    return caller is None or project_id is None or caller.level_in(project_id) is not None


def visible(stmt: Select[Any], column: InstrumentedAttribute[Any], *,
            shared: bool = False) -> Select[Any]:
    """`stmt` limited to rows whose project (`column`) the caller reads; with `shared`,
    also the rows of no project (public images, provider networks)."""
    caller = current()
    projects = None if caller is None else caller.projects_at(Level.READ)
    if projects is None:
        return stmt
    mine = column.in_(sorted(projects))
    return stmt.where(or_(mine, column.is_(None)) if shared else mine)


def find(db: Session, model: type[T], ref: str, what: str, *, shared: bool = False) -> T:
    """The `model` row whose id or name is `ref` among those the caller sees: NotFound
    ("<what> '<ref>' does not exist") otherwise; Conflict when that name is used in
    several projects the caller sees (the id then says which). The row's project must
    allow what the route declares (`require`): a viewer finds, but cannot change."""
    m: Any = model
    row = db.scalar(visible(select(m).where(m.id == ref), m.project_id, shared=shared)) \
        or _by_name(db, m, ref, what, shared)
    level, shared_perm = route_level()
    require(db, row.project_id, level, shared_perm)
    return row


def _by_name(db: Session, m: Any, ref: str, what: str, shared: bool) -> Any:
    rows = db.scalars(visible(select(m).where(m.name == ref), m.project_id,
                              shared=shared).limit(2)).all()
    if not rows:
        raise NotFound(f"{what} '{ref}' does not exist")
    if len(rows) > 1:
        raise Conflict(f"several projects you see have a {what} named '{ref}': give its id")
    return rows[0]


def find_input(db: Session, model: type[T], ref: str, what: str, project_id: str, *,
               shared: bool = False, hint: str = "") -> T:
    """A `model` row named in a request body for an object of `project_id`: it must be of
    that project (or shared, with `shared`); anything else is invalid input (422) that
    reads the same whether or not it exists elsewhere."""
    m: Any = model
    column = m.project_id
    mine = or_(column == project_id, column.is_(None)) if shared else column == project_id
    row = db.scalar(select(m).where(m.id == ref, mine))
    if row is None:  # the project's own before a shared one of the same name
        row = db.scalar(select(m).where(m.name == ref, mine).order_by(column.is_(None)).limit(1))
    if row is None:
        raise InvalidInput(f"{what} '{ref}' does not exist in project "
                           f"'{project_name(db, project_id)}'{hint}")
    return row


def require(db: Session, project_id: str | None, level: Level,
            shared_perm: Perm | None = None) -> None:
    """Forbidden unless the caller reaches `level` in `project_id`, or, for a shared
    object (no project), holds `shared_perm` (anyone reads shared objects). The audit
    entries of the request then name the project (and flag an administrator acting
    there by a region role only)."""
    caller = current()
    if caller is None:
        return
    if project_id is None:
        if level == Level.READ or (shared_perm is not None and caller.has(shared_perm)):
            return
        raise Forbidden(f"this is shared by every project: changing it needs {shared_perm} "
                        f"(you have {caller.roles_text()})")
    held = caller.level_in(project_id)
    if held is None:  # a lookup through `find` never gets here
        raise NotFound("no such object")
    if held < level:
        raise Forbidden(f"your role in project '{project_name(db, project_id)}' lets you "
                        f"{_verb(held)} only; this needs {_verb(level)}")
    audit.in_project(project_name(db, project_id), caller.is_admin_outside(project_id))


def _verb(level: Level) -> str:
    return {Level.READ: "read", Level.WRITE: "make and change resources",
            Level.ADMIN: "manage the project"}[level]


def project_name(db: Session, project_id: str) -> str:
    project = db.get(Project, project_id)
    return project.name if project is not None else project_id


def find_project(db: Session, ref: str) -> Project:
    """A project by id or name among those the caller sees; NotFound otherwise."""
    caller = current()
    projects = None if caller is None else caller.projects_at(Level.READ)
    stmt = select(Project).where(or_(Project.id == ref, Project.name == ref))
    if projects is not None:
        stmt = stmt.where(Project.id.in_(sorted(projects)))
    project = db.scalar(stmt.limit(1))
    if project is None:
        raise NotFound(f"project '{ref}' does not exist")
    return project


def target_project(db: Session, ref: str | None, level: Level = Level.WRITE) -> Project:
    """The project a new object goes to: `ref` if given; else the caller's only project
    where it reaches `level`; else, for a caller reaching every project (region-admin),
    `default`. InvalidInput when it is not clear which; Forbidden/NotFound as `require`."""
    caller = current()
    if ref is not None:
        project = find_project(db, ref)
    else:
        mine = [] if caller is None else \
            sorted(p for p, lv in caller.projects.items() if lv >= level)
        if len(mine) == 1:
            project = db.get_one(Project, mine[0])
        elif caller is None or (not mine and caller.projects_at(level) is None):
            project = find_project(db, DEFAULT_PROJECT)
        else:
            names = ", ".join(sorted(project_name(db, p) for p in mine)) or "none"
            raise InvalidInput(f"say in which project (--project): yours are {names}")
    require(db, project.id, level)
    return project
