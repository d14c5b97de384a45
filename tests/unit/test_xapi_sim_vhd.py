"""The simulator's VHD reader (tests/xapi_sim/vhd.py) on VHDs built here byte by byte
from the format's specification: allocated sectors land where the BAT and the sector
bitmaps put them, the rest reads as zeros, damaged headers are refused."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.xapi_sim import vhd

BLOCK = 8 * 512  # a small block: 8 sectors, one bitmap sector


def _checksummed(block: bytearray, at: int) -> bytes:
    block[at:at + 4] = struct.pack(">I", ~sum(block) & 0xFFFFFFFF)
    return bytes(block)


def _footer(size: int, kind: int, data_offset: int) -> bytes:
    f = bytearray(512)
    f[0:8] = b"conectix"
    f[8:24] = struct.pack(">IIQ", 2, 0x00010000, data_offset)
    f[28:32] = b"test"
    f[40:56] = struct.pack(">QQ", size, size)
    f[60:64] = struct.pack(">I", kind)
    return _checksummed(f, 64)


def _dynamic(blocks: list[tuple[int, bytes] | None]) -> tuple[bytes, bytes]:
    """(a dynamic VHD whose block i holds (bitmap byte, data) or nothing, the disk)."""
    size = len(blocks) * BLOCK
    header = bytearray(1024)
    header[0:8] = b"cxsparse"
    header[8:36] = struct.pack(">QQIII", 2**64 - 1, 1536, 0x00010000, len(blocks), BLOCK)
    bat_bytes = -(-4 * len(blocks) // 512) * 512
    bat, body, disk = [], b"", bytearray(size)
    offset = 1536 + bat_bytes
    for i, block in enumerate(blocks):
        if block is None:
            bat.append(0xFFFFFFFF)
            continue
        bits, data = block
        bat.append((offset + len(body)) // 512)
        body += bytes([bits]) + bytes(511) + data
        for s in range(8):
            if bits & (0x80 >> s):
                disk[i * BLOCK + s * 512:i * BLOCK + (s + 1) * 512] = data[s * 512:(s + 1) * 512]
    table = struct.pack(f">{len(bat)}I", *bat).ljust(bat_bytes, b"\xff")
    footer = _footer(size, 3, 512)
    return footer + _checksummed(header, 36) + table + body + footer, bytes(disk)


def _decoded(tmp_path: Path, image: bytes, size: int) -> bytes:
    src, dst = tmp_path / "disk.vhd", tmp_path / "disk.raw"
    src.write_bytes(image)
    dst.write_bytes(bytes(size))
    assert vhd.decode(src, dst) == size
    return dst.read_bytes()


def test_a_dynamic_vhd_is_read_through_its_bat_and_bitmaps(tmp_path: Path) -> None:
    data = bytes(range(256)) * (BLOCK // 256)
    image, disk = _dynamic([(0b10100000, data), None, (0xFF, data[::-1])])
    (tmp_path / "probe.vhd").write_bytes(image)
    assert vhd.virtual_size(tmp_path / "probe.vhd") == 3 * BLOCK
    decoded = _decoded(tmp_path, image, 3 * BLOCK)
    assert decoded == disk
    assert decoded[512:1024] == bytes(512)  # a sector its bitmap leaves out reads zeros


def test_a_fixed_vhd_is_its_data_and_a_footer(tmp_path: Path) -> None:
    data = bytes(range(256)) * 8
    assert _decoded(tmp_path, data + _footer(len(data), 2, 2**64 - 1), len(data)) == data


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: b[:-512] + b"x" * 512, "no VHD footer"),
    (lambda b: b[:-20] + b"\x01" + b[-19:], "footer's checksum is wrong"),
    (lambda b: b[:520] + b"\x00" + b[521:], "dynamic header's checksum is wrong"),
])
def test_damaged_vhds_are_refused(tmp_path: Path, damage: Callable[[bytes], bytes],
                                  message: str) -> None:
    image, _ = _dynamic([(0xFF, bytes(BLOCK))])
    broken = damage(image)
    with pytest.raises(vhd.VhdError, match=message):
        _decoded(tmp_path, broken, BLOCK)
