"""An image stream checked as it is consumed: SHA-256, and never more than declared."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from agent.drivers.storage.base import StorageError
from agent.protocol import ImageRef


class CheckedStream:
    """Wraps an image's chunks; `verify()` afterwards says whether they were the image."""

    def __init__(self, image: ImageRef) -> None:
        self.image = image
        self.size = 0
        self._digest = hashlib.sha256()

    def read(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The chunks, hashed and counted; StorageError as soon as there are too many bytes
        (a runaway stream must not fill the disk)."""
        for chunk in chunks:
            self.size += len(chunk)
            if self.size > self.image.size_bytes:
                raise StorageError(f"image {self.image.id} is larger than its declared "
                                   f"{self.image.size_bytes} bytes")
            self._digest.update(chunk)
            yield chunk

    def verify(self) -> None:
        """StorageError unless what was read hashes to the image's SHA-256 and size."""
        actual = self._digest.hexdigest()
        if actual != self.image.sha256:
            raise StorageError(f"image {self.image.id} checksum mismatch: expected sha256 "
                               f"{self.image.sha256}, got {actual}")
        if self.size != self.image.size_bytes:
            raise StorageError(f"image {self.image.id} is {self.size} bytes, declared "
                               f"{self.image.size_bytes}")
