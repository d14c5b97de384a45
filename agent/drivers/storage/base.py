"""The storage driver contract.

Vocabulary: an *image* is an immutable base that VM disks are made from, stored
once per node (or once per cluster for shared storage) under its image id. A
*root disk* is a VM's writable disk made from an image (copy-on-write where the
backend can). Every method leaves the store as it was when it fails.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

from agent.drivers.hypervisor.base import DiskSpec
from agent.protocol import ImageRef


@dataclass(frozen=True)
class StorageInfo:
    """What a driver can do, as data."""

    name: str
    remote: bool  # every node sees the same disks
    copy_on_write: bool  # a root disk is O(1) whatever the image size


class StorageError(Exception):
    """A storage operation failed; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


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

    @abstractmethod
    def delete_image(self, image_id: str) -> None:
        """Remove an image. Refused with StorageError while a disk is made from it."""

    @abstractmethod
    def image_virtual_size(self, image_id: str) -> int:
        """Virtual size in bytes of a stored image (what a root disk of it shows the guest)."""

    @abstractmethod
    def create_root_disk(self, vm_id: str, image_id: str, size_gib: int | None) -> DiskSpec:
        """Make the VM's root disk from an image, `size_gib` or the image's own size.

        After success the returned disk exists (target "vda"). On failure nothing
        was created. A size smaller than the image's virtual size raises StorageError.
        """

    @abstractmethod
    def delete_vm_disks(self, vm_id: str) -> None:
        """Remove every disk of the VM. Removing disks that do not exist is a no-op."""

    @abstractmethod
    def vm_disk_exists(self, vm_id: str) -> bool:
        """Whether the VM's root disk exists."""

    @abstractmethod
    def free_bytes(self) -> int:
        """Space left for new images and disks."""
