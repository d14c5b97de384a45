"""Images in an RBD pool: streamed import (raw directly, qcow2 through qemu-img), lookup
and removal.

An image is `img-<id>` with the protected snapshot `base` that root disks are cloned
from. It is built under a temporary name and renamed only once complete (written,
verified, snapshotted, protected), so the final name never shows a partial image.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator, MutableSet
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.drivers.storage.base import ImageInUse, StorageError
from agent.drivers.storage.rbd.conn import CephConnection, bindings
from agent.drivers.storage.rbd.names import (
    BASE_SNAP,
    image_name,
    is_temp_image_name,
    temp_image_name,
)
from agent.drivers.storage.streams import CheckedStream, confirm_file
from agent.protocol import ImageRef
from agent.revert import Reverter

log = logging.getLogger(__name__)

BLOCK = 4 * 1024**2  # RBD's default object size: writes are gathered up to this
SEGMENT = 64 * 1024  # zero runs are skipped at this granularity
DEPTH = 8  # writes in flight
CONVERT_TIMEOUT = 3600.0
STALE_IMPORT_AFTER_S = 600.0  # far beyond the instants an import holds its image closed


_ZERO_SEGMENT = bytes(SEGMENT)


def nonzero_runs(data: bytes, segment: int = SEGMENT) -> list[tuple[int, int]]:
    """[start, end) ranges of `data` covering every segment that is not all zeros,
    adjacent segments merged."""
    zero = _ZERO_SEGMENT if segment == SEGMENT else bytes(segment)
    runs: list[tuple[int, int]] = []
    for pos in range(0, len(data), segment):
        end = min(pos + segment, len(data))
        if data[pos:end] == zero[:end - pos]:
            continue
        if runs and runs[-1][1] == pos:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((pos, end))
    return runs


class SparseWriter:
    """Writes a stream into an RBD image from offset 0, skipping all-zero segments.

    A fresh RBD image reads as zeros, so skipped segments take no space. Up to `depth`
    asynchronous writes are in flight; `finish()` waits for them and raises StorageError
    if one failed. Call `drain()` on every path (it never raises).
    """

    def __init__(self, image: Any, depth: int = DEPTH) -> None:
        self._image = image
        self._buf = bytearray()
        self._offset = 0  # of the buffer's first byte in the image
        self._slots = threading.BoundedSemaphore(depth)
        self._depth = depth
        self._errors: list[int] = []

    def write(self, chunk: bytes) -> None:
        self._buf += chunk
        while len(self._buf) >= BLOCK:
            self._flush(BLOCK)

    def finish(self) -> None:
        """Write what is buffered, wait for every write, flush the image."""
        self._flush(len(self._buf))
        self.drain()
        if self._errors:
            raise StorageError(f"writing to RBD image failed: errno {self._errors[0]}",
                               retryable=True)
        self._image.flush()

    def drain(self) -> None:
        """Wait until no write is in flight."""
        for _ in range(self._depth):
            self._slots.acquire()
        for _ in range(self._depth):
            self._slots.release()

    def _flush(self, n: int) -> None:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        for start, end in nonzero_runs(data):
            self._submit(data[start:end], self._offset + start)
        self._offset += n

    def _submit(self, data: bytes, offset: int) -> None:
        self._slots.acquire()

        def done(completion: Any) -> None:
            ret = completion.get_return_value()
            if ret < 0:
                self._errors.append(-ret)
            self._slots.release()

        try:
            self._image.aio_write(data, offset, done)
        except BaseException:
            self._slots.release()
            raise


def has_image(conn: CephConnection, pool: str, image_id: str) -> bool:
    """Whether img-<id> exists with its protected `base` snapshot."""
    _, rbd = bindings()
    with conn.ioctx(pool, f"look up image {image_id}") as ioctx:
        try:
            with rbd.Image(ioctx, image_name(image_id), read_only=True) as img:
                return any(s["name"] == BASE_SNAP for s in img.list_snaps()) and bool(
                    img.is_protected_snap(BASE_SNAP))
        except rbd.ImageNotFound:
            return False


def image_size(conn: CephConnection, pool: str, image_id: str) -> int:
    """Virtual size in bytes of a stored image; StorageError if it is not stored."""
    _, rbd = bindings()
    with conn.ioctx(pool, f"size of image {image_id}") as ioctx:
        try:
            with rbd.Image(ioctx, image_name(image_id), read_only=True) as img:
                return int(img.size())
        except rbd.ImageNotFound:
            raise StorageError(f"image {image_id} is not stored in pool {pool}") from None


def children_of(img: Any) -> list[str]:
    """"pool/image" of every clone of the snapshot `img` is opened at."""
    return sorted(f"{c['pool']}/{c['image']}" for c in img.list_children2())


def remove_with_snapshots(ioctx: Any, name: str) -> None:
    """Remove an image and its snapshots (unprotecting them); a no-op if it is absent.

    A snapshot with clones makes it fail (librbd refuses to unprotect it) before the
    image itself is touched.
    """
    _, rbd = bindings()
    try:
        with rbd.Image(ioctx, name) as img:
            for snap in list(img.list_snaps()):
                if img.is_protected_snap(snap["name"]):
                    img.unprotect_snap(snap["name"])
                img.remove_snap(snap["name"])
    except rbd.ImageNotFound:
        return
    try:
        rbd.RBD().remove(ioctx, name)
    except rbd.ImageNotFound:
        pass


def delete_image(conn: CephConnection, pool: str, image_id: str) -> None:
    """Remove img-<id>; a no-op if absent; refused with ImageInUse (nothing changed)
    while it has clones."""
    _, rbd = bindings()
    name = image_name(image_id)
    with conn.ioctx(pool, f"delete image {image_id}") as ioctx:
        try:
            img = rbd.Image(ioctx, name)
        except rbd.ImageNotFound:
            return
        with img, Reverter() as revert:
            if any(s["name"] == BASE_SNAP for s in img.list_snaps()):
                img.set_snap(BASE_SNAP)
                clones = children_of(img)
                img.set_snap(None)
                if clones:
                    raise ImageInUse(f"image {image_id} is in use by disks cloned from it: "
                                       f"{', '.join(clones)}")
                if img.is_protected_snap(BASE_SNAP):
                    img.unprotect_snap(BASE_SNAP)
                    revert.add(lambda: img.protect_snap(BASE_SNAP), "re-protect base")
                img.remove_snap(BASE_SNAP)
            revert.success()
        rbd.RBD().remove(ioctx, name)


def import_image(conn: CephConnection, pool: str, image: ImageRef, chunks: Iterable[bytes],
                 scratch_dir: Path, monitors: tuple[tuple[str, int], ...],
                 in_flight: MutableSet[str]) -> None:
    """Store an image as img-<id>@base from a stream; see StorageDriver.import_image.

    raw is written straight into a temporary RBD image (zero runs skipped); qcow2 goes
    to a temporary file in `scratch_dir` and `qemu-img convert` writes it into RBD. Both
    are hashed and inspected while streamed, and refused unless they are an image the
    region accepts (images.diskcheck; a qcow2 is also read by qemu-img, told its format,
    before `qemu-img convert` opens it). On a checksum or size mismatch, a refused image
    or any error, the temporary image and file are removed and StorageError raised.
    If another node stored the same image meanwhile, ours is discarded and theirs kept.
    The temporary image's name is in `in_flight` while this call runs, so that
    `sweep_stale_imports` leaves it alone.
    """
    tmp = temp_image_name(image.id)
    in_flight.add(tmp)
    try:
        _import(conn, pool, image, chunks, scratch_dir, monitors, tmp)
    finally:
        in_flight.discard(tmp)


def _import(conn: CephConnection, pool: str, image: ImageRef, chunks: Iterable[bytes],
            scratch_dir: Path, monitors: tuple[tuple[str, int], ...], tmp: str) -> None:
    _, rbd = bindings()
    final = image_name(image.id)
    with conn.ioctx(pool, f"import image {image.id}") as ioctx, Reverter() as revert:
        if image.disk_format == "raw":
            rbd.RBD().create(ioctx, tmp, image.size_bytes)
            revert.add(lambda: remove_with_snapshots(ioctx, tmp), f"remove {tmp}")
            with rbd.Image(ioctx, tmp) as img:
                _write_verified(img, image, chunks)
        else:
            with _spooled(image, chunks, scratch_dir) as (path, virtual):
                rbd.RBD().create(ioctx, tmp, virtual)
                revert.add(lambda: remove_with_snapshots(ioctx, tmp), f"remove {tmp}")
                _convert(conn, path, pool, tmp, monitors)
        with rbd.Image(ioctx, tmp) as img:
            img.create_snap(BASE_SNAP)
            img.protect_snap(BASE_SNAP)
        try:
            rbd.RBD().rename(ioctx, tmp, final)
        except rbd.ImageExists:
            log.info("image %s was stored meanwhile by another node; discarding ours", image.id)
            revert.fail()  # removes ours
            return
        revert.success()


def sweep_stale_imports(conn: CephConnection, pool: str, in_flight: MutableSet[str],
                        older_than_s: float = STALE_IMPORT_AFTER_S) -> list[str]:
    """Remove the temporary images (img-<id>.tmp-<n>) that interrupted imports left in
    `pool`; returns the names removed.

    Every node of a region imports into the same pool, so a temporary image is left
    alone while it may still be someone's import: while this process imports into it
    (its name is in `in_flight`), while any client has it open (a watcher: a node
    writing it, or qemu-img converting into it), and until it is `older_than_s` old by
    the cluster's creation time (an import holds it closed only for instants between
    steps). Final images and everything else in the pool are never touched. An image
    opened by someone between the check and the removal makes librbd refuse the
    removal; it is then kept.
    """
    _, rbd = bindings()
    removed = []
    with conn.ioctx(pool, "sweep interrupted image imports") as ioctx:
        for name in rbd.RBD().list(ioctx):
            if not is_temp_image_name(name) or name in in_flight:
                continue
            if not _abandoned(ioctx, name, older_than_s):
                continue
            try:
                remove_with_snapshots(ioctx, name)
            except rbd.ImageBusy:
                continue  # opened meanwhile: someone's import after all
            log.warning("removed RBD image %s/%s, left by an interrupted import", pool, name)
            removed.append(name)
    return removed


def _abandoned(ioctx: Any, name: str, older_than_s: float) -> bool:
    """Whether no client has the image open and it is at least `older_than_s` old."""
    _, rbd = bindings()
    try:
        with rbd.Image(ioctx, name, read_only=True) as img:
            if list(img.watchers_list()):
                return False
            created = img.create_timestamp()
    except rbd.ImageNotFound:
        return False
    created = created if created.tzinfo else created.replace(tzinfo=UTC)
    return (datetime.now(UTC) - created).total_seconds() >= older_than_s


def _write_verified(img: Any, image: ImageRef, chunks: Iterable[bytes]) -> None:
    writer = SparseWriter(img)
    stream = CheckedStream(image)
    try:
        for chunk in stream.read(chunks):
            writer.write(chunk)
        writer.finish()
    finally:
        writer.drain()
    stream.verify()


@contextmanager
def _spooled(image: ImageRef, chunks: Iterable[bytes],
             scratch_dir: Path) -> Iterator[tuple[Path, int]]:
    """The stream in a verified temporary file (0600) of `scratch_dir`, removed afterwards,
    with the image's virtual size."""
    scratch_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=scratch_dir, prefix=f".{image.id}.", suffix=".qcow2")
    path = Path(name)
    try:
        stream = CheckedStream(image)
        with os.fdopen(fd, "wb") as f:
            for chunk in stream.read(chunks):
                f.write(chunk)
        facts = stream.verify()
        confirm_file(path, image, facts)
        yield path, facts.virtual_size
    finally:
        path.unlink(missing_ok=True)


def qemu_rbd_opts(pool: str, name: str, user: str, monitors: tuple[tuple[str, int], ...],
                  secret_id: str) -> str:
    """A QEMU image-opts string for a raw RBD image whose key is the secret `secret_id`."""
    opts = ["driver=raw", "file.driver=rbd", f"file.pool={pool}", f"file.image={name}",
            f"file.user={user}", f"file.key-secret={secret_id}",
            "file.auth-client-required.0=cephx"]
    for i, (host, port) in enumerate(monitors):
        opts += [f"file.server.{i}.host={host}", f"file.server.{i}.port={port}"]
    for o in opts:
        if "," in o.split("=", 1)[1]:
            raise StorageError(f"unusable character in QEMU option {o!r}")
    return ",".join(opts)


def _convert(conn: CephConnection, src: Path, pool: str, name: str,
             monitors: tuple[tuple[str, int], ...]) -> None:
    """`qemu-img convert` a qcow2 file into an existing, empty RBD image of its size.

    The key reaches qemu-img through a pipe (`--object secret,file=/dev/fd/N`): it is
    neither in its argv nor in any file.
    """
    with conn.key_pipe() as fd:
        argv = ["qemu-img", "convert", "-n", "--target-is-zero", "-f", "qcow2",
                "--object", f"secret,id=sec0,file=/dev/fd/{fd},format=base64",
                "--target-image-opts", str(src),
                qemu_rbd_opts(pool, name, conn.user, monitors, "sec0")]
        try:
            proc = subprocess.run(argv, pass_fds=(fd,), capture_output=True, text=True,
                                  timeout=CONVERT_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise StorageError(f"qemu-img convert into rbd:{pool}/{name} failed: {e}",
                               retryable=True) from e
    if proc.returncode != 0:
        raise StorageError(f"qemu-img convert into rbd:{pool}/{name} failed: "
                           f"{proc.stderr.strip()}")
