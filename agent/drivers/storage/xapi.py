"""The storage driver of an XCP-ng pool: images and root disks as VDIs of one SR.

An image is a VDI tagged `other_config["vauban.image"] = <image id>`; a VM's root disk
is a VDI tagged `vauban.instance = <instance id>` and `vauban.disk = root`, made by
VDI.clone of the image's VDI where the SR's storage manager clones (copy-on-write), else
by VDI.copy, then grown with VDI.resize. Reads come from the pool's event cache;
changes go through PoolOps (`Async.*` tasks, each destroyed). Moving image bytes into
the pool is `agent.drivers.xapi.imports.PoolImages`' (with a client of its own, one
import at a time); an image counts once its VDI carries the completion mark.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from agent.drivers.hypervisor.base import ROOT_DISK_TARGET, DiskSpec, VdiSource
from agent.drivers.storage.base import (
    PoolUsage,
    StorageDriver,
    StorageError,
    StorageHealth,
    StorageInfo,
)
from agent.drivers.xapi.errors import XapiError
from agent.drivers.xapi.imports import FROM_IMAGE_KEY, PoolImages
from agent.drivers.xapi.keys import DISK, IMAGE, INSTANCE, our_vm
from agent.drivers.xapi.pool import PoolClient
from agent.drivers.xapi.tasks import PoolOps
from agent.protocol import ImageRef

IMAGE_KEYS = (IMAGE, "vauban.sha256", "vauban.complete")  # not carried over to a clone
CACHE_WAIT = 300.0  # seconds to wait for the pool's events to show a change we made
GiB = 1024**3


@contextlib.contextmanager
def _as_storage_error() -> Iterator[None]:
    """A pool's failure (XapiError) as the StorageError the storage contract speaks."""
    try:
        yield
    except XapiError as e:
        raise StorageError(str(e), retryable=e.retryable) from e

XAPI_POOL = "xapi"  # the pool name the region's scheduler reads a pool node's space under


class XapiStorage(StorageDriver):
    """Images and root disks in one SR of a pool (the pool's default SR unless named)."""

    def __init__(self, ops: PoolOps, new_client: Callable[[], PoolClient], scratch_dir: Path,
                 *, sr_uuid: str | None = None, cache_wait: float = CACHE_WAIT) -> None:
        self.ops, self.cache = ops, ops.cache
        self._sr = sr_uuid
        self.cache_wait = cache_wait
        self._new_client, self._scratch = new_client, scratch_dir
        self._images: PoolImages | None = None
        self._importing = threading.Lock()  # PoolImages' client serves one call at a time
        self._making = threading.Lock()

    def images(self) -> PoolImages:
        """The images of the SR in use (made on first use, once the SR is known)."""
        with self._making:
            if self._images is None or self._images.sr_uuid != self.sr_uuid:
                self._images = PoolImages(self._new_client(), self.sr_uuid, self._scratch,
                                          self.cache)
            return self._images

    # --- the SR ------------------------------------------------------------------------

    def _valid(self) -> None:
        if not self.cache.valid:
            raise StorageError(f"pool {self.ops.label}: not readable now "
                               f"({self.cache.problem})", retryable=True)

    @property
    def sr_uuid(self) -> str:
        """The SR used: the one named, else the pool's default SR."""
        if self._sr is not None:
            return self._sr
        self._valid()
        for pool in self.cache.all("pool").values():
            if pool.get("default_SR"):
                return str(pool["default_SR"])
        raise StorageError(f"pool {self.ops.label} has no default storage repository")

    def _sr_record(self) -> dict[str, Any]:
        record = self.cache.get("SR", self.sr_uuid)
        if record is None:
            raise StorageError(f"pool {self.ops.label}: no storage repository {self.sr_uuid}")
        return record

    def _clones(self) -> bool:
        """Whether the SR's storage manager clones VDIs (copy-on-write)."""
        kind = self._sr_record().get("type")
        return any(sm.get("type") == kind and ("VDI_CLONE" in (sm.get("capabilities") or [])
                                               or "VDI_CLONE" in (sm.get("features") or {}))
                   for sm in self.cache.all("SM").values())

    def info(self) -> StorageInfo:
        try:
            cow = self._clones()
        except StorageError:
            cow = False  # unknown while the pool cannot be read
        return StorageInfo("xapi", remote=True, copy_on_write=cow, volumes=False)

    def free_bytes(self) -> int:
        record = self._sr_record()
        return int(record["physical_size"]) - int(record["physical_utilisation"])

    def health(self) -> StorageHealth:
        """The SR's space as the one pool (`xapi`); ERROR while the pool cannot be read."""
        if not self.cache.valid:
            return StorageHealth("ERROR", f"pool {self.ops.label}: {self.cache.problem}", ())
        record = self._sr_record()
        size, used = int(record["physical_size"]), int(record["physical_utilisation"])
        return StorageHealth("OK", "", (PoolUsage(XAPI_POOL, used, max(0, size - used)),))

    # --- lookups -----------------------------------------------------------------------

    def _vdis(self, match: Callable[[dict[str, str]], bool]) -> dict[str, dict[str, Any]]:
        """The SR's VDIs whose other_config satisfies `match`."""
        self._valid()
        sr = self.sr_uuid
        return {u: r for u, r in self.cache.all("VDI").items()
                if r["SR"] == sr and match(r.get("other_config") or {})}

    def image_vdi(self, image_id: str) -> tuple[str, dict[str, Any]] | None:
        """(uuid, record) of the image's complete VDI (tagged vauban.image and marked
        complete, not a VM's disk)."""
        self._valid()
        uuid = self.images().image_vdi(image_id)
        record = self.cache.get("VDI", uuid) if uuid is not None else None
        return (uuid, record) if uuid is not None and record is not None else None

    def _of_vm(self, vm_id: str) -> dict[str, dict[str, Any]]:
        """The VDIs tagged for VM `vm_id` that no other VM uses: a copy made in the pool
        (attached to a clone or replica, which is not ours) keeps the tag but is not its."""
        tagged = self._vdis(lambda c: c.get(INSTANCE) == vm_id)
        users: dict[str, set[str]] = {}
        for vbd in self.cache.all("VBD").values():
            users.setdefault(str(vbd["VDI"]), set()).add(str(vbd["VM"]))
        return {uuid: record for uuid, record in tagged.items()
                if all(self._owner(vm) == vm_id for vm in users.get(uuid, ()))}

    def _root(self, vm_id: str) -> tuple[str, dict[str, Any]] | None:
        found = {u: r for u, r in self._of_vm(vm_id).items()
                 if (r.get("other_config") or {}).get(DISK) == "root"}
        return next(iter(sorted(found.items())), None)

    def image_virtual_size(self, image_id: str) -> int:
        found = self.image_vdi(image_id)
        if found is None:
            raise StorageError(f"pool {self.ops.label}: no image {image_id}")
        return int(found[1]["virtual_size"])

    # --- root disks --------------------------------------------------------------------

    def create_root_disk(self, vm_id: str, image_id: str, size_gib: int | None) -> DiskSpec:
        """VDI.clone (or VDI.copy) of the image's VDI, grown to `size_gib`, tagged as the
        VM's root. On failure the new VDI is destroyed again."""
        image = self.image_vdi(image_id)
        if image is None:
            raise StorageError(f"pool {self.ops.label}: image {image_id} is not in storage "
                               f"repository {self.sr_uuid}")
        image_size = int(image[1]["virtual_size"])
        size = size_gib * GiB if size_gib is not None else image_size
        if size < image_size:
            raise StorageError(f"a root disk of {size_gib} GiB is smaller than image "
                               f"{image_id} ({image_size} bytes)")
        with _as_storage_error():
            source = self.ops.ref("VDI", image[0])
            if self._clones():
                vdi = self.ops.run("VDI.clone", source, {})
            else:
                vdi = self.ops.run("VDI.copy", source, self.ops.ref("SR", self.sr_uuid))
            uuid = self.ops.uuid_of_new("VDI", vdi)
            try:
                self._tag_root(vdi, vm_id, image_id, size if size > image_size else None)
            except BaseException:
                self._destroy(uuid)
                raise
        self._await(lambda: self._root(vm_id) is not None, f"VM {vm_id}'s root disk")
        return DiskSpec(source=VdiSource(self.sr_uuid, uuid), format="raw",
                        target=ROOT_DISK_TARGET)

    def _tag_root(self, vdi: str, vm_id: str, image_id: str, grow_to: int | None) -> None:
        if grow_to is not None:
            self.ops.run("VDI.resize", vdi, str(grow_to))  # int64 as XAPI's string
        self.ops.call("VDI.set_name_label", vdi, f"vauban-root-{vm_id}")
        for key in IMAGE_KEYS:
            self.ops.call("VDI.remove_from_other_config", vdi, key)
        self.ops.call("VDI.add_to_other_config", vdi, DISK, "root")
        # the image stays in use (delete_image refuses) while a disk made from it lives
        self.ops.call("VDI.add_to_other_config", vdi, FROM_IMAGE_KEY, image_id)
        self.ops.call("VDI.add_to_other_config", vdi, INSTANCE, vm_id)  # last: it makes it ours

    def _await(self, holds: Callable[[], bool], what: str) -> None:
        if not self.cache.wait_for(lambda _: holds(), self.cache_wait):
            raise StorageError(f"pool {self.ops.label}: its events never showed {what}",
                               retryable=True)

    def existing_root_disk(self, vm_id: str) -> DiskSpec:
        found = self._root(vm_id)
        if found is None:
            raise StorageError(f"pool {self.ops.label}: VM {vm_id} has no root disk")
        return DiskSpec(source=VdiSource(self.sr_uuid, found[0]), format="raw",
                        target=ROOT_DISK_TARGET)

    def root_disk_is_clone(self, vm_id: str) -> bool:
        """Whether the root VDI still has a parent (an SM's `vhd-parent`)."""
        found = self._root(vm_id)
        return found is not None and bool((found[1].get("sm_config") or {}).get("vhd-parent"))

    def vm_disk_exists(self, vm_id: str) -> bool:
        return self._root(vm_id) is not None

    def delete_vm_disks(self, vm_id: str) -> None:
        """Destroy every VDI tagged with the VM, except one a VBD of another VM uses (it
        is that VM's now)."""
        destroyed = []
        for uuid in sorted(self._of_vm(vm_id)):
            self._destroy(uuid)
            destroyed.append(uuid)
        self._await(lambda: all(self.cache.get("VDI", u) is None for u in destroyed),
                    f"VM {vm_id}'s disks destroyed")

    def _owner(self, vm_uuid: str) -> str | None:
        record = self.cache.get("VM", vm_uuid)
        return our_vm(record) if record else None

    def _destroy(self, uuid: str) -> None:
        with _as_storage_error():
            try:
                self.ops.call("VDI.destroy", self.ops.ref("VDI", uuid))
            except XapiError as e:
                if e.code not in ("UUID_INVALID", "HANDLE_INVALID"):
                    raise

    # --- images: PoolImages moves the bytes ----------------------------------------------

    def has_image(self, image_id: str) -> bool:
        self._valid()
        return self.images().has_image(image_id)

    def import_image(self, image: ImageRef, chunks: Iterable[bytes]) -> None:
        images = self.images()
        with self._importing:
            images.import_image(image, chunks)

    def import_file(self, path: Path, name: str, other_config: dict[str, str]) -> str:
        """A VDI holding local file `path` (a VM's cloud-init seed); its uuid."""
        images = self.images()
        with self._importing:
            return images.import_file(path, name, other_config)

    def sweep_leftovers(self) -> list[str]:
        if not self.cache.valid:
            return []  # nothing can be told of an unread pool
        images = self.images()
        with self._importing:
            return images.sweep_leftovers()

    def delete_image(self, image_id: str) -> None:
        images = self.images()
        with self._importing:
            images.delete_image(image_id)
