"""The storage driver contract.

Vocabulary: an *image* is an immutable base that VM disks are made from, stored
once per node (or once per cluster for shared storage) under its image id. A
*root disk* is a VM's writable disk made from an image (copy-on-write where the
backend can). A *volume* is a disk with a life of its own (created, snapshotted,
cloned, attached to VMs), only where `info().volumes` says so. Every method leaves
the store as it was when it fails.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from agent.drivers.hypervisor.base import DiskSpec
from agent.errors import DriverError
from agent.protocol import ImageRef


@dataclass(frozen=True)
class StorageInfo:
    """What a driver can do, as data."""

    name: str
    remote: bool  # every node sees the same disks
    copy_on_write: bool  # a root disk is O(1) whatever the image size
    volumes: bool = False  # the volume methods work (else they raise StorageError)


@dataclass(frozen=True)
class VolumeInfo:
    """One volume as the store sees it."""

    id: str
    pool: str
    size_bytes: int  # what the guest sees
    used_bytes: int  # space its own data takes (not counting a clone's parent or snapshots)
    snapshots: tuple[str, ...]
    rollback_seq: int = 0  # the last rollback request applied (see rollback_volume)
    # those of `snapshots` taken while the guest's filesystems were frozen (filesystem-
    # consistent); the others are crash-consistent
    quiesced_snapshots: tuple[str, ...] = ()


class PoolUsage(NamedTuple):
    """Space of one pool: what is stored in it and what can still be written to it."""

    pool: str
    used_bytes: int
    max_avail_bytes: int


@dataclass(frozen=True)
class StorageHealth:
    """The state of the storage backend as a whole."""

    status: str  # e.g. "HEALTH_OK", "HEALTH_WARN", "HEALTH_ERR"; "UNKNOWN" if unreadable
    detail: str  # why it is not OK (one line per check, "; "-separated), else ""
    pools: tuple[PoolUsage, ...]


class StorageError(DriverError):
    """A storage operation failed; `retryable` says whether trying again may help."""


class ImageInUse(StorageError):
    """`delete_image` refused: a disk is still made from the image. Not a failure of the
    node: the image is kept until no disk uses it, and deleted then."""


class StorageDriver(ABC):
    """Holds images and the VM disks made from them."""

    @abstractmethod
    def info(self) -> StorageInfo:
        """Capabilities of this driver."""

    @abstractmethod
    def has_image(self, image_id: str) -> bool:
        """Whether the image is complete and usable on this node."""

    @abstractmethod
    def import_image(self, image: ImageRef, chunks: Iterable[bytes]) -> None:
        """Store the image from a stream of chunks, never holding it all in memory.

        After success `has_image(image.id)` is true and the stored bytes hash to
        `image.sha256`. On failure (including a checksum mismatch, raised as a
        StorageError) nothing of it is left.
        """

    def sweep_leftovers(self) -> list[str]:
        """Remove what this driver's interrupted work left behind (a crashed import's
        temporary objects); returns what was removed. Work in flight, in this process or
        another, is never touched. The agent calls it at start and then periodically;
        a StorageError leaves the rest for the next call. Default: nothing to sweep."""
        return []

    @abstractmethod
    def delete_image(self, image_id: str) -> None:
        """Remove an image; a no-op if it is not stored. Refused with ImageInUse (nothing
        changed) while a disk is made from it."""

    @abstractmethod
    def image_virtual_size(self, image_id: str) -> int:
        """Virtual size in bytes of a stored image (what a root disk of it shows the guest)."""

    @abstractmethod
    def create_root_disk(self, vm_id: str, image_id: str, size_gib: int | None) -> DiskSpec:
        """Make the VM's root disk from an image, `size_gib` or the image's own size.

        After success the returned disk exists (target "vda"). On failure nothing
        was created. A size smaller than the image's virtual size raises StorageError.
        """

    def existing_root_disk(self, vm_id: str) -> DiskSpec:
        """The VM's root disk as it already exists (made before, here or on another node
        of shared storage), target "vda"; StorageError when this node cannot reach it."""
        raise StorageError(f"{self.info().name} storage cannot take over the existing root "
                           f"disk of VM {vm_id}")

    def root_disk_is_clone(self, vm_id: str) -> bool:
        """Whether the VM's root disk still depends on its image (copy-on-write)."""
        return False

    def flatten_root_disk(self, vm_id: str) -> None:
        """Copy the image's data into the VM's root disk so it no longer depends on it."""
        raise StorageError(f"{self.info().name} storage cannot flatten root disks")

    @abstractmethod
    def delete_vm_disks(self, vm_id: str) -> None:
        """Remove every disk of the VM. Removing disks that do not exist is a no-op."""

    @abstractmethod
    def vm_disk_exists(self, vm_id: str) -> bool:
        """Whether the VM's root disk exists."""

    @abstractmethod
    def free_bytes(self) -> int:
        """Space left for new images and disks."""

    # --- volumes: only where info().volumes; the defaults refuse -------------------

    def _no_volumes(self) -> StorageError:
        return StorageError(f"{self.info().name} storage does not support volumes")

    def create_volume(self, volume_id: str, size_gib: int, pool: str | None = None) -> VolumeInfo:
        """Create an empty volume of `size_gib` GiB in `pool` (the driver's default if None).

        After success the volume exists. An existing id or a pool the driver may not
        use raises StorageError; on failure nothing was created.
        """
        raise self._no_volumes()

    def delete_volume(self, volume_id: str) -> None:
        """Remove a volume and its snapshots; a no-op if it does not exist.

        Refused with StorageError (and nothing changed) while a snapshot of it has clones
        or while it is in use.
        """
        raise self._no_volumes()

    def resize_volume(self, volume_id: str, size_gib: int) -> None:
        """Grow a volume to `size_gib` GiB; the same size is a no-op, a smaller one raises."""
        raise self._no_volumes()

    def snapshot_volume(self, volume_id: str, snap: str, *, quiesced: bool = False) -> None:
        """Take a snapshot named `snap`; an existing name raises StorageError. `quiesced`
        (the guest's filesystems are frozen now) is kept with it: VolumeInfo lists it in
        `quiesced_snapshots` from then on. On failure there is no snapshot `snap`."""
        raise self._no_volumes()

    def rollback_volume(self, volume_id: str, snap: str, seq: int = 0) -> None:
        """Give the volume the content it had at `snap`. Refused while the volume is in use.

        With `seq` > 0 the request runs once: the volume keeps the last `seq` applied
        (VolumeInfo.rollback_seq) and a request whose `seq` is not above it does nothing.
        """
        raise self._no_volumes()

    def delete_volume_snapshot(self, volume_id: str, snap: str) -> None:
        """Remove a snapshot; a no-op if it does not exist; refused while it has clones."""
        raise self._no_volumes()

    def clone_volume(self, src_volume_id: str, snap: str, new_volume_id: str) -> VolumeInfo:
        """Make a new volume, copy-on-write, from snapshot `snap` of another one.

        After success the new volume exists in the source's pool. On failure nothing
        was created and the snapshot is as it was.
        """
        raise self._no_volumes()

    def list_volumes(self) -> list[VolumeInfo]:
        """Every volume of every pool this driver uses."""
        raise self._no_volumes()

    def volume_disk(self, volume_id: str, target: str) -> DiskSpec:
        """The block device to attach the volume to a VM as `target` (e.g. "vdc")."""
        raise self._no_volumes()

    def volume_of(self, disk: DiskSpec) -> str | None:
        """The id of the volume of this store that `disk` is, or None (any other disk)."""
        return None

    def health(self) -> StorageHealth:
        """The backend's health and the space of its pools."""
        raise StorageError(f"{self.info().name} storage does not report health")
