"""/api/v1/images: guest images, uploaded as a stream with a verified checksum."""

from __future__ import annotations

from typing import Any

from flask import request
from sqlalchemy import select

from controller import schemas
from controller.api.context import db, region
from controller.api.framework import ApiBlueprint, actor
from controller.api.paging import in_project, page
from controller.api.problems import problem, too_large_problem
from controller.authz import AnyOf, InProject, Level, Perm, Region
from controller.db.models import Image
from controller.queries import ImagesQuery
from controller.services import audit, tenancy
from controller.services import images as service

api = ApiBlueprint("images", "/api/v1/images", "images")


@api.route("GET", "", access=InProject(Level.READ), query=ImagesQuery,
           summary="List images, by name", responses={200: list[schemas.Image]})
def list_images(query: ImagesQuery) -> Any:
    """The shared images and those of the projects you see, a page at a time, by name."""
    session = db()
    stmt = in_project(session, tenancy.visible(select(Image), Image.project_id, shared=True),
                      Image.project_id, query.project)
    if query.name is not None:
        stmt = stmt.where(Image.name == query.name)
    if query.visibility is not None:
        stmt = stmt.where(Image.project_id.is_(None) if query.visibility == "public"
                          else Image.project_id.is_not(None))
    return page(session, stmt, Image.name, Image.id, query.limit, query.cursor) \
        .map(schemas.Image.model_validate)


@api.route("GET", "/<ref>", access=InProject(Level.READ),
           summary="Show an image (by name or id)",
           responses={200: schemas.Image})
def show_image(ref: str) -> Any:
    return schemas.Image.model_validate(service.find(db(), ref))


@api.route("POST", "", access=AnyOf(Region(Perm.IMAGES_PUBLIC), InProject(Level.WRITE)),
           summary="Upload an image: metadata in the query, the file as the body",
           query=schemas.ImageImportQuery, binary_body=True, responses={201: schemas.Image})
def import_image(query: schemas.ImageImportQuery) -> Any:
    if request.mimetype != "application/octet-stream":
        return problem(415, "Unsupported media type",
                       "the body must be the image file as application/octet-stream",
                       "unsupported-media-type")
    config = region().config
    request.max_content_length = config.max_image_bytes  # this route's own, above JSON's
    declared = request.content_length
    if declared is None:
        return problem(411, "Length required",
                       "an image upload must declare its size in Content-Length "
                       "(chunked uploads are refused)", "length-required")
    if declared > config.max_image_bytes:
        return too_large_problem(declared, config.max_image_bytes)
    session = db()
    project_id = service.project_of_new(session, query)
    service.check_name_free(session, query.name, project_id)
    session.rollback()  # hold no database lock while the upload streams in
    image_dir = config.image_dir
    who = actor()
    try:
        image_id, size, virtual = service.receive(request.stream, query, image_dir, declared)
    except Exception as e:
        audit.record_now(region().sessions, who, "image.import", f"image/{query.name}",
                         "refused", error=str(e))
        raise
    try:
        image = service.record(session, who, image_id, query, size, virtual, project_id)
        session.commit()
    except BaseException:
        session.rollback()
        service.path_of(image_dir, image_id).unlink(missing_ok=True)
        raise
    return schemas.Image.model_validate(image), 201


@api.route("DELETE", "/<ref>", access=AnyOf(Region(Perm.IMAGES_PUBLIC), InProject(Level.WRITE)),
           summary="Delete an image no instance uses", responses={204: None})
def delete_image(ref: str) -> Any:
    session = db()
    path = service.delete(session, actor(), service.find(session, ref), region().config.image_dir)
    session.commit()
    path.unlink(missing_ok=True)
    return "", 204
