"""/api/v1/instances: VMs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from controller import schemas
from controller.api.context import db, region
from controller.api.framework import ApiBlueprint, actor
from controller.api.paging import in_project, page
from controller.api.views import instance_view, operation_view
from controller.authz import InProject, Level, Perm, Region
from controller.db.models import Instance
from controller.queries import InstancesQuery
from controller.services import instances as service
from controller.services import migrations, tenancy
from controller.services import nodes as node_service

api = ApiBlueprint("instances", "/api/v1/instances", "instances")


def _down_after() -> float:
    return region().config.node_down_after_s


@api.route("GET", "", access=InProject(Level.READ), query=InstancesQuery,
           summary="List VMs, by name", responses={200: list[schemas.Instance]})
def list_instances(query: InstancesQuery) -> Any:
    """The VMs of the projects you see, a page at a time, by name."""
    session = db()
    stmt = in_project(session, tenancy.visible(select(Instance), Instance.project_id),
                      Instance.project_id, query.project)
    if query.name is not None:
        stmt = stmt.where(Instance.name == query.name)
    if query.node is not None:
        stmt = stmt.where(Instance.node_id == node_service.find(session, query.node).id)
    down = _down_after()
    if query.state is not None:
        stmt = stmt.where(service.state_expr(datetime.now(UTC), down) == query.state)
    return page(session, stmt, Instance.name, Instance.id, query.limit, query.cursor) \
        .map(lambda i: instance_view(session, i, down))


@api.route("GET", "/<ref>", access=InProject(Level.READ),
           summary="Show a VM (by name or id)",
           responses={200: schemas.Instance})
def show_instance(ref: str) -> Any:
    return instance_view(db(), service.find(db(), ref), _down_after())


@api.route("POST", "", access=InProject(Level.WRITE),
           summary="Create a VM", body=schemas.InstanceCreate,
           responses={202: schemas.Operation})
def create_instance(body: schemas.InstanceCreate) -> Any:
    session = db()
    _inst, op = service.create(session, actor(), body, region().config)
    session.commit()
    return operation_view(op), 202


@api.route("POST", "/<ref>/start", access=InProject(Level.WRITE),
           summary="Start a VM", responses={202: schemas.Operation})
def start_instance(ref: str) -> Any:
    return _power(ref, "running")


@api.route("POST", "/<ref>/stop", access=InProject(Level.WRITE),
           summary="Stop a VM (ACPI, forced after a grace period; with force at once)",
           body=schemas.InstanceStop, body_optional=True,
           responses={202: schemas.Operation})
def stop_instance(ref: str, body: schemas.InstanceStop) -> Any:
    return _power(ref, "stopped", force=body.force)


@api.route("POST", "/<ref>/reboot", access=InProject(Level.WRITE),
           summary="Restart a running VM (ACPI shutdown and start; with force a hard reset)",
           body=schemas.InstanceReboot, body_optional=True,
           responses={202: schemas.Operation})
def reboot_instance(ref: str, body: schemas.InstanceReboot) -> Any:
    session = db()
    op = service.reboot(session, actor(), service.find(session, ref), force=body.force)
    session.commit()
    return operation_view(op), 202


def _power(ref: str, power: str, *, force: bool = False) -> Any:
    session = db()
    op = service.set_power(session, actor(), service.find(session, ref), power, force=force)
    session.commit()
    return operation_view(op), 202


@api.route("POST", "/<ref>/flatten",
           access=InProject(Level.WRITE),
           summary="Copy the image into the VM's root disk, so it no longer depends on it",
           responses={202: schemas.Operation})
def flatten_instance(ref: str) -> Any:
    session = db()
    op = service.flatten(session, actor(), service.find(session, ref), region().storage.driver)
    session.commit()
    return operation_view(op), 202


@api.route("PUT", "/<ref>/ha", access=InProject(Level.WRITE),
           summary="Restart the VM elsewhere when its node is lost (HA), or not",
           body=schemas.InstanceHa, responses={200: schemas.Instance})
def set_instance_ha(ref: str, body: schemas.InstanceHa) -> Any:
    session = db()
    inst = service.set_ha(session, actor(), service.find(session, ref), body.enabled,
                          region().config)
    session.commit()
    return instance_view(session, inst, _down_after())


@api.route("POST", "/<ref>/migrate", access=Region(Perm.NODES_WRITE),
           summary="Move a VM to another node: live if it runs, cold if it is stopped (a "
                   "local root disk copied along)",
           body=schemas.InstanceMigrate, body_optional=True,
           responses={202: schemas.Operation})
def migrate_instance(ref: str, body: schemas.InstanceMigrate) -> Any:
    session = db()
    op = migrations.start(session, actor(), service.find(session, ref), body.to,
                          region().config, bandwidth_mib_s=body.bandwidth_mib_s,
                          max_downtime_ms=body.max_downtime_ms)
    session.commit()
    return operation_view(op), 202


@api.route("DELETE", "/<ref>/migrate", access=Region(Perm.NODES_WRITE),
           summary="Call off the VM's migration under way (it stays where it runs)",
           responses={200: schemas.Operation})
def cancel_migration(ref: str) -> Any:
    session = db()
    op = migrations.cancel(session, actor(), service.find(session, ref))
    session.commit()
    return operation_view(op)


@api.route("DELETE", "/<ref>", access=InProject(Level.WRITE),
           summary="Delete a VM and its disks",
           responses={202: schemas.Operation})
def delete_instance(ref: str) -> Any:
    session = db()
    op = service.delete(session, actor(), service.find(session, ref))
    session.commit()
    return operation_view(op), 202
