"""Reading a VHD file (Microsoft's Virtual Hard Disk, what xapi's `format=vhd` imports).

A decoder of our own, written from the format's specification (the footer, the dynamic
disk header, the block allocation table, per-block sector bitmaps), so that the agent's
`qemu-img convert -O vpc` output is read by something other than qemu. Fixed and dynamic
disks are read; differencing disks (a parent elsewhere) are refused, as an import has
no parent to name.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

SECTOR = 512
FOOTER = 512
_COOKIE, _DYN_COOKIE = b"conectix", b"cxsparse"
_FIXED, _DYNAMIC = 2, 3
_UNALLOCATED = 0xFFFFFFFF


class VhdError(ValueError):
    """The bytes are not a VHD this reader accepts; the message says why."""


def _checksum(block: bytes, at: int) -> int:
    """The one's complement of the byte sum of `block`, its checksum field as zeros."""
    zeroed = block[:at] + b"\0\0\0\0" + block[at + 4:]
    return ~sum(zeroed) & 0xFFFFFFFF


def _footer(f: BinaryIO, length: int) -> tuple[int, int, int]:
    """(disk type, current size, data offset) from the footer at the end of the file."""
    if length < FOOTER:
        raise VhdError(f"{length} bytes: shorter than a VHD footer")
    f.seek(length - FOOTER)
    footer = f.read(FOOTER)
    if footer[:8] != _COOKIE:
        raise VhdError("no VHD footer (cookie 'conectix') at the end of the file")
    (stored,) = struct.unpack(">I", footer[64:68])
    if stored != _checksum(footer, 64):
        raise VhdError("the VHD footer's checksum is wrong")
    (offset,) = struct.unpack(">Q", footer[16:24])
    (size,) = struct.unpack(">Q", footer[48:56])
    (kind,) = struct.unpack(">I", footer[60:64])
    return kind, size, offset


def _dynamic(f: BinaryIO, offset: int, size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, data) of every allocated sector run of a dynamic disk."""
    f.seek(offset)
    header = f.read(1024)
    if header[:8] != _DYN_COOKIE:
        raise VhdError("no dynamic disk header (cookie 'cxsparse') where the footer says")
    (stored,) = struct.unpack(">I", header[36:40])
    if stored != _checksum(header, 36):
        raise VhdError("the VHD dynamic header's checksum is wrong")
    table, entries, block = struct.unpack(">QII", header[16:24] + header[28:36])
    if block % SECTOR or not block:
        raise VhdError(f"block size {block} is not a whole number of sectors")
    if entries * block < size:
        raise VhdError(f"{entries} blocks of {block} bytes cannot hold {size} bytes")
    f.seek(table)
    bat = struct.unpack(f">{entries}I", f.read(4 * entries))
    sectors = block // SECTOR
    bitmap_bytes = -(-sectors // (8 * SECTOR)) * SECTOR  # whole sectors
    for index, sector in enumerate(bat):
        if sector == _UNALLOCATED:
            continue
        f.seek(sector * SECTOR)
        bitmap = f.read(bitmap_bytes)
        data = f.read(block)
        if len(data) != block:
            raise VhdError(f"block {index} runs past the end of the file")
        for first, end in _runs(bitmap, sectors):
            start = index * block + first * SECTOR
            stop = min(index * block + end * SECTOR, size)
            if start < stop:
                yield start, data[first * SECTOR:first * SECTOR + stop - start]


def _runs(bitmap: bytes, sectors: int) -> Iterator[tuple[int, int]]:
    """[first, end) sector ranges whose bits are set in a block's bitmap."""
    first = None
    for i in range(sectors + 1):
        present = i < sectors and bool(bitmap[i // 8] & (0x80 >> (i % 8)))
        if present and first is None:
            first = i
        elif not present and first is not None:
            yield first, i
            first = None


def decode(src: Path, dst: Path) -> int:
    """Write the disk that VHD file `src` holds into the existing file `dst` (sectors the
    VHD leaves unallocated are not written: `dst` reads zeros there if it did before);
    returns the disk's size. VhdError when `src` is no fixed or dynamic VHD."""
    length = src.stat().st_size
    with src.open("rb") as f, dst.open("r+b") as out:
        kind, size, offset = _footer(f, length)
        if kind == _FIXED:
            if length - FOOTER != size:
                raise VhdError(f"a fixed VHD of {size} bytes has {length - FOOTER} of data")
            f.seek(0)
            for start in range(0, size, 1024 * 1024):
                out.seek(start)
                out.write(f.read(min(1024 * 1024, size - start)))
        elif kind == _DYNAMIC:
            for start, data in _dynamic(f, offset, size):
                out.seek(start)
                out.write(data)
        else:
            raise VhdError(f"VHD disk type {kind}: only fixed (2) and dynamic (3) are read")
    return size


def virtual_size(src: Path) -> int:
    """The disk size a VHD file's footer declares; VhdError when it is no VHD."""
    with src.open("rb") as f:
        return _footer(f, src.stat().st_size)[1]
