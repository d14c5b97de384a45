"""Images held by the controller: streamed in with a verified checksum, streamed out to agents."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.authz import Level, Perm
from controller.db.models import Image, ImageTombstone, Instance, Node
from controller.errors import Conflict, InvalidInput, ServiceError
from controller.offload import off_loop
from controller.schemas import ImageImportQuery
from controller.services import audit, desired, tenancy
from images.diskcheck import DiskCheckUnavailable, DiskRefused, check_file

CHUNK = 1024 * 1024


class UploadIncomplete(ServiceError):
    """The client sent fewer bytes than its Content-Length declared (it hung up)."""

    title = "Incomplete upload"
    slug = "incomplete-upload"


class ImageCheckUnavailable(ServiceError):
    """The format check could not run; the upload is refused rather than stored unchecked."""

    status = 503
    title = "Image check unavailable"
    slug = "image-check-unavailable"


def find(db: Session, ref: str) -> Image:
    """An image by id or name among the caller's and the public ones, or NotFound."""
    return tenancy.find(db, Image, ref, "image", shared=True)


def project_of_new(db: Session, meta: ImageImportQuery) -> str | None:
    """The project an uploaded image goes to: None for a public one (who may make it:
    see IMAGES_PUBLIC), else the one asked for or the caller's."""
    if meta.public:
        tenancy.require(db, None, Level.WRITE, Perm.IMAGES_PUBLIC)
        return None
    return tenancy.target_project(db, meta.project).id


def path_of(image_dir: Path, image_id: str) -> Path:
    return image_dir / image_id


def check_name_free(db: Session, name: str, project_id: str | None) -> None:
    """Conflict if the project (or, for a public image, the public ones) has `name`."""
    same = Image.project_id.is_(None) if project_id is None else Image.project_id == project_id
    if db.scalar(select(Image.id).where(same, Image.name == name)) is not None:
        where = "among the public images" if project_id is None \
            else f"in project '{tenancy.project_name(db, project_id)}'"
        raise Conflict(f"an image named '{name}' already exists {where}")


def receive(stream: IO[bytes], meta: ImageImportQuery, image_dir: Path,
            declared: int) -> tuple[str, int, int]:
    """Stream an upload of `declared` bytes to a file of its own, verifying size, checksum
    and format (see images.diskcheck).

    Returns (image id, size, virtual size). After success the file is in `image_dir`
    under the id; on any failure (fewer bytes than declared: the client hung up; a
    checksum mismatch; a refused format) nothing of it is left.
    """
    if declared == 0:
        raise InvalidInput("the upload is empty")
    image_dir.mkdir(parents=True, exist_ok=True)
    image_id = str(uuid.uuid4())
    tmp = image_dir / f".{image_id}.part"
    try:
        digest, size = _copy_hashing(stream, tmp, declared)
        if size != declared:
            raise UploadIncomplete(f"the upload ended after {size} of the {declared} bytes "
                                   "its Content-Length declared; nothing was stored")
        if digest != meta.sha256:
            raise InvalidInput(
                f"checksum mismatch: expected sha256 {meta.sha256}, received {digest}; "
                "nothing was stored"
            )
        virtual = _check_format(tmp, meta.disk_format)
        os.replace(tmp, path_of(image_dir, image_id))
    finally:
        tmp.unlink(missing_ok=True)
    return image_id, size, virtual


def _copy_hashing(stream: IO[bytes], dest: Path, limit: int) -> tuple[str, int]:
    """Copy at most `limit` bytes; (sha256, bytes copied), fewer if the stream ended early."""
    h = hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        while size < limit and (chunk := stream.read(min(CHUNK, limit - size))):
            h.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        off_loop(os.fsync, out.fileno())  # seconds for a large image: not on the event loop
    return h.hexdigest(), size


def _check_format(path: Path, claimed: str) -> int:
    """The virtual size of an image the region accepts (images.diskcheck says which)."""
    try:
        return check_file(path, claimed).virtual_size  # its qemu-img runs as a gevent child
    except DiskRefused as e:
        raise InvalidInput(f"{e}; nothing was stored") from None
    except DiskCheckUnavailable as e:
        raise ImageCheckUnavailable(f"{e}; nothing was stored") from None


def record(db: Session, actor: str, image_id: str, meta: ImageImportQuery, size: int,
           virtual: int, project_id: str | None) -> Image:
    check_name_free(db, meta.name, project_id)  # taken while the upload streamed in
    image = Image(
        id=image_id, name=meta.name, project_id=project_id, disk_format=meta.disk_format,
        size_bytes=size,
        virtual_size_bytes=virtual, sha256=meta.sha256, os=meta.os,
        min_disk_gib=meta.min_disk_gib, firmware=meta.firmware, secure_boot=meta.secure_boot,
    )
    db.add(image)
    audit.record(db, actor, "image.import", f"image/{image_id}", name=meta.name, size=size)
    return image


def delete(db: Session, actor: str, image: Image, image_dir: Path) -> Path:
    """Refused while an instance uses the image. Returns the file to remove once committed."""
    users = list(db.scalars(select(Instance.name).where(Instance.image_id == image.id)))
    if users:
        raise Conflict(
            f"image '{image.name}' is used by {len(users)} instance(s): {', '.join(users[:5])}"
        )
    db.delete(image)
    db.add(ImageTombstone(id=image.id, name=image.name))
    for node in db.scalars(select(Node)):
        desired.bump(node)  # every node drops its stored copy
    audit.record(db, actor, "image.delete", f"image/{image.id}", name=image.name)
    return path_of(image_dir, image.id)


def read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk
