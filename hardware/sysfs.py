"""Reading /proc and /sys under a root, so the same probes run live and on recorded trees.

Every reader here tolerates what a real kernel does: attributes that exist but
fail to read (a down link's `speed`), symlinks whose target is only meaningful
by its last component (`driver`, `iommu_group`), and directories that are
missing on some machines.
"""

from __future__ import annotations

import os
from pathlib import Path


class Root:
    """A filesystem root: `/` on a live host, a directory of recorded files in tests."""

    def __init__(self, path: Path | str = "/") -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Root({str(self.path)!r})"

    def join(self, rel: str) -> Path:
        """The absolute path of `rel` (given without a leading slash) under this root."""
        return self.path / rel.lstrip("/")

    def read(self, rel: str, default: str | None = None) -> str | None:
        """The stripped text of a file, or `default` when it is missing or unreadable."""
        try:
            return self.join(rel).read_text(errors="replace").strip()
        except OSError:
            return default

    def read_int(self, rel: str, default: int | None = None, base: int = 10) -> int | None:
        text = self.read(rel)
        try:
            return int(text, base) if text is not None else default
        except ValueError:
            return default

    def link_name(self, rel: str) -> str | None:
        """The last component of a symlink's target (`driver` -> `nvidia`), or None."""
        try:
            return os.path.basename(os.readlink(self.join(rel)))
        except OSError:
            return None

    def entries(self, rel: str) -> list[str]:
        """Sorted names in a directory; empty when it does not exist."""
        try:
            return sorted(os.listdir(self.join(rel)))
        except OSError:
            return []

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.join(rel))


def parse_cpulist(text: str) -> list[int]:
    """Expand a kernel cpulist ("0-3,8,10-11") into CPU numbers; empty text gives []."""
    cpus: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus
