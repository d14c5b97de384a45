"""RbdDriver against a real Ceph cluster (the session's MiniCluster) and the real qemu-img.

Every RBD image a test makes carries the test's unique token in its name; teardown
removes every image with that token (clones first) and checks none is left.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import rbd

from agent.drivers.hypervisor.base import DiskSpec, RbdSource
from agent.drivers.registry import load_storage
from agent.drivers.storage.base import ImageInUse, StorageError
from agent.drivers.storage.rbd import images as rbd_images
from agent.drivers.storage.rbd.driver import RbdDriver
from agent.drivers.storage.rbd.images import remove_with_snapshots
from agent.drivers.storage.rbd.minicluster import ClusterInfo
from agent.drivers.storage.rbd.names import parse_mon_host
from agent.protocol import ImageRef

pytestmark = pytest.mark.integration

MIB = 1024**2
GIB = 1024**3
POOLS = ("vauban", "vauban-fast")


def ref(image_id: str, data: bytes, fmt: Literal["raw", "qcow2"] = "raw",
        sha256: str | None = None) -> ImageRef:
    return ImageRef(id=image_id, name="test", disk_format=fmt, size_bytes=len(data),
                    sha256=sha256 or hashlib.sha256(data).hexdigest())


def chunked(data: bytes, size: int = 100_000) -> Iterator[bytes]:
    """Odd-sized chunks, as a network stream gives them."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


def sample(size: int, zero_from: int, zero_to: int) -> bytes:
    """Random bytes with a hole of zeros in [zero_from, zero_to)."""
    data = bytearray(os.urandom(size))
    data[zero_from:zero_to] = bytes(zero_to - zero_from)
    return bytes(data)


def read_image(admin: Any, pool: str, name: str, length: int | None = None,
               snap: str | None = None) -> bytes:
    with admin.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name, snapshot=snap,
                                                   read_only=True) as img:
        return bytes(img.read(0, length if length is not None else img.size()))


def write_image(admin: Any, pool: str, name: str, data: bytes, offset: int = 0) -> None:
    with admin.open_ioctx(pool) as ioctx, rbd.Image(ioctx, name) as img:
        img.write(data, offset)
        img.flush()


def images_in(admin: Any, pool: str, token: str = "") -> list[str]:
    with admin.open_ioctx(pool) as ioctx:
        return sorted(n for n in rbd.RBD().list(ioctx) if token in n)


class Names:
    """Unique ids for one test; `cleanup` removes every image carrying its token."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(4)
        self.n = 0

    def __call__(self, kind: str) -> str:
        self.n += 1
        return f"t{self.token}-{kind}{self.n}"

    def cleanup(self, admin: Any) -> list[str]:
        """Remove this test's images, clones before parents; returns what is left."""
        for _ in range(5):
            left = [(p, n) for p in POOLS for n in images_in(admin, p, self.token)]
            if not left:
                return []
            for pool, name in left:
                with admin.open_ioctx(pool) as ioctx:
                    try:
                        remove_with_snapshots(ioctx, name)
                    except rbd.Error:
                        pass  # a parent whose clones go in this round; next round
        return [f"{p}/{n}" for p in POOLS for n in images_in(admin, p, self.token)]


@pytest.fixture
def ids(ceph_admin: Any) -> Iterator[Names]:
    names = Names()
    yield names
    assert names.cleanup(ceph_admin) == []


def make_driver(info: ClusterInfo, scratch: Path, **kw: Any) -> RbdDriver:
    args: dict[str, Any] = dict(pool="vauban", user=info.client, key=info.key,
                                mon_host=info.mon_host, secret_usage="vauban-ceph",
                                volume_pools=("vauban", "vauban-fast"), scratch_dir=scratch)
    args.update(kw)
    return RbdDriver(**args)


@pytest.fixture
def driver(ceph_cluster: ClusterInfo, tmp_path: Path) -> Iterator[RbdDriver]:
    d = make_driver(ceph_cluster, tmp_path / "scratch")
    yield d
    d.close()


@pytest.fixture
def stored_image(driver: RbdDriver, ids: Names) -> tuple[str, bytes]:
    """A 6 MiB raw image in the pool: (id, content)."""
    image_id = ids("img")
    data = sample(6 * MIB, MIB, 3 * MIB)
    driver.import_image(ref(image_id, data), chunked(data))
    return image_id, data


# --- images ---------------------------------------------------------------------------


def test_registry_builds_the_driver(ceph_cluster: ClusterInfo, tmp_path: Path) -> None:
    d = load_storage("rbd", pool="vauban", user=ceph_cluster.client, key=ceph_cluster.key,
                     mon_host=ceph_cluster.mon_host, secret_usage="u", scratch_dir=tmp_path)
    assert isinstance(d, RbdDriver)
    info = d.info()
    assert (info.name, info.remote, info.copy_on_write, info.volumes) == ("rbd", True, True, True)
    assert d.free_bytes() > 0
    d.close()


def test_raw_import_is_sparse_and_reads_back(driver: RbdDriver, ceph_admin: Any,
                                             ids: Names) -> None:
    image_id = ids("img")
    data = sample(12 * MIB, 2 * MIB, 10 * MIB)  # zeros cover the object [4 MiB, 8 MiB)
    driver.import_image(ref(image_id, data), chunked(data))

    assert driver.has_image(image_id)
    assert driver.image_virtual_size(image_id) == len(data)
    assert read_image(ceph_admin, "vauban", f"img-{image_id}") == data
    with ceph_admin.open_ioctx("vauban") as ioctx, \
            rbd.Image(ioctx, f"img-{image_id}", read_only=True) as img:
        assert img.is_protected_snap("base")
        extents: list[tuple[int, int]] = []
        img.diff_iterate(0, img.size(), None,
                         lambda off, length, exists: exists and extents.append((off, length)))
    assert extents and not any(off < 8 * MIB and off + n > 4 * MIB for off, n in extents), \
        f"zeros were written: {extents}"
    assert images_in(ceph_admin, "vauban", ".tmp-") == []


def test_qcow2_import_converts_into_rbd(driver: RbdDriver, ceph_admin: Any, ids: Names,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       ceph_cluster: ClusterInfo) -> None:
    raw = sample(5 * MIB + 512, MIB, 2 * MIB)
    (tmp_path / "src.raw").write_bytes(raw)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(tmp_path / "src.raw"),
                    str(tmp_path / "src.qcow2")], check=True)
    qcow = (tmp_path / "src.qcow2").read_bytes()
    argvs: list[list[str]] = []
    real_run = subprocess.run

    def spy(argv: list[str], **kw: Any) -> Any:  # the real qemu-img runs; argv is recorded
        argvs.append(list(argv))
        return real_run(argv, **kw)

    monkeypatch.setattr(rbd_images.subprocess, "run", spy)
    image_id = ids("img")
    driver.import_image(ref(image_id, qcow, "qcow2"), chunked(qcow))

    assert driver.has_image(image_id)
    size = driver.image_virtual_size(image_id)
    assert size >= len(raw)  # qemu-img rounds a raw source up to whole sectors
    assert read_image(ceph_admin, "vauban", f"img-{image_id}", len(raw)) == raw
    assert any(a[:2] == ["qemu-img", "convert"] for a in argvs)
    assert not any(ceph_cluster.key in " ".join(a) for a in argvs), "key on a command line"
    assert_key_in_no_file(driver.scratch_dir, ceph_cluster.key)
    assert list(driver.scratch_dir.iterdir()) == []  # the spooled qcow2 is gone


def assert_key_in_no_file(root: Path, key: str) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"key found in {path}"


def test_import_of_a_stored_image_reads_nothing(driver: RbdDriver,
                                                stored_image: tuple[str, bytes]) -> None:
    image_id, data = stored_image

    def exploding() -> Iterator[bytes]:
        raise AssertionError("stream read")
        yield b""

    driver.import_image(ref(image_id, data), exploding())
    assert driver.has_image(image_id)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_checksum_mismatch_leaves_nothing(driver: RbdDriver, ceph_admin: Any, ids: Names,
                                          tmp_path: Path, fmt: Literal["raw", "qcow2"]) -> None:
    data = os.urandom(2 * MIB)
    if fmt == "qcow2":
        (tmp_path / "s.raw").write_bytes(data)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                        str(tmp_path / "s.raw"), str(tmp_path / "s.qcow2")], check=True)
        data = (tmp_path / "s.qcow2").read_bytes()
    image_id = ids("img")
    with pytest.raises(StorageError, match="checksum mismatch"):
        driver.import_image(ref(image_id, data, fmt, sha256="0" * 64), chunked(data))
    assert not driver.has_image(image_id)
    assert images_in(ceph_admin, "vauban", ids.token) == []
    assert not driver.scratch_dir.exists() or list(driver.scratch_dir.iterdir()) == []


def test_oversized_stream_and_backing_file_are_refused(driver: RbdDriver, ceph_admin: Any,
                                                      ids: Names, tmp_path: Path) -> None:
    data = os.urandom(MIB)
    image_id = ids("img")
    with pytest.raises(StorageError, match="larger than its declared"):
        driver.import_image(ref(image_id, data[:1000]), chunked(data))
    base = tmp_path / "base.raw"
    base.write_bytes(data)
    overlay = tmp_path / "o.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base),
                    str(overlay)], check=True)
    qcow = overlay.read_bytes()
    with pytest.raises(StorageError, match="backing file"):
        driver.import_image(ref(image_id, qcow, "qcow2"), chunked(qcow))
    assert images_in(ceph_admin, "vauban", ids.token) == []


def test_losing_the_import_race_keeps_the_winner(driver: RbdDriver, ceph_admin: Any,
                                                 ids: Names,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    image_id = ids("img")
    data = os.urandom(MIB)
    # Another node finishes first: it is seen only after our has_image check.
    monkeypatch.setattr(driver, "has_image", lambda _id: False)
    driver.import_image(ref(image_id, data), chunked(data))
    driver.import_image(ref(image_id, data), chunked(data))
    assert images_in(ceph_admin, "vauban", ids.token) == [f"img-{image_id}"]


def test_qcow2_with_a_host_file_as_data_file_is_refused(driver: RbdDriver, ceph_admin: Any,
                                                        ids: Names, tmp_path: Path) -> None:
    host_file = tmp_path / "host-file"
    host_file.write_bytes(b"host secret".ljust(MIB, b"\0"))
    path = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"data_file={host_file},data_file_raw=on", str(path), "1M"], check=True)
    qcow = path.read_bytes()

    with pytest.raises(StorageError, match="names an external data file"):
        driver.import_image(ref(ids("img"), qcow, "qcow2"), chunked(qcow))
    assert images_in(ceph_admin, "vauban", ids.token) == []
    assert list(driver.scratch_dir.iterdir()) == []


def test_other_format_streamed_as_raw_is_refused(driver: RbdDriver, ceph_admin: Any,
                                                 ids: Names, tmp_path: Path) -> None:
    path = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(path), "1M"], check=True)
    vmdk = path.read_bytes()

    with pytest.raises(StorageError, match="disk_format is 'raw' but the file is a vmdk"):
        driver.import_image(ref(ids("img"), vmdk), chunked(vmdk))
    assert images_in(ceph_admin, "vauban", ids.token) == []


def leave_temp_image(admin: Any, image_id: str, protected_base: bool) -> str:
    """A temporary image as an import that crashed leaves it (closed, maybe snapshotted)."""
    name = f"img-{image_id}.tmp-{secrets.token_hex(4)}"
    with admin.open_ioctx("vauban") as ioctx:
        rbd.RBD().create(ioctx, name, MIB)
        if protected_base:
            with rbd.Image(ioctx, name) as img:
                img.create_snap("base")
                img.protect_snap("base")
    return name


def test_stale_temporary_images_are_swept(ceph_cluster: ClusterInfo, ceph_admin: Any,
                                          ids: Names, tmp_path: Path,
                                          stored_image: tuple[str, bytes]) -> None:
    crashed = [leave_temp_image(ceph_admin, ids("img"), protected_base=p) for p in (False, True)]
    elsewhere = leave_temp_image(ceph_admin, ids("img"), protected_base=False)
    patient = make_driver(ceph_cluster, tmp_path / "s1")  # the default: 10 minutes
    eager = make_driver(ceph_cluster, tmp_path / "s2", stale_import_after_s=0)
    try:
        assert patient.sweep_leftovers() == []  # made a moment ago: maybe an import's
        with ceph_admin.open_ioctx("vauban") as ioctx, rbd.Image(ioctx, elsewhere):
            # held open, as another node's import in flight holds it
            assert sorted(eager.sweep_leftovers()) == sorted(crashed)
    finally:
        patient.close()
        eager.close()
    assert images_in(ceph_admin, "vauban", ids.token) == sorted(
        [f"img-{stored_image[0]}", elsewhere])


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_sweep_leaves_an_import_in_flight_here_alone(
        ceph_cluster: ClusterInfo, ceph_admin: Any, ids: Names, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, fmt: Literal["raw", "qcow2"]) -> None:
    driver = make_driver(ceph_cluster, tmp_path / "scratch", stale_import_after_s=0)
    swept: list[list[str]] = []
    data = os.urandom(2 * MIB)
    if fmt == "qcow2":
        (tmp_path / "s.raw").write_bytes(data)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                        str(tmp_path / "s.raw"), str(tmp_path / "s.qcow2")], check=True)
        data = (tmp_path / "s.qcow2").read_bytes()
        real_convert = rbd_images._convert

        def sweep_then_convert(*args: Any) -> None:  # the temporary image exists, closed
            swept.append(driver.sweep_leftovers())
            real_convert(*args)
        monkeypatch.setattr(rbd_images, "_convert", sweep_then_convert)
        stream = chunked(data)
    else:
        def sweeping_stream() -> Iterator[bytes]:  # the temporary image is being written
            for i, chunk in enumerate(chunked(data)):
                if i == 5:
                    swept.append(driver.sweep_leftovers())
                yield chunk
        stream = sweeping_stream()
    image_id = ids("img")
    try:
        driver.import_image(ref(image_id, data, fmt), stream)
        assert driver.has_image(image_id)
    finally:
        driver.close()
    assert swept == [[]]
    assert images_in(ceph_admin, "vauban", ids.token) == [f"img-{image_id}"]


# --- root disks -----------------------------------------------------------------------


def test_root_disk_is_a_clone_of_the_image(driver: RbdDriver, ceph_admin: Any, ids: Names,
                                           stored_image: tuple[str, bytes],
                                           ceph_cluster: ClusterInfo) -> None:
    image_id, data = stored_image
    vm_id = ids("vm")
    disk = driver.create_root_disk(vm_id, image_id, None)

    assert disk == DiskSpec(source=RbdSource(pool="vauban", image=f"vm-{vm_id}-root",
                                             monitors=parse_mon_host(ceph_cluster.mon_host),
                                             user="vauban", secret_usage="vauban-ceph"),
                            format="raw", target="vda")
    assert driver.vm_disk_exists(vm_id)
    with ceph_admin.open_ioctx("vauban") as ioctx, \
            rbd.Image(ioctx, f"vm-{vm_id}-root", read_only=True) as img:
        assert img.parent_info() == ("vauban", f"img-{image_id}", "base")
        assert img.size() == len(data)
    assert read_image(ceph_admin, "vauban", f"vm-{vm_id}-root") == data

    with pytest.raises(StorageError, match="already has a root disk"):
        driver.create_root_disk(vm_id, image_id, None)
    driver.delete_vm_disks(vm_id)
    driver.delete_vm_disks(vm_id)  # a no-op the second time
    assert not driver.vm_disk_exists(vm_id)


def test_root_disk_sizes(driver: RbdDriver, ceph_admin: Any, ids: Names, tmp_path: Path) -> None:
    image_id = ids("img")
    data = os.urandom(MIB)
    (tmp_path / "a.raw").write_bytes(data)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(tmp_path / "a.raw"),
                    str(tmp_path / "a.qcow2")], check=True)
    subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2", str(tmp_path / "a.qcow2"), "2G"],
                   check=True)
    qcow = (tmp_path / "a.qcow2").read_bytes()
    driver.import_image(ref(image_id, qcow, "qcow2"), chunked(qcow))
    assert driver.image_virtual_size(image_id) == 2 * GIB

    big, small = ids("vm"), ids("vm")
    driver.create_root_disk(big, image_id, 3)
    with ceph_admin.open_ioctx("vauban") as ioctx, \
            rbd.Image(ioctx, f"vm-{big}-root", read_only=True) as img:
        assert img.size() == 3 * GIB
    with pytest.raises(StorageError, match="smaller than image"):
        driver.create_root_disk(small, image_id, 1)
    assert not driver.vm_disk_exists(small)
    with pytest.raises(StorageError, match="not stored"):
        driver.create_root_disk(small, ids("img"), None)
    assert not driver.vm_disk_exists(small)


def test_image_with_clones_cannot_be_deleted_until_flattened(
        driver: RbdDriver, ceph_admin: Any, ids: Names,
        stored_image: tuple[str, bytes]) -> None:
    image_id, data = stored_image
    vm_id = ids("vm")
    driver.create_root_disk(vm_id, image_id, None)

    with pytest.raises(ImageInUse, match=f"in use by disks cloned from it: vauban/vm-{vm_id}"):
        driver.delete_image(image_id)
    assert driver.has_image(image_id)  # untouched: still protected

    driver.flatten_root_disk(vm_id)
    driver.flatten_root_disk(vm_id)  # no longer a clone: a no-op
    with ceph_admin.open_ioctx("vauban") as ioctx, \
            rbd.Image(ioctx, f"vm-{vm_id}-root", read_only=True) as img:
        with pytest.raises(rbd.ImageNotFound):
            img.parent_info()
    driver.delete_image(image_id)
    assert not driver.has_image(image_id)
    driver.delete_image(image_id)  # absent: a no-op
    assert read_image(ceph_admin, "vauban", f"vm-{vm_id}-root") == data
    with pytest.raises(StorageError, match="no root disk"):
        driver.flatten_root_disk(ids("vm"))


# --- volumes --------------------------------------------------------------------------


def test_volume_create_resize_and_pools(driver: RbdDriver, ceph_admin: Any, ids: Names) -> None:
    a, b = ids("vol"), ids("vol")
    info = driver.create_volume(a, 1)
    assert (info.id, info.pool, info.size_bytes, info.snapshots) == (a, "vauban", GIB, ())
    assert driver.create_volume(b, 2, pool="vauban-fast").pool == "vauban-fast"
    with pytest.raises(StorageError, match="already exists"):
        driver.create_volume(a, 1, pool="vauban-fast")
    with pytest.raises(StorageError, match=r"not one this storage may use \(allowed: vauban, "
                                           r"vauban-fast\)"):
        driver.create_volume(ids("vol"), 1, pool="rbd")

    driver.resize_volume(b, 3)
    driver.resize_volume(b, 3)  # same size: nothing to do
    with pytest.raises(StorageError, match="shrinking"):
        driver.resize_volume(b, 1)
    sizes = {v.id: (v.pool, v.size_bytes) for v in driver.list_volumes()}
    assert sizes[a] == ("vauban", GIB) and sizes[b] == ("vauban-fast", 3 * GIB)

    disk = driver.volume_disk(b, "vdc")
    assert isinstance(disk.source, RbdSource)
    assert (disk.source.pool, disk.source.image, disk.target) == ("vauban-fast", f"vol-{b}", "vdc")
    assert driver.volume_of(disk) == b
    assert driver.volume_of(driver.volume_disk(a, "vdd")) == a
    driver.delete_volume(a)
    driver.delete_volume(a)  # absent: a no-op
    driver.delete_volume(b)
    assert {a, b}.isdisjoint(v.id for v in driver.list_volumes())
    with pytest.raises(StorageError, match="does not exist"):
        driver.resize_volume(a, 2)


def test_volume_usage_grows_with_writes(driver: RbdDriver, ceph_admin: Any, ids: Names) -> None:
    vol = ids("vol")
    assert driver.create_volume(vol, 1).used_bytes == 0
    write_image(ceph_admin, "vauban", f"vol-{vol}", os.urandom(MIB), offset=8 * MIB)
    used = next(v.used_bytes for v in driver.list_volumes() if v.id == vol)
    assert MIB <= used <= 8 * MIB


def test_snapshot_rollback_and_clone(driver: RbdDriver, ceph_admin: Any, ids: Names) -> None:
    vol, copy = ids("vol"), ids("vol")
    driver.create_volume(vol, 1, pool="vauban-fast")
    before, after = os.urandom(MIB), os.urandom(MIB)
    write_image(ceph_admin, "vauban-fast", f"vol-{vol}", before)
    driver.snapshot_volume(vol, "s1")
    with pytest.raises(StorageError, match="already has a snapshot"):
        driver.snapshot_volume(vol, "s1")
    write_image(ceph_admin, "vauban-fast", f"vol-{vol}", after)

    driver.rollback_volume(vol, "s1", seq=1)
    assert read_image(ceph_admin, "vauban-fast", f"vol-{vol}", MIB) == before
    write_image(ceph_admin, "vauban-fast", f"vol-{vol}", after)
    driver.rollback_volume(vol, "s1", seq=1)  # request 1 already applied: nothing happens
    assert read_image(ceph_admin, "vauban-fast", f"vol-{vol}", MIB) == after
    info = next(v for v in driver.list_volumes() if v.id == vol)
    assert (info.snapshots, info.rollback_seq) == (("s1",), 1)
    with pytest.raises(StorageError, match="no snapshot nope"):
        driver.rollback_volume(vol, "nope")

    clone = driver.clone_volume(vol, "s1", copy)
    assert (clone.pool, clone.size_bytes) == ("vauban-fast", GIB)
    assert read_image(ceph_admin, "vauban-fast", f"vol-{copy}", MIB) == before
    with ceph_admin.open_ioctx("vauban-fast") as ioctx, \
            rbd.Image(ioctx, f"vol-{copy}", read_only=True) as img:
        assert img.parent_info() == ("vauban-fast", f"vol-{vol}", "s1")

    with pytest.raises(StorageError, match=f"snapshot s1 has clones vauban-fast/vol-{copy}"):
        driver.delete_volume(vol)
    with pytest.raises(StorageError, match="has clones"):
        driver.delete_volume_snapshot(vol, "s1")
    assert read_image(ceph_admin, "vauban-fast", f"vol-{vol}", MIB) == after  # untouched
    driver.delete_volume(copy)
    driver.delete_volume_snapshot(vol, "s1")
    driver.delete_volume_snapshot(vol, "s1")  # absent: a no-op
    assert next(v for v in driver.list_volumes() if v.id == vol).snapshots == ()
    driver.delete_volume(vol)


def test_a_snapshot_keeps_whether_it_was_quiesced(driver: RbdDriver, ceph_admin: Any,
                                                  ids: Names) -> None:
    vol, copy = ids("vol"), ids("vol")
    driver.create_volume(vol, 1)
    driver.snapshot_volume(vol, "frozen", quiesced=True)
    driver.snapshot_volume(vol, "cut")
    info = next(v for v in driver.list_volumes() if v.id == vol)
    assert (info.snapshots, info.quiesced_snapshots) == (("frozen", "cut"), ("frozen",))
    # a clone inherits its parent's metadata: its own snapshot of the same name says its own
    driver.clone_volume(vol, "frozen", copy)
    driver.snapshot_volume(copy, "frozen")
    assert next(v for v in driver.list_volumes() if v.id == copy).quiesced_snapshots == ()
    driver.delete_volume(copy)
    driver.delete_volume_snapshot(vol, "frozen")
    with ceph_admin.open_ioctx("vauban") as ioctx, \
            rbd.Image(ioctx, f"vol-{vol}", read_only=True) as img:
        assert [k for k, _v in img.metadata_list() if k.startswith("vauban.quiesced.")] == []
    driver.snapshot_volume(vol, "frozen")  # the name again, not quiesced this time
    assert next(v for v in driver.list_volumes() if v.id == vol).quiesced_snapshots == ()
    driver.delete_volume(vol)


def test_volume_in_use_is_neither_rolled_back_nor_deleted(driver: RbdDriver, ceph_admin: Any,
                                                          ids: Names) -> None:
    vol = ids("vol")
    driver.create_volume(vol, 1)
    driver.snapshot_volume(vol, "s")
    with ceph_admin.open_ioctx("vauban") as ioctx, rbd.Image(ioctx, f"vol-{vol}"):
        # Opened for writing, as by a VM: the image has a watcher.
        with pytest.raises(StorageError, match="in use") as e:
            driver.delete_volume(vol)
        assert e.value.retryable
        with pytest.raises(StorageError, match="in use"):
            driver.rollback_volume(vol, "s")
    assert next(v for v in driver.list_volumes() if v.id == vol).snapshots == ("s",)
    driver.delete_volume(vol)


# --- the cluster, its caps and the key ------------------------------------------------


def test_health_and_free_bytes(driver: RbdDriver) -> None:
    health = driver.health()
    assert health.status in ("HEALTH_OK", "HEALTH_WARN"), health
    assert [p.pool for p in health.pools] == ["vauban", "vauban-fast"]
    for p in health.pools:
        assert 0 < p.max_avail_bytes <= 20 * GIB and p.used_bytes >= 0
    free = driver.free_bytes()
    assert GIB < free <= 20 * GIB


def test_unreachable_cluster_is_a_retryable_error_within_bounds(
        ceph_cluster: ClusterInfo, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    d = make_driver(ceph_cluster, tmp_path, mon_host=f"127.0.0.1:{port}", connect_timeout=2)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot connect to Ceph monitors 127.0.0.1:{port}") \
            as e:
        d.has_image("x")
    assert e.value.retryable
    assert time.monotonic() - t0 < 10
    with pytest.raises(StorageError):  # and again: a new attempt, not a stuck connection
        d.free_bytes()
    d.close()


def test_wrong_key_is_refused(ceph_cluster: ClusterInfo, tmp_path: Path) -> None:
    from agent.drivers.storage.rbd.cephx import new_key

    d = make_driver(ceph_cluster, tmp_path, key=new_key(), connect_timeout=5)
    with pytest.raises(StorageError, match="cannot connect") as e:
        d.has_image("x")
    assert not e.value.retryable
    with pytest.raises(StorageError, match="not a valid key"):
        make_driver(ceph_cluster, tmp_path, key="not-a-key")


def test_client_cannot_touch_a_pool_outside_its_caps(ceph_cluster: ClusterInfo,
                                                     ceph_admin: Any, tmp_path: Path) -> None:
    pool = f"foreign-{secrets.token_hex(4)}"

    def admin_cmd(**cmd: Any) -> None:
        ret, _, err = ceph_admin.mon_command(json.dumps(cmd), b"")
        assert ret == 0, err

    admin_cmd(prefix="osd pool create", pool=pool, pg_num=8)
    try:
        admin_cmd(prefix="osd pool application enable", pool=pool, app="rbd")
        with ceph_admin.open_ioctx(pool) as ioctx:
            rbd.RBD().create(ioctx, "vol-theirs", MIB)
        d = make_driver(ceph_cluster, tmp_path, pool=pool, volume_pools=())
        with pytest.raises(StorageError, match="caps do not allow"):
            d.create_volume("mine", 1)
        with pytest.raises(StorageError, match="caps do not allow"):
            d.delete_volume("theirs")
        d.close()
        assert images_in(ceph_admin, pool) == ["vol-theirs"]
    finally:
        admin_cmd(prefix="osd pool rm", pool=pool, pool2=pool,
                  yes_i_really_really_mean_it=True)


def test_key_is_in_no_file_the_driver_wrote(driver: RbdDriver, ids: Names, tmp_path: Path,
                                            ceph_cluster: ClusterInfo) -> None:
    image_id = ids("img")
    data = os.urandom(MIB)
    (tmp_path / "k.raw").write_bytes(data)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(tmp_path / "k.raw"),
                    str(tmp_path / "k.qcow2")], check=True)
    qcow = (tmp_path / "k.qcow2").read_bytes()
    seen: list[list[str]] = []

    def spooled_files() -> Iterator[bytes]:
        for chunk in chunked(qcow, 64 * 1024):
            seen.append([p.name for p in driver.scratch_dir.iterdir()])
            yield chunk

    driver.import_image(ref(image_id, qcow, "qcow2"), spooled_files())
    assert any(seen), "the qcow2 was spooled to the scratch dir"
    assert_key_in_no_file(tmp_path, ceph_cluster.key)
