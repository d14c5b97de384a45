"""An image stream checked as it is consumed: SHA-256, never more than declared, and a disk
image the region accepts (images.diskcheck: a node re-checks what it fetched)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from agent.drivers.storage.base import StorageError
from agent.protocol import ImageRef
from images.diskcheck import DiskCheckUnavailable, DiskFacts, DiskProbe, DiskRefused
from images.diskcheck import confirm_with_qemu_img as _confirm_with_qemu_img


class CheckedStream:
    """Wraps an image's chunks; `verify()` afterwards says whether they were the image."""

    def __init__(self, image: ImageRef) -> None:
        self.image = image
        self.size = 0
        self._digest = hashlib.sha256()
        try:
            self._probe = DiskProbe(image.disk_format)
        except DiskRefused as e:
            raise StorageError(f"image {image.id} refused: {e}") from None

    def read(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The chunks, hashed, counted and inspected; StorageError as soon as there are too
        many bytes (a runaway stream must not fill the disk)."""
        for chunk in chunks:
            self.size += len(chunk)
            if self.size > self.image.size_bytes:
                raise StorageError(f"image {self.image.id} is larger than its declared "
                                   f"{self.image.size_bytes} bytes")
            self._digest.update(chunk)
            self._probe.feed(chunk)
            yield chunk

    def verify(self) -> DiskFacts:
        """What the image is; StorageError unless what was read hashes to the image's
        SHA-256, has its size, and is an image the region accepts (format as declared, a
        qcow2 naming no other file: see images.diskcheck)."""
        actual = self._digest.hexdigest()
        if actual != self.image.sha256:
            raise StorageError(f"image {self.image.id} checksum mismatch: expected sha256 "
                               f"{self.image.sha256}, got {actual}")
        if self.size != self.image.size_bytes:
            raise StorageError(f"image {self.image.id} is {self.size} bytes, declared "
                               f"{self.image.size_bytes}")
        try:
            return self._probe.verdict(self.size)
        except DiskRefused as e:
            raise StorageError(f"image {self.image.id} refused: {e}") from None


def confirm_file(path: Path, image: ImageRef, facts: DiskFacts) -> None:
    """qemu-img's second opinion on a verified image file (see images.diskcheck); StorageError
    if it differs, retryable if qemu-img could not run."""
    try:
        _confirm_with_qemu_img(path, facts)
    except DiskRefused as e:
        raise StorageError(f"image {image.id} refused: {e}") from None
    except DiskCheckUnavailable as e:
        raise StorageError(f"image {image.id}: {e}", retryable=True) from None
