"""Assembling the test guest's disk: MBR + one bootable FAT partition with SYSLINUX.

Everything happens in ordinary files (no loop devices, no mounts): the FAT
filesystem is made in a file of its own with mkfs.fat, filled with mtools,
made bootable with the mtools-based `syslinux --install`, then copied into
the disk image behind an MBR written here.
"""

from __future__ import annotations

import os
import pathlib
import struct
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

SECTOR = 512
MIB = 1024 * 1024
PARTITION_START_LBA = 2048  # 1 MiB, the usual alignment
PARTITION_TYPE_FAT16_LBA = 0x0E
DISK_SIGNATURE = 0x56415542  # "VAUB"
FAT_VOLUME_ID = "56415542"
FAT_LABEL = "VAUBANTG"
BOOT_CODE_SIZE = 440
MIN_DISK_MIB = 32

KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.gz"
KERNEL_CMDLINE = "console=ttyS0,115200 quiet"


@dataclass(frozen=True)
class Partition:
    """One MBR partition: first sector, sector count, type byte, active flag."""

    start_lba: int
    sectors: int
    type_id: int
    bootable: bool


def syslinux_cfg(cmdline: str = KERNEL_CMDLINE) -> str:
    """Return the syslinux.cfg that boots the kernel at once, talking on the serial port."""
    return (
        "SERIAL 0 115200\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "NOESCAPE 1\n"
        "DEFAULT testguest\n"
        "LABEL testguest\n"
        f"  LINUX /{KERNEL_NAME}\n"
        f"  INITRD /{INITRD_NAME}\n"
        f"  APPEND {cmdline}\n"
    )


def lba_to_chs(lba: int, heads: int = 255, sectors_per_track: int = 63) -> bytes:
    """Return the 3-byte MBR CHS encoding of `lba`, saturating at cylinder 1023."""
    cylinder, rest = divmod(lba, heads * sectors_per_track)
    head, sector0 = divmod(rest, sectors_per_track)
    if cylinder > 1023:
        cylinder, head, sector0 = 1023, heads - 1, sectors_per_track - 1
    sector = sector0 + 1
    return bytes((head, ((cylinder >> 2) & 0xC0) | sector, cylinder & 0xFF))


def partition_entry(part: Partition) -> bytes:
    """Return the 16-byte MBR partition-table entry for `part`."""
    if part.start_lba <= 0 or part.sectors <= 0:
        raise ValueError(f"bad partition {part}")
    return (
        bytes((0x80 if part.bootable else 0x00,))
        + lba_to_chs(part.start_lba)
        + bytes((part.type_id,))
        + lba_to_chs(part.start_lba + part.sectors - 1)
        + struct.pack("<II", part.start_lba, part.sectors)
    )


def build_mbr(boot_code: bytes, partitions: list[Partition]) -> bytes:
    """Return a 512-byte MBR: `boot_code` (<= 440 bytes), disk signature, table, 55AA."""
    if len(boot_code) > BOOT_CODE_SIZE:
        raise ValueError(f"boot code is {len(boot_code)} bytes, more than {BOOT_CODE_SIZE}")
    if len(partitions) > 4:
        raise ValueError("an MBR holds at most 4 partitions")
    table = b"".join(partition_entry(p) for p in partitions).ljust(64, b"\0")
    mbr = (
        boot_code.ljust(BOOT_CODE_SIZE, b"\0")
        + struct.pack("<I", DISK_SIGNATURE)
        + b"\0\0"
        + table
        + b"\x55\xaa"
    )
    assert len(mbr) == SECTOR
    return mbr


def disk_size_mib(payload_bytes: int) -> int:
    """Return the disk size (MiB) for `payload_bytes` of files: at least MIN_DISK_MIB.

    Leaves 1 MiB before the partition and at least 25% + 2 MiB of room for
    FAT metadata and SYSLINUX.
    """
    needed = 1 + (payload_bytes * 5 // 4 + 2 * MIB + MIB - 1) // MIB
    return max(MIN_DISK_MIB, needed)


def _mtools_env() -> dict[str, str]:
    """Return the environment for mtools/syslinux: no drive-geometry sanity checks."""
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def make_fat_partition(
    path: pathlib.Path, size_mib: int, files: Mapping[str, pathlib.Path], cfg: str
) -> None:
    """Create at `path` a FAT16 filesystem of `size_mib` MiB holding `files` and a
    `syslinux.cfg` with `cfg`, with SYSLINUX installed in it.

    `files` maps names in the filesystem's root to host files. Raises
    subprocess.CalledProcessError if a tool fails; `path` is then incomplete.
    """
    path.unlink(missing_ok=True)
    subprocess.run(
        ["mkfs.fat", "-C", "-F", "16", "-n", FAT_LABEL, "-i", FAT_VOLUME_ID,
         "-h", str(PARTITION_START_LBA), str(path), str(size_mib * 1024)],
        check=True, capture_output=True,
    )
    cfg_file = path.with_name(path.name + ".syslinux.cfg")
    cfg_file.write_text(cfg)
    try:
        sources = {**files, "syslinux.cfg": cfg_file}
        for name, src in sources.items():
            subprocess.run(["mcopy", "-o", "-i", str(path), str(src), f"::/{name}"],
                           check=True, capture_output=True, env=_mtools_env())
    finally:
        cfg_file.unlink(missing_ok=True)
    subprocess.run(["syslinux", "--install", str(path)],
                   check=True, capture_output=True, env=_mtools_env())


def copy_sparse(src: BinaryIO, dst: BinaryIO, chunk: int = 64 * 1024) -> None:
    """Copy `src` to `dst` from their current positions, seeking over all-zero chunks.

    The caller must extend `dst` (truncate) past a trailing hole.
    """
    zero = bytes(chunk)
    while block := src.read(chunk):
        if block == zero[: len(block)]:
            dst.seek(len(block), os.SEEK_CUR)
        else:
            dst.write(block)


def assemble_disk(dest: pathlib.Path, mbr_code: bytes, fat_image: pathlib.Path,
                  size_mib: int) -> None:
    """Write at `dest` a raw disk of `size_mib` MiB: MBR with `mbr_code`, then
    `fat_image` as its one active FAT16 partition starting at 1 MiB.

    `dest` is overwritten; on an exception it is incomplete (callers write a
    temporary file and rename it).
    """
    total_sectors = size_mib * MIB // SECTOR
    part_sectors = fat_image.stat().st_size // SECTOR
    if PARTITION_START_LBA + part_sectors > total_sectors:
        raise ValueError(f"partition of {part_sectors} sectors does not fit in {size_mib} MiB")
    part = Partition(PARTITION_START_LBA, part_sectors, PARTITION_TYPE_FAT16_LBA, True)
    with dest.open("wb") as out, fat_image.open("rb") as src:
        out.write(build_mbr(mbr_code, [part]))
        out.seek(PARTITION_START_LBA * SECTOR)
        copy_sparse(src, out)
        out.truncate(total_sectors * SECTOR)
        out.flush()
        os.fsync(out.fileno())
