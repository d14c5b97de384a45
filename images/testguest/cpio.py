"""A minimal writer for the `newc` cpio format the kernel unpacks as an initramfs.

Written in Python so that the archive can hold root-owned files and device
nodes (`/dev/console`) without root privileges, and so that its bytes depend
only on its entries (fixed mtime, inode numbers in order).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. `path` is relative (no leading `/`); `mode` includes the file type.

    For a symlink `data` is the target; for a device node `rdev` is (major, minor).
    """

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    mtime: int = 0


def directory(path: str, perm: int = 0o755) -> Entry:
    """Return a directory entry."""
    return Entry(path, stat.S_IFDIR | perm)


def regular(path: str, data: bytes, perm: int = 0o644) -> Entry:
    """Return a regular-file entry holding `data`."""
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    """Return a symlink entry pointing at `target`."""
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def char_device(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    """Return a character-device entry."""
    return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    """Return the NUL padding that brings a length of `n` to a multiple of 4."""
    return b"\0" * (-n % 4)


def encode_entry(entry: Entry, ino: int) -> bytes:
    """Return the newc header, name and data of `entry` (uid/gid 0), padded to 4 bytes."""
    if entry.path.startswith("/") or not entry.path:
        raise ValueError(f"cpio path must be relative and non-empty: {entry.path!r}")
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, entry.mtime, len(entry.data), 0, 0,
              entry.rdev[0], entry.rdev[1], len(name), 0)
    header = MAGIC + b"".join(b"%08X" % f for f in fields)
    head = header + name
    return head + _pad4(len(head)) + entry.data + _pad4(len(entry.data))


def write_newc(entries: Iterable[Entry], out: BinaryIO) -> None:
    """Write `entries` then the trailer to `out` as a newc archive.

    Parent directories must come before their contents (the kernel does not
    create missing parents). On an exception `out` holds a truncated archive.
    """
    ino = 1
    for entry in entries:
        out.write(encode_entry(entry, ino))
        ino += 1
    out.write(encode_entry(Entry(TRAILER, 0), 0))
