"""Disk contents into an XCP-ng pool's storage over HTTP (`PUT /import_raw_vdi`).

`import_vdi` makes a VDI and streams bytes into it: `VDI.create` (sizes as strings),
then an empty PUT without a task to learn whether the host redirects (a host that
does not reach the SR answers 302 to one that does; Xen Orchestra probes the same way,
so the stream is never consumed by a request that goes nowhere), then the PUT of the
stream with `Content-Length` to the host that takes it, pinned to that host's own
certificate, and the import's task awaited. The session travels in a Cookie header,
never in the URL. The stream is never held whole in memory.

`PoolImages` keeps Vauban's images as VDIs of one SR, tagged in `other_config`
(`vauban.image`, `vauban.sha256`; `vauban.complete` set last, once the bytes are
verified), and imports small local files (a VM's cloud-init seed).
"""

from __future__ import annotations

import http.client
import logging
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Iterator, MutableSet
from pathlib import Path
from typing import Any

from agent.drivers.storage.base import ImageInUse, StorageError
from agent.drivers.storage.streams import CheckedStream, confirm_file
from agent.drivers.xapi.errors import XapiError, from_failure
from agent.drivers.xapi.events import PoolCache
from agent.drivers.xapi.pool import PoolClient
from agent.drivers.xapi.transport import session_cookie
from agent.protocol import ImageRef

log = logging.getLogger(__name__)

IMAGE_KEY = "vauban.image"  # the image id an image VDI holds
SHA_KEY = "vauban.sha256"
COMPLETE_KEY = "vauban.complete"  # set last: the VDI holds the verified image
INSTANCE_KEY = "vauban.instance"  # a VM's disk (never an image, whatever else it carries)
FROM_IMAGE_KEY = "vauban.from-image"  # a VM's disk made from that image (keeps it in use)
CHUNK = 1024 * 1024
SECTOR = 512
TASK_WAIT = 3600.0  # seconds an import's task may take after its body was sent
TASK_POLL = 0.5  # seconds between task reads when no event cache is at hand
CONVERT_TIMEOUT = 3600.0


def _failed(e: XapiError) -> StorageError:
    return StorageError(str(e), retryable=e.retryable)


def image_label(image_id: str) -> str:
    """The name_label of an image's VDI."""
    return f"vauban-image-{image_id}"


def destroy_vdi(client: PoolClient, vdi_uuid: str) -> bool:
    """Destroy a VDI; whether it is gone (a failure is logged, the sweep retries it)."""
    try:
        client.call("VDI.destroy", client.call("VDI.get_by_uuid", vdi_uuid))
    except XapiError as e:
        if e.code == "UUID_INVALID":
            return True
        log.warning("pool %s: VDI %s not destroyed: %s", client.label, vdi_uuid, e)
        return False
    return True


def _undone(client: PoolClient, vdi_uuid: str) -> str:
    """Destroy a VDI after a failure; a clause saying what became of it."""
    if destroy_vdi(client, vdi_uuid):
        return f"its VDI {vdi_uuid} was destroyed"
    return f"its VDI {vdi_uuid} could not be destroyed: the leftover sweep removes it"


def import_vdi(client: PoolClient, cache: PoolCache | None, sr_uuid: str, name: str,
               size: int, chunks: Iterable[bytes], fmt: str = "raw",
               other_config: dict[str, str] | None = None, *,
               virtual_size: int | None = None, description: str = "",
               in_flight: MutableSet[str] | None = None) -> str:
    """A new VDI `name` in SR `sr_uuid` holding `chunks` (`size` bytes in all, of format
    `fmt`: raw or vhd), of `virtual_size` bytes (default `size`); its uuid.

    The import's task is awaited on `cache` when given (else read until it ends). While
    the call runs the VDI's uuid is in `in_flight` (a sweep leaves it alone). On failure
    (a refused or redirected-twice PUT, a host not pinned, a stream shorter or longer
    than `size`, a failed task, an error of the stream itself) the VDI is destroyed and
    the error, StorageError saying so, raised; nothing of it is left.
    """
    record = {"name_label": name, "name_description": description, "SR": "",
              "virtual_size": size if virtual_size is None else virtual_size,
              "type": "user", "sharable": False, "read_only": False,
              "other_config": dict(other_config or {}), "sm_config": {},
              "xenstore_data": {}, "tags": []}
    try:
        record["SR"] = client.call("SR.get_by_uuid", sr_uuid)
        ref = client.call("VDI.create", record)
    except XapiError as e:
        raise StorageError(f"pool {client.label}: VDI {name} not created in SR {sr_uuid}: "
                           f"{e}", retryable=e.retryable) from e
    try:
        uuid = str(client.call("VDI.get_uuid", ref))
    except XapiError as e:
        try:
            client.call("VDI.destroy", ref)
        except XapiError:
            log.warning("pool %s: VDI %s (%s) left behind", client.label, name, ref)
        raise _failed(e) from e
    if in_flight is not None:
        in_flight.add(uuid)
    try:
        _upload(client, cache, uuid, fmt, size, chunks)
    except StorageError as e:
        raise StorageError(f"{e}; {_undone(client, uuid)}", retryable=e.retryable) from e
    except BaseException:
        destroy_vdi(client, uuid)
        raise
    finally:
        if in_flight is not None:
            in_flight.discard(uuid)
    return uuid


def _upload(client: PoolClient, cache: PoolCache | None, vdi_uuid: str, fmt: str,
            size: int, chunks: Iterable[bytes]) -> None:
    """`chunks` into VDI `vdi_uuid` through the host that takes the import."""
    query = {"vdi": vdi_uuid, "format": fmt}
    address, port = _probe(client, query)
    try:
        task = client.call("task.create", f"vauban import into VDI {vdi_uuid}", "")
    except XapiError as e:
        raise _failed(e) from e
    try:
        path = "/import_raw_vdi?" + urllib.parse.urlencode({**query, "task_id": task})
        status, reason, _ = _put(client, address, port, path, size, chunks)
        if status != 200:
            raise StorageError(f"pool {client.label}: {address} answered the import of VDI "
                               f"{vdi_uuid} with HTTP {status} {reason}".rstrip(),
                               retryable=status >= 500 or status == 401)
        _await(client, cache, task, vdi_uuid)
    finally:
        try:
            client.call("task.destroy", task)
        except XapiError as e:
            log.info("pool %s: import task not destroyed: %s", client.label, e)


def _probe(client: PoolClient, query: dict[str, str]) -> tuple[str, int]:
    """(address, port) of the host that takes an import: the master's, or where its
    302 points when that host is pinned. An empty PUT, sent again once after a 401 (a
    session that ended is replaced by the call in between)."""
    path = "/import_raw_vdi?" + urllib.parse.urlencode(query)
    for attempt in (0, 1):
        status, reason, location = _put(client, client.address, client.port, path, 0, ())
        if status != 401 or attempt:
            break
        try:
            client.call("pool.get_all")  # logs in again if the session ended
        except XapiError as e:
            raise _failed(e) from e
    if status == 200:
        return client.address, client.port
    if status == 302 and location:
        target = urllib.parse.urlsplit(location)
        host = target.hostname or ""
        if host not in client.pins:
            raise StorageError(f"pool {client.label}: {client.address} sends the import to "
                               f"{host}, whose certificate is not pinned: refused (pin "
                               f"{host}'s SHA-256 to import through it)")
        log.info("pool %s: import of VDI %s goes to %s", client.label, query["vdi"], host)
        return host, target.port or client.port
    raise StorageError(f"pool {client.label}: {client.address} answered an import with "
                       f"HTTP {status} {reason}".rstrip(), retryable=status >= 500)


def _put(client: PoolClient, address: str, port: int, path: str, size: int,
         chunks: Iterable[bytes]) -> tuple[int, str, str | None]:
    """(status, reason, Location) of one PUT of `size` bytes from `chunks` to a pinned
    host; StorageError when the host is not pinned or unreachable, or the stream is not
    `size` bytes long."""
    if address not in client.pins:
        raise StorageError(f"pool {client.label}: host {address} has no pinned certificate: "
                           "refused")
    try:
        connection = client.connect_pinned(address, port)
    except XapiError as e:
        raise _failed(e) from e
    except OSError as e:
        raise StorageError(f"pool {client.label}: {address}:{port} unreachable: {e}",
                           retryable=True) from e
    try:
        connection.putrequest("PUT", path, skip_accept_encoding=True)
        connection.putheader("Cookie", session_cookie(client.session_id()))
        connection.putheader("Content-Type", "application/octet-stream")
        connection.putheader("Content-Length", str(size))
        connection.endheaders()
        sent = _send(connection, chunks, size)
        if sent != size:
            raise StorageError(f"the stream ended after {sent} of the {size} bytes declared")
        answer = connection.getresponse()
        answer.read()
        return answer.status, answer.reason, answer.getheader("Location")
    except XapiError as e:
        raise _failed(e) from e
    except (OSError, http.client.HTTPException) as e:
        raise StorageError(f"pool {client.label}: the import to {address}:{port} broke: {e}",
                           retryable=True) from e
    finally:
        connection.close()


def _send(connection: http.client.HTTPConnection, chunks: Iterable[bytes], size: int) -> int:
    """Send `chunks` as the body; how many bytes; StorageError past `size`."""
    sent = 0
    for chunk in chunks:
        sent += len(chunk)
        if sent > size:
            raise StorageError(f"the stream is longer than the {size} bytes declared")
        connection.send(chunk)
    return sent


def _await(client: PoolClient, cache: PoolCache | None, task: str, vdi_uuid: str) -> None:
    """Wait until the import's task ended; StorageError unless it succeeded."""
    try:
        if cache is not None:
            record = _task_from_cache(client, cache, task)
        else:
            record = client.call("task.get_record", task)
            deadline = time.monotonic() + TASK_WAIT
            while record.get("status") == "pending" and time.monotonic() < deadline:
                time.sleep(TASK_POLL)  # no event cache here: read the task again
                record = client.call("task.get_record", task)
    except XapiError as e:
        raise _failed(e) from e
    status = record.get("status")
    if status == "success":
        return
    if status == "failure":
        error = from_failure(record.get("error_info") or [], client.label)
        raise StorageError(f"import into VDI {vdi_uuid} failed: {error}",
                           retryable=error.retryable)
    raise StorageError(f"pool {client.label}: the import into VDI {vdi_uuid} ended "
                       f"{status or 'without a status'}", retryable=True)


def _task_from_cache(client: PoolClient, cache: PoolCache, task: str) -> dict[str, Any]:
    uuid = client.call("task.get_uuid", task)

    def ended(c: PoolCache) -> bool:
        return not c.valid or (c.get("task", uuid) or {}).get("status", "pending") != "pending"

    cache.wait_for(ended, TASK_WAIT)
    record = cache.get("task", uuid)
    if record is None or record.get("status") == "pending":
        raise StorageError(f"pool {client.label}: the import's task was lost "
                           f"({cache.problem or 'it never ended'})", retryable=True)
    return record


def file_chunks(path: Path, chunk: int = CHUNK) -> Iterator[bytes]:
    """The bytes of a file, `chunk` at a time."""
    with path.open("rb") as f:
        while data := f.read(chunk):
            yield data


def to_vhd(src: Path, dst: Path) -> None:
    """A dynamic VHD of qcow2 file `src` at `dst`. `force_size`: the VHD keeps the exact
    size (else qemu rounds it to a CHS geometry). StorageError when qemu-img fails."""
    argv = ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "vpc", "-o",
            "subformat=dynamic,force_size=on", str(src), str(dst)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CONVERT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StorageError(f"qemu-img convert to VHD failed: {e}", retryable=True) from e
    if proc.returncode != 0:
        raise StorageError(f"qemu-img convert to VHD failed: {proc.stderr.strip()}")


class PoolImages:
    """Vauban's images as VDIs of SR `sr_uuid` of a pool (see the module docstring).

    Image VDIs are read from `cache` when given (kept current by the pool's event loop),
    else with `VDI.get_all_records`. qcow2 images are converted in `scratch_dir`. Not
    thread-safe, as its PoolClient is not: one per thread.
    """

    def __init__(self, client: PoolClient, sr_uuid: str, scratch_dir: Path,
                 cache: PoolCache | None = None) -> None:
        self.client, self.sr_uuid, self.cache = client, sr_uuid, cache
        self.scratch_dir = scratch_dir
        self.importing: set[str] = set()  # VDI uuids of imports in flight here

    def _vdis(self) -> dict[str, dict[str, Any]]:
        """uuid -> record of every VDI of the SR (the SR field as a uuid)."""
        if self.cache is not None:
            records = self.cache.all("VDI")
        else:
            try:
                sr_ref = self.client.call("SR.get_by_uuid", self.sr_uuid)
                found = self.client.call("VDI.get_all_records")
            except XapiError as e:
                raise _failed(e) from e
            records = {r["uuid"]: {**r, "SR": self.sr_uuid if r.get("SR") == sr_ref else None}
                       for r in found.values()}
        return {u: r for u, r in records.items() if r.get("SR") == self.sr_uuid}

    def _images(self, image_id: str | None = None) -> dict[str, dict[str, str]]:
        """uuid -> other_config of the image VDIs (of `image_id`, or all)."""
        out = {}
        for uuid, record in self._vdis().items():
            config = dict(record.get("other_config") or {})
            if IMAGE_KEY in config and INSTANCE_KEY not in config and (
                    image_id is None or config[IMAGE_KEY] == image_id):
                out[uuid] = config
        return out

    def image_vdi(self, image_id: str, sha256: str | None = None) -> str | None:
        """The uuid of the complete VDI holding image `image_id` (with that SHA-256 when
        given), or None."""
        for uuid, config in sorted(self._images(image_id).items()):
            if config.get(COMPLETE_KEY) == "true" and sha256 in (None, config.get(SHA_KEY)):
                return uuid
        return None

    def has_image(self, image_id: str, sha256: str | None = None) -> bool:
        """Whether the SR holds image `image_id` complete (with that SHA-256 if given)."""
        return self.image_vdi(image_id, sha256) is not None

    def import_image(self, image: ImageRef, chunks: Iterable[bytes]) -> str:
        """Store an image as a VDI from a stream; its uuid. See StorageDriver.import_image.

        raw: streamed into the VDI through CheckedStream (hashed, counted, inspected as it
        goes). qcow2: the checked stream into a temporary file of `scratch_dir`,
        converted to a dynamic VHD there and imported as `format=vhd`; the files are
        removed whatever happens. The completion mark is set only once the bytes are
        verified; on any failure (a checksum mismatch included) the VDI is destroyed and
        StorageError says so. An image already stored is kept and the stream not read.
        """
        found = self.image_vdi(image.id, image.sha256)
        if found is not None:
            return found
        config = {IMAGE_KEY: image.id, SHA_KEY: image.sha256}
        stream = CheckedStream(image)
        if image.disk_format == "raw":
            uuid = self._import(image, stream.read(chunks), image.size_bytes, "raw", config)
            self._verified(uuid, stream)
        else:
            uuid = self._import_qcow2(image, stream, chunks, config)
        self._mark_complete(uuid)
        return uuid

    def _import(self, image: ImageRef, chunks: Iterable[bytes], size: int, fmt: str,
                config: dict[str, str], virtual_size: int | None = None) -> str:
        return import_vdi(self.client, self.cache, self.sr_uuid, image_label(image.id), size,
                          chunks, fmt, config, virtual_size=virtual_size,
                          description=image.name, in_flight=self.importing)

    def _verified(self, uuid: str, stream: CheckedStream) -> None:
        """The stream that was imported into VDI `uuid` checked whole; the VDI destroyed
        and StorageError raised when it was not the image."""
        try:
            stream.verify()
        except StorageError as e:
            raise StorageError(f"{e}; {_undone(self.client, uuid)}",
                               retryable=e.retryable) from e

    def _import_qcow2(self, image: ImageRef, stream: CheckedStream, chunks: Iterable[bytes],
                      config: dict[str, str]) -> str:
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.scratch_dir, prefix=f".{image.id}.") as tmp:
            src, vhd = Path(tmp) / "image.qcow2", Path(tmp) / "image.vhd"
            with src.open("wb") as f:
                for chunk in stream.read(chunks):
                    f.write(chunk)
            facts = stream.verify()
            confirm_file(src, image, facts)
            to_vhd(src, vhd)
            src.unlink()  # the space is the VHD's now
            return self._import(image, file_chunks(vhd), vhd.stat().st_size, "vhd", config,
                                facts.virtual_size)

    def _mark_complete(self, uuid: str) -> None:
        """Set the completion mark on VDI `uuid` (and see it in the cache); the VDI
        destroyed and StorageError raised when that fails."""
        try:
            ref = self.client.call("VDI.get_by_uuid", uuid)
            self.client.call("VDI.add_to_other_config", ref, COMPLETE_KEY, "true")
        except XapiError as e:
            raise StorageError(f"{e}; {_undone(self.client, uuid)}",
                               retryable=e.retryable) from e
        if self.cache is not None:  # so that has_image() says so at once
            self.cache.wait_for(lambda c: not c.valid or (c.get("VDI", uuid) or {}).get(
                "other_config", {}).get(COMPLETE_KEY) == "true", TASK_WAIT)

    def import_file(self, path: Path, name: str, other_config: dict[str, str]) -> str:
        """A VDI `name` holding local file `path` (raw; its virtual size the file's,
        rounded up to whole sectors); its uuid. On failure nothing is left."""
        try:
            size = path.stat().st_size
        except OSError as e:
            raise StorageError(f"{path} cannot be imported: {e}") from e
        virtual = -(-size // SECTOR) * SECTOR
        return import_vdi(self.client, self.cache, self.sr_uuid, name, size,
                          file_chunks(path), "raw", other_config, virtual_size=virtual,
                          in_flight=self.importing)

    def sweep_leftovers(self) -> list[str]:
        """Destroy the image VDIs without the completion mark (an interrupted import's),
        except those imported now by this object; their uuids."""
        removed = []
        for uuid, config in sorted(self._images().items()):
            if config.get(COMPLETE_KEY) == "true" or uuid in self.importing:
                continue
            if destroy_vdi(self.client, uuid):
                log.info("pool %s: VDI %s of an interrupted import of image %s destroyed",
                         self.client.label, uuid, config.get(IMAGE_KEY))
                removed.append(uuid)
        return removed

    def delete_image(self, image_id: str) -> None:
        """Destroy the VDIs of image `image_id`; a no-op when there is none. Refused with
        ImageInUse (nothing changed) while a VM disk made from it exists."""
        vdis = self._images(image_id)
        if not vdis:
            return
        users = sorted(u for u, r in self._vdis().items()
                       if (r.get("other_config") or {}).get(FROM_IMAGE_KEY) == image_id)
        if users:
            raise ImageInUse(f"image {image_id} is in use by VDI(s) {', '.join(users)}")
        for uuid in sorted(vdis):
            try:
                self.client.call("VDI.destroy", self.client.call("VDI.get_by_uuid", uuid))
            except XapiError as e:
                if e.code != "UUID_INVALID":
                    raise _failed(e) from e

    def image_virtual_size(self, image_id: str) -> int:
        """The virtual size of a stored image's VDI; StorageError when not stored."""
        uuid = self.image_vdi(image_id)
        record = self._vdis().get(uuid or "")
        if record is None:
            raise StorageError(f"image {image_id} is not stored in SR {self.sr_uuid}")
        return int(record["virtual_size"])
