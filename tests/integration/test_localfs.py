"""LocalfsDriver against the real filesystem and the real qemu-img."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from agent.drivers.storage.base import ImageInUse, StorageError
from agent.drivers.storage.localfs import GIB, LocalfsDriver
from agent.protocol import ImageRef

pytestmark = pytest.mark.integration

RAW_ID = "11111111-1111-4111-8111-111111111111"
QCOW_ID = "22222222-2222-4222-8222-222222222222"
MIB = 1024 * 1024
BLANK = bytes(MIB)  # the smallest raw image a region accepts


def ref(image_id: str, data: bytes, fmt: Literal["raw", "qcow2"] = "raw",
        sha256: str | None = None) -> ImageRef:
    return ImageRef(id=image_id, name="test", disk_format=fmt, size_bytes=len(data),
                    sha256=sha256 or hashlib.sha256(data).hexdigest())


def chunked(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def qemu_img_info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    info: dict[str, object] = json.loads(out)
    return info


def make_qcow2(tmp_path: Path, virtual: str, backing: Path | None = None,
               opts: tuple[str, ...] = ()) -> bytes:
    path = tmp_path / f"src-{virtual}.qcow2"
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", *opts]
    if backing is not None:
        argv += ["-F", "raw", "-b", str(backing)]
    subprocess.run([*argv, str(path), virtual], check=True)
    return path.read_bytes()


def host_file(tmp_path: Path) -> Path:
    """A file of the node that a hostile image would like a guest to read."""
    path = tmp_path / "host-file"
    path.write_bytes(b"host secret".ljust(MIB, b"\0"))
    return path


@pytest.fixture
def store(tmp_path: Path) -> LocalfsDriver:
    return LocalfsDriver(tmp_path / "store")


def leftovers(store: LocalfsDriver) -> list[str]:
    return sorted(p.name for p in store.images_dir.iterdir())


def test_layout_is_traversable_not_listable(store: LocalfsDriver) -> None:
    for d in (store.root, store.images_dir, store.disks_dir):
        assert d.stat().st_mode & 0o777 == 0o711


def test_import_streams_verifies_and_stores(store: LocalfsDriver) -> None:
    data = os.urandom(3 * 1024 * 1024 + 512)  # qemu-img rounds raw sizes up to 512 bytes

    store.import_image(ref(RAW_ID, data), chunked(data, 65536))

    assert store.has_image(RAW_ID)
    stored = store.images_dir / f"{RAW_ID}.raw"
    assert stored.read_bytes() == data
    assert stored.stat().st_mode & 0o777 == 0o444
    assert leftovers(store) == [f"{RAW_ID}.raw"]
    assert store.image_virtual_size(RAW_ID) == len(data)


def test_import_of_a_stored_image_reads_nothing(store: LocalfsDriver) -> None:
    data = BLANK
    store.import_image(ref(RAW_ID, data), [data])

    def exploding() -> Iterator[bytes]:
        raise AssertionError("stream read although the image is stored")
        yield b""

    store.import_image(ref(RAW_ID, data), exploding())


def test_checksum_mismatch_names_both_hashes_and_leaves_nothing(store: LocalfsDriver) -> None:
    data = b"good bytes" * 100
    wrong = "0" * 64

    with pytest.raises(StorageError) as exc:
        store.import_image(ref(RAW_ID, data, sha256=wrong), chunked(data, 7))

    assert wrong in str(exc.value)
    assert hashlib.sha256(data).hexdigest() in str(exc.value)
    assert not store.has_image(RAW_ID)
    assert leftovers(store) == []


def test_oversized_stream_is_cut_off_and_leaves_nothing(store: LocalfsDriver) -> None:
    declared = b"a" * 100
    image = ref(RAW_ID, declared)
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        while True:
            sent.append(1)
            assert len(sent) < 100, "the driver kept reading an oversized stream"
            yield b"a" * 64

    with pytest.raises(StorageError, match="larger than its declared 100 bytes"):
        store.import_image(image, endless())
    assert leftovers(store) == []


def test_stream_error_leaves_nothing(store: LocalfsDriver) -> None:
    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise ConnectionError("fetch interrupted")

    with pytest.raises(ConnectionError):
        store.import_image(ref(RAW_ID, b"partial and more"), broken())
    assert leftovers(store) == []


def test_qcow2_with_a_backing_file_is_refused(store: LocalfsDriver, tmp_path: Path) -> None:
    secret = tmp_path / "host-file"
    secret.write_bytes(b"s" * 4096)
    data = make_qcow2(tmp_path, "1M", backing=secret)

    with pytest.raises(StorageError, match="has a backing file"):
        store.import_image(ref(QCOW_ID, data, "qcow2"), [data])
    assert leftovers(store) == []


def test_qcow2_with_a_host_file_as_data_file_is_refused(store: LocalfsDriver,
                                                        tmp_path: Path) -> None:
    opts = ("-o", f"data_file={host_file(tmp_path)},data_file_raw=on")
    data = make_qcow2(tmp_path, "1M", opts=opts)

    with pytest.raises(StorageError, match="names an external data file"):
        store.import_image(ref(QCOW_ID, data, "qcow2"), chunked(data))
    assert leftovers(store) == []


def test_encrypted_qcow2_is_refused(store: LocalfsDriver, tmp_path: Path) -> None:
    data = make_qcow2(tmp_path, "1M", opts=(
        "--object", "secret,id=s0,data=not-a-real-key",
        "-o", "encryption=on,encrypt.key-secret=s0"))  # AES: no PBKDF timing to fail

    with pytest.raises(StorageError, match="it is encrypted"):
        store.import_image(ref(QCOW_ID, data, "qcow2"), chunked(data))
    assert leftovers(store) == []


def test_other_formats_declared_raw_are_refused(store: LocalfsDriver, tmp_path: Path) -> None:
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "1M"], check=True)
    qcow = make_qcow2(tmp_path, "1M")
    for data, fmt in ((vmdk.read_bytes(), "vmdk"), (qcow, "qcow2")):
        with pytest.raises(StorageError, match=f"disk_format is 'raw' but the file is a {fmt}"):
            store.import_image(ref(RAW_ID, data), [data])
    assert leftovers(store) == []


def test_raw_that_is_no_disk_is_refused(store: LocalfsDriver) -> None:
    data = b"#!/bin/sh\necho not a disk\n"

    with pytest.raises(StorageError, match="whole number of 512-byte sectors"):
        store.import_image(ref(RAW_ID, data), [data])
    assert leftovers(store) == []


def test_stored_image_is_checked_again_before_a_disk_is_made_of_it(
        store: LocalfsDriver, tmp_path: Path) -> None:
    data = make_qcow2(tmp_path, "1M")
    store.import_image(ref(QCOW_ID, data, "qcow2"), [data])
    stored = store.images_dir / f"{QCOW_ID}.qcow2"
    stored.chmod(0o644)  # as an older agent or a hand on the node could have left it
    stored.write_bytes(make_qcow2(tmp_path, "1M", backing=host_file(tmp_path)))

    with pytest.raises(StorageError, match="has a backing file"):
        store.create_root_disk("vm-g", QCOW_ID, None)
    assert not (store.disks_dir / "vm-g").exists()


def test_root_disk_is_an_overlay_of_the_image(store: LocalfsDriver, tmp_path: Path) -> None:
    data = make_qcow2(tmp_path, "64M")
    store.import_image(ref(QCOW_ID, data, "qcow2"), chunked(data))
    vm = "vm-a"

    disk = store.create_root_disk(vm, QCOW_ID, None)

    assert disk.target == "vda" and disk.format == "qcow2"
    assert disk.path == store.disks_dir / vm / "root.qcow2"
    assert store.vm_disk_exists(vm)
    info = qemu_img_info(disk.path)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 64 * 1024 * 1024
    assert info["full-backing-filename"] == str(store.images_dir / f"{QCOW_ID}.qcow2")
    assert info["backing-filename-format"] == "qcow2"


def test_root_disk_of_a_raw_image_grows_to_size(store: LocalfsDriver) -> None:
    data = b"\0" * 1024 * 1024
    store.import_image(ref(RAW_ID, data), [data])

    disk = store.create_root_disk("vm-b", RAW_ID, 2)

    info = qemu_img_info(disk.path)
    assert info["virtual-size"] == 2 * GIB
    assert info["backing-filename-format"] == "raw"


def test_root_disk_smaller_than_image_is_refused(store: LocalfsDriver, tmp_path: Path) -> None:
    data = make_qcow2(tmp_path, "2G")
    store.import_image(ref(QCOW_ID, data, "qcow2"), [data])

    with pytest.raises(StorageError, match="smaller than image"):
        store.create_root_disk("vm-c", QCOW_ID, 1)

    assert not store.vm_disk_exists("vm-c")
    assert not (store.disks_dir / "vm-c").exists()


def test_failed_create_leaves_nothing(store: LocalfsDriver) -> None:
    with pytest.raises(StorageError, match="not stored"):
        store.create_root_disk("vm-d", RAW_ID, None)
    assert list(store.disks_dir.iterdir()) == []


def test_second_root_disk_is_refused(store: LocalfsDriver) -> None:
    store.import_image(ref(RAW_ID, BLANK), [BLANK])
    store.create_root_disk("vm-e", RAW_ID, None)

    with pytest.raises(StorageError, match="already has a root disk"):
        store.create_root_disk("vm-e", RAW_ID, None)
    assert store.vm_disk_exists("vm-e")


def test_image_in_use_cannot_be_deleted(store: LocalfsDriver) -> None:
    data = BLANK
    store.import_image(ref(RAW_ID, data), [data])
    store.create_root_disk("vm-f", RAW_ID, None)

    with pytest.raises(ImageInUse, match="in use by the disks of VM\\(s\\) vm-f"):
        store.delete_image(RAW_ID)
    assert store.has_image(RAW_ID)

    store.delete_vm_disks("vm-f")
    assert not store.vm_disk_exists("vm-f")
    store.delete_vm_disks("vm-f")  # no-op
    store.delete_image(RAW_ID)
    assert not store.has_image(RAW_ID)
    store.delete_image(RAW_ID)  # no-op


def test_ids_cannot_escape_the_store(store: LocalfsDriver) -> None:
    for bad in ("../etc", "a/b", "", ".hidden"):
        with pytest.raises(StorageError, match="invalid"):
            store.vm_disk_exists(bad)
        with pytest.raises(StorageError, match="invalid"):
            store.has_image(bad)


def test_free_bytes_matches_statvfs(store: LocalfsDriver) -> None:
    st = os.statvfs(store.root)
    free = store.free_bytes()

    assert free > 0
    assert abs(free - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
