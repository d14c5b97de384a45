"""The event log: every change to an object a client may watch, written with the change.

One chokepoint: the ORM's unit of work. After each flush of a write session, the tracked
objects it inserted, changed or deleted are noted (`_noted`); before the transaction
commits, one `events` row per object is written in it, telling the object's state at
the commit (`_write`). So an event exists if and only if its change committed, and a
transaction that changes an object ten times tells of it once. A change to nothing but
bookkeeping columns (QUIET: when a node was last heard, a token last used, a VM's console
log) tells nothing: agents report often, and there are thousands of them. Changes made by
bulk statements, which the ORM does not see, are told with `emit` where they are made.

Types are `<kind>.changed` and `<kind>.deleted`; who may see each is `visible_to`'s rule
(controller/authz.py's Caller, as tenancy.may_see reads it). The housekeeper prunes rows
older than an age and beyond a count (`prune`); see docs/events.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, inspect, or_, select
from sqlalchemy.orm import Session, sessionmaker

from controller.authz import Caller, Perm
from controller.db.models import (
    ApiToken,
    Event,
    FleetHost,
    Image,
    Instance,
    Network,
    Node,
    Operation,
    Port,
    Project,
    RoleBinding,
    RolloutHost,
    RolloutJob,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    User,
    Volume,
    as_utc,
)

_PENDING = "vauban.events_pending"  # session.info: watched objects flushed, until the commit
_TOLD = "vauban.events_told"  # session.info: what `emit` was asked to tell
_WRITTEN = "vauban.events_written"  # session.info: the commit wrote events

KINDS: Mapping[type, str] = {
    Operation: "operation", Instance: "vm", Node: "node", Image: "image", Volume: "volume",
    Network: "network", Subnet: "subnet", Port: "port", SecurityGroup: "security_group",
    Project: "project", User: "user", ApiToken: "token", RolloutJob: "rollout",
}
TYPES = frozenset(KINDS.values())  # what `?types=` may name
# columns whose change alone tells a watcher nothing (or changes at every report)
QUIET: Mapping[type, frozenset[str]] = {
    Node: frozenset({"last_seen_at", "generation", "applied_generation", "inventory",
                     "storage_status"}),
    Instance: frozenset({"updated_at", "console_log", "power_seq", "observed_power_seq"}),
    Volume: frozenset({"updated_at", "observed_used_bytes", "observed_size_bytes"}),
    Operation: frozenset({"updated_at"}),
    ApiToken: frozenset({"last_used_at", "expires_at"}),
    User: frozenset({"totp_last_step"}),
}
# relationships whose change is a change of the object itself
TOLD_RELATIONSHIPS: Mapping[type, frozenset[str]] = {Port: frozenset({"security_groups"})}
# region-level objects (no project) and what a caller needs to see their events;
# None: shared objects every user reads (public images, provider networks)
REGION_LEVEL: Mapping[str, Perm | None] = {
    "node": Perm.REGION_READ, "operation": Perm.REGION_READ, "rollout": Perm.FLEET_READ,
    "image": None,
    "network": None, "subnet": None, "port": None, "security_group": None,
}


@dataclass(frozen=True)
class Told:
    """What an event tells of one object."""

    kind: str
    id: str
    name: str
    project_id: str | None
    data: dict[str, Any]


def emit(db: Session, type_: str, told: Told) -> None:
    """Tell `type_` of `told` at the commit of `db`'s transaction (for changes the ORM does
    not see: bulk statements). A change of the same object that the ORM saw wins, unless
    this one is a deletion."""
    _told(db)[(told.kind, told.id)] = (type_, told)


def _told(db: Session) -> dict[tuple[str, str], tuple[str, Told]]:
    told: dict[tuple[str, str], tuple[str, Told]] = db.info.setdefault(_TOLD, {})
    return told


def _notes(db: Session) -> dict[int, tuple[bool, object]]:
    """The watched objects flushed in the transaction: id(obj) -> (deleted?, obj)."""
    notes: dict[int, tuple[bool, object]] = db.info.setdefault(_PENDING, {})
    return notes


def _tracked(db: Session, obj: object) -> tuple[str, object] | None:
    """(kind, the object told of) for an object whose change is an event, else None."""
    if isinstance(obj, SecurityGroupRule):
        return ("security_group", obj.group) if obj.group is not None else None
    if isinstance(obj, RoleBinding):  # a role given or taken changes the user
        return ("user", obj.user) if obj.user is not None else None
    if isinstance(obj, RolloutHost):  # a host's progress is its rollout's
        return ("rollout", obj.job) if obj.job is not None else None
    if isinstance(obj, FleetHost):  # its qualification is its node's, once joined
        node = db.scalar(select(Node).where(Node.name == obj.name))
        return ("node", node) if node is not None else None
    kind = KINDS.get(type(obj))
    return (kind, obj) if kind is not None else None


_WATCHED = (*KINDS, SecurityGroupRule, RoleBinding, RolloutHost, FleetHost)


def _watched(obj: object) -> bool:
    return isinstance(obj, _WATCHED)


def _changed(obj: object) -> bool:
    """Whether a flushed dirty object changed beyond its QUIET columns."""
    state = inspect(obj)
    cls = type(obj)
    keys = [a.key for a in state.mapper.column_attrs] + list(TOLD_RELATIONSHIPS.get(cls, ()))
    quiet = QUIET.get(cls, frozenset())
    return any(state.attrs[k].history.has_changes() for k in keys if k not in quiet)


def _noted(db: Session, _flush: Any) -> None:
    """After a flush: note the watched objects it inserted, changed or deleted. Nothing is
    loaded here (a load inside a flush would meet objects it has not registered yet):
    what each note tells is worked out before the commit (`_resolve`)."""
    notes = _notes(db)
    for obj in db.deleted:
        if _watched(obj):
            notes[id(obj)] = (True, obj)
    for obj in [*db.new, *(o for o in db.dirty if _watched(o) and _changed(o))]:
        if id(obj) not in notes:
            notes[id(obj)] = (False, obj)


def _resolve(db: Session, notes: dict[int, tuple[bool, object]],
             told: dict[tuple[str, str], tuple[str, Told]]) -> list[tuple[str, Told]]:
    """What the transaction tells: one (type, Told) per object, a deletion over a change."""
    chosen: dict[tuple[str, str], tuple[str, Told | object]] = dict(told)
    for deleted, obj in sorted(notes.values(), key=lambda n: not n[0]):  # deletions first
        found = _tracked(db, obj)
        if found is None:
            continue
        kind, target = found
        key = (kind, _id(target))
        if deleted and target is obj:
            chosen[key] = (f"{kind}.deleted", obj)
        elif not chosen.get(key, ("",))[0].endswith(".deleted"):
            chosen[key] = (f"{kind}.changed", target)
    out = []
    for type_, what in chosen.values():
        if isinstance(what, Told):
            out.append((type_, what))
            continue
        state = inspect(what)
        if state.transient or state.detached:  # made and rolled back to a savepoint since
            continue
        out.append((type_, describe(what)))
    return out


def _id(obj: Any) -> str:
    return str(obj.id)


def _write(db: Session) -> None:
    """Before the commit: one row per noted object, telling its state now."""
    if db.in_nested_transaction():
        return
    db.flush()  # the changes not flushed yet are noted too
    notes, told_now = db.info.pop(_PENDING, {}), db.info.pop(_TOLD, {})
    if not notes and not told_now:
        return
    now = datetime.now(UTC)
    rows = [{"at": now, "type": type_, "project_id": told.project_id,
             "object_kind": told.kind, "object_id": told.id, "object_name": told.name[:255],
             "data": told.data} for type_, told in _resolve(db, notes, told_now)]
    if rows:
        db.execute(insert(Event), rows)
        db.info[_WRITTEN] = True


def install(factory: sessionmaker[Session], on_committed: Callable[[], None],
            before_commit: Callable[[Session], None] | None = None) -> None:
    """Write events in the transactions of `factory`'s sessions; after a commit that
    wrote some, call `on_committed()`; `before_commit(session)` runs inside such a
    transaction once its rows are written (a NOTIFY to other processes)."""

    def _before(db: Session) -> None:
        _write(db)
        if before_commit is not None and db.info.get(_WRITTEN):
            before_commit(db)

    def _after(db: Session) -> None:
        if db.info.pop(_WRITTEN, False):
            on_committed()

    def _rolled_back(db: Session, previous: Any) -> None:
        if not previous.nested and previous.parent is None:
            db.info.pop(_PENDING, None)
            db.info.pop(_TOLD, None)
            db.info.pop(_WRITTEN, None)

    from sqlalchemy import event

    event.listen(factory, "after_flush", _noted)
    event.listen(factory, "before_commit", _before)
    event.listen(factory, "after_commit", _after)
    event.listen(factory, "after_soft_rollback", _rolled_back)


def describe(obj: Any) -> Told:
    """What an event tells of a tracked object: its kind, id, name, project, and data."""
    kind = KINDS[type(obj)]
    if isinstance(obj, Operation):
        return Told(kind, obj.id, obj.target_name, obj.project_id, operation_data(obj))
    if isinstance(obj, Instance):
        node = obj.node
        return Told(kind, obj.id, obj.name, obj.project_id, {
            "state": "deleting" if obj.deleting else (obj.observed_state or "creating"),
            "desired_power": obj.desired_power, "observed_state": obj.observed_state,
            "node": node.name if node is not None else None, "node_id": obj.node_id,
            "error": obj.observed_error})
    if isinstance(obj, Node):
        return Told(kind, obj.id, obj.name, None, {
            "state": obj.announced_state or "new", "labels": obj.labels or {},
            "cpus": obj.cpus, "memory_mib": obj.memory_mib,
            "failures": len(obj.failures or [])})
    if isinstance(obj, Image):
        return Told(kind, obj.id, obj.name, obj.project_id, {
            "disk_format": obj.disk_format, "size_bytes": obj.size_bytes, "sha256": obj.sha256})
    if isinstance(obj, Volume):
        return Told(kind, obj.id, obj.name, obj.project_id, {
            "size_gib": obj.size_gib, "instance_id": obj.instance_id,
            "deleting": obj.deleting, "error": obj.observed_error})
    if isinstance(obj, Network):
        return Told(kind, obj.id, obj.name, obj.project_id, {"kind": obj.kind})
    if isinstance(obj, Subnet):
        network = obj.network
        return Told(kind, obj.id, obj.cidr, network.project_id if network else None,
                    {"network_id": obj.network_id, "cidr": obj.cidr})
    if isinstance(obj, Port):
        return Told(kind, obj.id, obj.mac, obj.project_id, {
            "network_id": obj.network_id, "instance_id": obj.instance_id, "mac": obj.mac,
            "security_groups": sorted(g.name for g in obj.security_groups)})
    if isinstance(obj, SecurityGroup):
        return Told(kind, obj.id, obj.name, obj.project_id, {"rules": len(obj.rules)})
    if isinstance(obj, Project):
        return Told(kind, obj.id, obj.name, obj.id, {})
    if isinstance(obj, User):
        return Told(kind, obj.id, obj.name, None, {})
    if isinstance(obj, RolloutJob):
        hosts = obj.hosts
        return Told(kind, obj.id, obj.version, None, {
            "state": obj.state, "upgrade": obj.upgrade, "version": obj.version,
            "error": obj.error, "hosts": len(hosts),
            "hosts_done": sum(h.state not in ("pending", "running") for h in hosts)})
    assert isinstance(obj, ApiToken)
    return token_told(obj.id, obj.user_id, obj.kind, obj.name, obj.revoked_at is not None)


def token_told(token_id: str, user_id: str, kind: str, name: str | None,
               revoked: bool) -> Told:
    """A token (or browser session) told of: never its secret, nor its hashes."""
    return Told("token", token_id, name or kind, None,
                {"user_id": user_id, "kind": kind, "revoked": revoked})


def operation_data(op: Operation) -> dict[str, Any]:
    """An operation's essential fields, as GET /api/v1/operations/<id> names them."""
    return {"id": op.id, "kind": op.kind, "state": op.state, "progress": op.progress,
            "error": op.error, "message": op.message, "target_id": op.target_id,
            "target_name": op.target_name, "node_id": op.node_id, "requested_by": op.requested_by}


def visible_to(caller: Caller, project_id: str | None, kind: str, object_id: str,
               data: Mapping[str, Any]) -> bool:
    """Whether `caller` may see an event: a project's events by who reads the project;
    a user's and a token's by that user and identity administrators; a region-level
    object's by who holds the permission its routes need (REGION_LEVEL)."""
    if project_id is not None:
        return caller.level_in(project_id) is not None
    if kind == "user":
        return object_id == caller.user_id or caller.has(Perm.IDENTITY)
    if kind == "token":
        return data.get("user_id") == caller.user_id or caller.has(Perm.IDENTITY)
    perm = REGION_LEVEL.get(kind, Perm.REGION_READ)
    return perm is None or caller.has(perm)


def newest_id(db: Session) -> int:
    """The id of the newest event kept (0 if none)."""
    return int(db.scalar(select(func.max(Event.id))) or 0)


def oldest_id(db: Session) -> int | None:
    return db.scalar(select(func.min(Event.id)))


def after(db: Session, after_id: int, upto: int | None = None, limit: int = 1000,
          kinds: frozenset[str] | None = None,
          projects: frozenset[str] | None = None) -> list[Event]:
    """Events with ids above `after_id` (up to `upto`), oldest first, at most `limit`; only
    of `kinds` and, of projects' events, those of `projects`, when given (a narrowing done
    by the database: visible_to still decides each event)."""
    stmt = select(Event).where(Event.id > after_id)
    if upto is not None:
        stmt = stmt.where(Event.id <= upto)
    if kinds is not None:
        stmt = stmt.where(Event.object_kind.in_(sorted(kinds)))
    if projects is not None:
        stmt = stmt.where(or_(Event.project_id.is_(None), Event.project_id.in_(sorted(projects))))
    return list(db.scalars(stmt.order_by(Event.id).limit(limit)))


def prune(db: Session, now: datetime, keep_s: float, keep_count: int) -> int:
    """Delete events older than `keep_s` seconds and beyond the newest `keep_count`; the
    newest one is always kept (a client resuming after it then knows nothing was lost).
    Returns how many were deleted."""
    newest = newest_id(db)
    if newest == 0:
        return 0
    cutoff = as_utc(now) - timedelta(seconds=keep_s)
    by_age = db.execute(delete(Event).where(Event.at < cutoff, Event.id < newest))
    by_count = db.execute(delete(Event).where(Event.id <= newest - max(keep_count, 1)))
    return int(by_age.rowcount or 0) + int(by_count.rowcount or 0)  # type: ignore[attr-defined]
