"""The disk image check against real files made by the real qemu-img."""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from images.diskcheck import (
    DiskCheckUnavailable,
    DiskFacts,
    DiskProbe,
    DiskRefused,
    check_file,
    confirm_with_qemu_img,
)

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
SECRET = "--object", "secret,id=s0,data=not-a-real-key"


def qemu_img(*args: str) -> None:
    out = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def host_file(tmp_path: Path) -> Path:
    """A file of the node a hostile image would like a guest to read."""
    path = tmp_path / "host-secret"
    path.write_bytes(b"root:secret\n".ljust(MIB, b"\0"))
    return path


def made(tmp_path: Path, fmt: str, *opts: str) -> Path:
    path = tmp_path / f"made.{fmt}"
    qemu_img("create", "-q", "-f", fmt, *opts, str(path), "1M")
    return path


def with_data_file(tmp_path: Path) -> Path:
    return made(tmp_path, "qcow2", "-o", f"data_file={host_file(tmp_path)},data_file_raw=on")


def with_backing_file(tmp_path: Path) -> Path:
    return made(tmp_path, "qcow2", "-F", "raw", "-b", str(host_file(tmp_path)))


def luks_encrypted(tmp_path: Path) -> Path:
    """A qcow2 whose header says LUKS encryption (crypt_method 2), as an uploader can write.

    qemu-img cannot make one reliably: it times its PBKDF on the thread CPU clock and, on a
    loaded machine, gives up with "Unable to get accurate CPU usage". The AES image qemu-img
    makes without timing anything is rewritten to name LUKS instead."""
    path = aes_encrypted(tmp_path)
    with path.open("r+b") as f:
        f.seek(32)  # QCowHeader.crypt_method
        assert f.read(4) == struct.pack(">I", 1)
        f.seek(32)
        f.write(struct.pack(">I", 2))
    return path


def aes_encrypted(tmp_path: Path) -> Path:
    return made(tmp_path, "qcow2", *SECRET, "-o", "encryption=on,encrypt.key-secret=s0")


def mbr_disk(tmp_path: Path) -> Path:
    """A raw disk with a DOS partition table: one Linux partition from sector 2048."""
    data = bytearray(4 * MIB)
    data[446:462] = struct.pack("<B3BB3BII", 0x80, 0, 0x21, 0, 0x83, 0, 0, 0, 2048, 6144)
    data[510:512] = b"\x55\xaa"
    path = tmp_path / "mbr.raw"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make, reason", [
    (with_data_file, "names an external data file"),
    (with_backing_file, "has a backing file"),
    (luks_encrypted, "encrypted"),
    (aes_encrypted, "encrypted"),
])
def test_qcow2_reaching_outside_itself_is_refused(
        tmp_path: Path, make: Callable[[Path], Path], reason: str) -> None:
    path = make(tmp_path)

    with pytest.raises(DiskRefused, match=reason):
        check_file(path, "qcow2")
    with pytest.raises(DiskRefused, match="disk_format is 'raw' but the file is a qcow2 image"):
        check_file(path, "raw")


def test_data_file_is_refused_from_the_header_before_qemu_img_opens_it(tmp_path: Path) -> None:
    path = with_data_file(tmp_path)
    (tmp_path / "host-secret").unlink()  # qemu-img would fail on the missing data file

    with pytest.raises(DiskRefused, match="names an external data file"):
        check_file(path, "qcow2")


@pytest.mark.parametrize("make", [with_data_file, with_backing_file])
def test_qemu_img_second_opinion_sees_references_too(
        tmp_path: Path, make: Callable[[Path], Path]) -> None:
    path = make(tmp_path)

    with pytest.raises(DiskRefused, match="reference to another file"):
        confirm_with_qemu_img(path, DiskFacts("qcow2", MIB))


@pytest.mark.parametrize("fmt, name", [("vmdk", "vmdk"), ("vpc", "vhd"), ("vhdx", "vhdx"),
                                       ("vdi", "vdi"), ("qed", "qed")])
@pytest.mark.parametrize("claimed", ["raw", "qcow2"])
def test_other_formats_are_refused_whatever_they_claim(
        tmp_path: Path, fmt: str, name: str, claimed: str) -> None:
    path = made(tmp_path, fmt)

    with pytest.raises(DiskRefused, match=f"disk_format is '{claimed}' but the file is a {name}"):
        check_file(path, claimed)


def luks_container(tmp_path: Path) -> Path:
    """A LUKS2 container made by cryptsetup, its key derivation fixed rather than timed (the
    timing qemu-img does fails on a loaded machine)."""
    path = tmp_path / "made.luks"
    path.write_bytes(bytes(4 * MIB))
    subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
                    "--pbkdf-force-iterations", "1000", "--key-file", "-", str(path)],
                   input=b"not-a-real-key", capture_output=True, check=True)
    return path


def test_luks_container_claimed_as_raw_is_refused(tmp_path: Path) -> None:
    path = luks_container(tmp_path)

    with pytest.raises(DiskRefused, match="the file is a luks image"):
        check_file(path, "raw")


def test_standalone_qcow2_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ok.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "64M")

    assert check_file(path, "qcow2") == DiskFacts("qcow2", 64 * MIB)


def test_raw_disks_are_accepted(tmp_path: Path) -> None:
    blank = tmp_path / "blank.raw"
    blank.write_bytes(bytes(MIB))

    assert check_file(blank, "raw") == DiskFacts("raw", MIB)
    assert check_file(mbr_disk(tmp_path), "raw") == DiskFacts("raw", 4 * MIB)


def test_raw_claimed_as_qcow2_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DiskRefused, match="disk_format is 'qcow2' but the file is raw"):
        check_file(mbr_disk(tmp_path), "qcow2")


@pytest.mark.parametrize("size, message", [
    (0, "the image is empty"),
    (1000, "whole number of 512-byte sectors; this one is 1000 bytes"),
    (MIB + 1, "whole number of 512-byte sectors"),
    (512, "at least 1048576 bytes"),
])
def test_raw_that_is_no_disk_is_refused(tmp_path: Path, size: int, message: str) -> None:
    path = tmp_path / "file.raw"
    path.write_bytes(b"#!/bin/sh\n".ljust(size, b" ")[:size])

    with pytest.raises(DiskRefused, match=message):
        check_file(path, "raw")


def test_unknown_format_is_refused() -> None:
    with pytest.raises(DiskRefused, match="only raw and qcow2"):
        DiskProbe("vmdk")


def test_a_stream_in_odd_chunks_gets_the_file_verdict(tmp_path: Path) -> None:
    data = with_data_file(tmp_path).read_bytes()
    probe = DiskProbe("qcow2")
    for i in range(0, len(data), 7):
        probe.feed(data[i:i + 7])

    with pytest.raises(DiskRefused, match="names an external data file"):
        probe.verdict(len(data))


def test_a_missing_qemu_img_is_no_verdict_on_the_image(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """prlimit runs but finds no qemu-img: the check could not run (retry, 503), the
    image is not refused as bad."""
    image = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "1M")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prlimit = subprocess.run(["sh", "-c", "command -v prlimit"], capture_output=True,
                             text=True, check=True).stdout.strip()
    (bindir / "prlimit").symlink_to(prlimit)
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(DiskCheckUnavailable, match="qemu-img could not be run"):
        confirm_with_qemu_img(image, check_file(image, "qcow2"))
