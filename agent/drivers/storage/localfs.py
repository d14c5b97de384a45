"""LocalfsDriver: images and qcow2 root disks as files under one directory of this node.

Layout under the root:
    images/<image_id>.<raw|qcow2>   immutable base images, verified by sha256
    disks/<vm_id>/root.qcow2        copy-on-write overlay whose backing file is the image

QEMU runs as the unprivileged `libvirt-qemu` user (see agent.hostprep), so every
directory on the way to these files must be searchable by it: the driver
creates its own directories 0711 (search, no listing); the root and its
parents are the caller's to keep searchable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from agent.drivers.hypervisor.base import DiskSpec
from agent.drivers.storage.base import (
    ImageInUse,
    PoolUsage,
    StorageDriver,
    StorageError,
    StorageHealth,
    StorageInfo,
)
from agent.drivers.storage.streams import CheckedStream, confirm_file
from agent.protocol import ImageRef
from agent.revert import Reverter
from images.diskcheck import DiskCheckUnavailable, DiskFacts, DiskRefused, check_file

GIB = 1024**3
FORMATS: tuple[Literal["raw", "qcow2"], ...] = ("raw", "qcow2")
ROOT_DISK = "root.qcow2"
DIR_MODE = 0o711  # libvirt-qemu must traverse to the files, but need not list them
IMAGE_MODE = 0o444  # base images are immutable once verified
QEMU_IMG_TIMEOUT = 300.0
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_id(kind: str, value: str) -> str:
    """Ids become file names: refuse anything that could leave its directory."""
    if not _SAFE_ID.match(value) or ".." in value:
        raise StorageError(f"invalid {kind} id {value!r}")
    return value


def qemu_img_info(path: Path, fmt: str | None = None) -> dict[str, Any]:
    """`qemu-img info --output=json` of a file; -U so that a file a running VM locks is readable."""
    argv = ["qemu-img", "info", "-U", "--output=json", *(["-f", fmt] if fmt else []), str(path)]
    out = _run(argv)
    try:
        info: dict[str, Any] = json.loads(out)
    except ValueError as e:
        raise StorageError(f"unreadable qemu-img info for {path}: {e}") from e
    return info


def check_stored(path: Path, fmt: str, image_id: str) -> DiskFacts:
    """The facts of a stored image file; StorageError if images.diskcheck refuses it."""
    try:
        return check_file(path, fmt)
    except DiskRefused as e:
        raise StorageError(f"stored image {image_id} refused: {e}") from None
    except DiskCheckUnavailable as e:
        raise StorageError(f"stored image {image_id}: {e}", retryable=True) from None


def _run(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StorageError(f"{argv[0]} {argv[1]} failed: {e}", retryable=True) from e
    if proc.returncode != 0:
        raise StorageError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalfsDriver(StorageDriver):
    """Images and disks on a local filesystem; disks are qcow2 overlays of the images."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.disks_dir = self.root / "disks"
        for d in (self.root, self.images_dir, self.disks_dir):
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                d.chmod(DIR_MODE)  # explicit: mkdir's mode is filtered by the umask

    def info(self) -> StorageInfo:
        return StorageInfo(name="localfs", remote=False, copy_on_write=True)

    def image_path(self, image_id: str) -> Path | None:
        """The stored file of an image, or None if it is not stored."""
        _check_id("image", image_id)
        for fmt in FORMATS:
            path = self.images_dir / f"{image_id}.{fmt}"
            if path.is_file():
                return path
        return None

    def _image(self, image_id: str) -> tuple[Path, Literal["raw", "qcow2"]]:
        path = self.image_path(image_id)
        if path is None:
            raise StorageError(f"image {image_id} is not stored on this node")
        return path, "qcow2" if path.suffix == ".qcow2" else "raw"

    def disk_path(self, vm_id: str) -> Path:
        """Where the VM's root disk is (whether or not it exists)."""
        return self.disks_dir / _check_id("VM", vm_id) / ROOT_DISK

    def has_image(self, image_id: str) -> bool:
        return self.image_path(image_id) is not None

    def import_image(self, image: ImageRef, chunks: Iterable[bytes]) -> None:
        """Stream the image to a temp file while hashing it, verify, fsync, rename into place.

        An image already stored is kept and the stream not read. The bytes are
        checked here whatever the controller checked (images.diskcheck: the
        declared format, a qcow2 naming no backing or data file and not
        encrypted, a raw of whole sectors). On failure (a hash or size mismatch,
        a refused image, an error of the stream) the temp file is removed and
        nothing else changed.
        """
        _check_id("image", image.id)
        if self.has_image(image.id):
            return
        final = self.images_dir / f"{image.id}.{image.disk_format}"
        with Reverter() as revert:
            fd, tmp_name = tempfile.mkstemp(dir=self.images_dir, prefix=f".{image.id}.",
                                            suffix=".part")
            tmp = Path(tmp_name)
            revert.add(lambda: tmp.unlink(missing_ok=True), f"remove {tmp}")
            stream = CheckedStream(image)
            with os.fdopen(fd, "wb") as f:
                for chunk in stream.read(chunks):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            confirm_file(tmp, image, stream.verify())
            tmp.chmod(IMAGE_MODE)
            tmp.replace(final)
            _fsync_dir(self.images_dir)
            revert.success()


    def delete_image(self, image_id: str) -> None:
        """Remove an image; a no-op if it is not stored; refused while a disk is made from it."""
        path = self.image_path(image_id)
        if path is None:
            return
        users = self._disks_backed_by(path)
        if users:
            raise ImageInUse(f"image {image_id} is in use by the disks of VM(s) "
                               f"{', '.join(sorted(users))}")
        path.unlink()
        _fsync_dir(self.images_dir)

    def _disks_backed_by(self, image: Path) -> list[str]:
        """Ids of VMs whose root disk's backing file is `image`."""
        users = []
        for disk in self.disks_dir.glob(f"*/{ROOT_DISK}"):
            backing = qemu_img_info(disk, "qcow2").get("full-backing-filename")
            if backing is not None and Path(backing).resolve() == image.resolve():
                users.append(disk.parent.name)
        return users

    def image_virtual_size(self, image_id: str) -> int:
        path, fmt = self._image(image_id)
        return int(qemu_img_info(path, fmt)["virtual-size"])

    def create_root_disk(self, vm_id: str, image_id: str, size_gib: int | None) -> DiskSpec:
        """A qcow2 overlay of the image at disks/<vm_id>/root.qcow2, as "vda".

        The size is `size_gib` GiB or, when None, the image's virtual size.
        A smaller size than the image, an existing disk, a missing image or a
        stored image that images.diskcheck refuses raises StorageError; on any
        failure nothing was created.
        """
        disk = self.disk_path(vm_id)
        base, fmt = self._image(image_id)
        # checked again before QEMU opens it: a file stored by an older agent, or changed
        # since, must not point the VM at another file of this node
        virtual = check_stored(base, fmt, image_id).virtual_size
        size = virtual if size_gib is None else size_gib * GIB
        if size < virtual:
            raise StorageError(f"root disk of {size_gib} GiB is smaller than image {image_id} "
                               f"({virtual} bytes)")
        if disk.exists():
            raise StorageError(f"VM {vm_id} already has a root disk")
        with Reverter() as revert:
            if not disk.parent.is_dir():
                disk.parent.mkdir()
                revert.add(lambda: shutil.rmtree(disk.parent, ignore_errors=True),
                           f"remove {disk.parent}")
                disk.parent.chmod(DIR_MODE)
            revert.add(lambda: disk.unlink(missing_ok=True), f"remove {disk}")
            _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base),
                  str(disk), str(size)])
            revert.success()
        return DiskSpec(source=disk, format="qcow2", target="vda")

    def delete_vm_disks(self, vm_id: str) -> None:
        """Remove disks/<vm_id> and everything in it; a no-op if it does not exist."""
        vm_dir = self.disk_path(vm_id).parent
        if vm_dir.exists():
            shutil.rmtree(vm_dir)
            _fsync_dir(self.disks_dir)

    def existing_root_disk(self, vm_id: str) -> DiskSpec:
        """disks/<vm_id>/root.qcow2 as it is, when this node has it (a VM that ran here
        before its definition was lost); never another node's."""
        disk = self.disk_path(vm_id)
        if not disk.is_file():
            raise StorageError(f"the root disk of VM {vm_id} is not on this node ({disk}): "
                               "local disks do not move between nodes")
        return DiskSpec(source=disk, format="qcow2", target="vda")

    def vm_disk_exists(self, vm_id: str) -> bool:
        return self.disk_path(vm_id).is_file()

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def health(self) -> StorageHealth:
        """OK while the filesystem is writable; its space as the one pool."""
        st = os.statvfs(self.root)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        writable = os.access(self.root, os.W_OK)
        return StorageHealth(
            status="OK" if writable else "ERROR",
            detail="" if writable else f"{self.root} is not writable",
            pools=(PoolUsage("localfs", used, st.f_bavail * st.f_frsize),),
        )
