"""/api/v1/volumes: block volumes on the region's shared storage."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from controller import schemas
from controller.api.context import db, region
from controller.api.framework import ApiBlueprint, actor
from controller.api.paging import in_project, page
from controller.api.views import operation_view, volume_view
from controller.authz import InProject, Level
from controller.db.models import Instance, Operation, Volume
from controller.queries import VolumesQuery
from controller.services import tenancy
from controller.services import volumes as service

api = ApiBlueprint("volumes", "/api/v1/volumes", "volumes")


@api.route("GET", "", access=InProject(Level.READ), query=VolumesQuery,
           summary="List volumes, by name", responses={200: list[schemas.Volume]})
def list_volumes(query: VolumesQuery) -> Any:
    """The volumes of the projects you see, a page at a time, by name."""
    session = db()
    stmt = in_project(session, tenancy.visible(select(Volume), Volume.project_id),
                      Volume.project_id, query.project)
    if query.name is not None:
        stmt = stmt.where(Volume.name == query.name)
    if query.state is not None:
        stmt = stmt.where(service.state_expr() == query.state)
    return page(session, stmt, Volume.name, Volume.id, query.limit, query.cursor) \
        .map(lambda v: volume_view(session, v))


@api.route("GET", "/<ref>", access=InProject(Level.READ),
           summary="Show a volume (by name or id)",
           responses={200: schemas.Volume})
def show_volume(ref: str) -> Any:
    return volume_view(db(), service.find(db(), ref))


def _accepted(op: Operation) -> Any:
    db().commit()
    return operation_view(op), 202


@api.route("POST", "", access=InProject(Level.WRITE),
           summary="Create a volume (empty, or a clone of VOLUME@SNAPSHOT)",
           body=schemas.VolumeCreate, responses={202: schemas.Operation})
def create_volume(body: schemas.VolumeCreate) -> Any:
    _vol, op = service.create(db(), actor(), body, region().storage, region().config)
    return _accepted(op)


@api.route("POST", "/<ref>/resize", access=InProject(Level.WRITE),
           summary="Grow a volume", body=schemas.VolumeResize,
           responses={202: schemas.Operation})
def resize_volume(ref: str, body: schemas.VolumeResize) -> Any:
    return _accepted(service.resize(db(), actor(), service.find(db(), ref), body.size_gib))


@api.route("POST", "/<ref>/snapshots", access=InProject(Level.WRITE),
           summary="Take a snapshot of a volume",
           body=schemas.VolumeSnapshotCreate, responses={202: schemas.Operation})
def snapshot_volume(ref: str, body: schemas.VolumeSnapshotCreate) -> Any:
    return _accepted(service.snapshot(db(), actor(), service.find(db(), ref), body.name))


@api.route("DELETE", "/<ref>/snapshots/<snap>", access=InProject(Level.WRITE),
           summary="Delete a snapshot of a volume",
           responses={202: schemas.Operation})
def delete_volume_snapshot(ref: str, snap: str) -> Any:
    return _accepted(service.delete_snapshot(db(), actor(), service.find(db(), ref), snap))


@api.route("POST", "/<ref>/rollback", access=InProject(Level.WRITE),
           summary="Roll a detached volume back to a snapshot",
           body=schemas.VolumeRollbackRequest, responses={202: schemas.Operation})
def rollback_volume(ref: str, body: schemas.VolumeRollbackRequest) -> Any:
    return _accepted(service.rollback(db(), actor(), service.find(db(), ref), body.snapshot))


@api.route("POST", "/<ref>/attach", access=InProject(Level.WRITE),
           summary="Attach a volume to a running VM",
           body=schemas.VolumeAttach, responses={202: schemas.Operation})
def attach_volume(ref: str, body: schemas.VolumeAttach) -> Any:
    session = db()
    vol = service.find(session, ref)
    inst = tenancy.find_input(session, Instance, body.instance, "instance", vol.project_id)
    return _accepted(service.attach(session, actor(), vol, body, inst))


@api.route("POST", "/<ref>/detach", access=InProject(Level.WRITE),
           summary="Detach a volume from its VM",
           responses={202: schemas.Operation})
def detach_volume(ref: str) -> Any:
    return _accepted(service.detach(db(), actor(), service.find(db(), ref)))


@api.route("DELETE", "/<ref>", access=InProject(Level.WRITE),
           summary="Delete a detached volume and its snapshots",
           responses={202: schemas.Operation})
def delete_volume(ref: str) -> Any:
    return _accepted(service.delete(db(), actor(), service.find(db(), ref)))


