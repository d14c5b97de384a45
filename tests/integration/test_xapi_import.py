"""Images and files into a pool's SR over `PUT /import_raw_vdi`, against the XAPI
simulator over real HTTPS on loopback: bytes land as sent (raw, and qcow2 through VHD),
failures leave no VDI, redirects go to pinned hosts only, memory stays bounded."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.drivers.storage.base import ImageInUse, StorageError
from agent.drivers.xapi.events import EventLoop, PoolCache
from agent.drivers.xapi.imports import (
    COMPLETE_KEY,
    FROM_IMAGE_KEY,
    IMAGE_KEY,
    PoolImages,
    _probe,
    import_vdi,
)
from agent.drivers.xapi.pool import PoolClient
from agent.drivers.xapi.transport import pinned_connection, session_cookie
from agent.protocol import ImageRef
from tests.xapi_sim.process import REPO, SimProcess

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def _pins(pool: SimProcess, members: tuple[int, ...] | None = None) -> dict[str, str]:
    chosen = range(len(pool.members)) if members is None else members
    return {pool.members[i].address: pool.members[i].fingerprint for i in chosen}


@pytest.fixture
def client(sim_pool: SimProcess) -> Iterator[PoolClient]:
    c = PoolClient(sim_pool.url(), "root", "secret", _pins(sim_pool), label="sim")
    yield c
    c.close()


@pytest.fixture
def images(sim_pool: SimProcess, client: PoolClient, tmp_path: Path) -> PoolImages:
    return PoolImages(client, sim_pool.sr, tmp_path / "scratch")


def _pattern(size: int, seed: int = 1) -> bytes:
    """`size` bytes that are not all alike (a zero hole in the middle, for sparseness)."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    data = bytearray((block * (size // len(block) + 1))[:size])
    data[size // 3:size // 3 + 128 * 1024] = bytes(128 * 1024)
    return bytes(data)


def _image(data: bytes, fmt: str = "raw", sha256: str | None = None) -> ImageRef:
    return ImageRef(id=str(uuidlib.uuid4()), name="testimage", disk_format=fmt,  # type: ignore[arg-type]
                    size_bytes=len(data), sha256=sha256 or hashlib.sha256(data).hexdigest())


def _chunks(data: bytes, size: int = MiB) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _vdi_files(pool: SimProcess) -> set[str]:
    folder = pool.folder / f"sr-{pool.sr}"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_raw_image_lands_as_its_bytes_marked_complete_last(
        sim_pool: SimProcess, images: PoolImages) -> None:
    data = _pattern(3 * MiB)
    image = _image(data)
    uuid = images.import_image(image, _chunks(data))
    assert sim_pool.vdi_file(uuid).read_bytes() == data
    config = sim_pool.store.field("VDI", uuid, "other_config")
    assert config == {IMAGE_KEY: image.id, "vauban.sha256": image.sha256, COMPLETE_KEY: "true"}
    assert sim_pool.store.field("VDI", uuid, "virtual_size") == len(data)
    assert images.has_image(image.id, image.sha256) and not images.has_image(image.id, "0" * 64)
    assert images.image_virtual_size(image.id) == len(data)
    assert sim_pool.store.live("task") == set()  # the import's task was destroyed
    (transfer,) = sim_pool.transfers
    assert transfer == {"kind": "import", "member": sim_pool.members[0].address,
                        "object": uuid}
    # stored already: kept, the stream not read
    assert images.import_image(image, iter(())) == uuid


def test_qcow2_image_lands_as_the_same_raw_bytes(
        sim_pool: SimProcess, images: PoolImages, tmp_path: Path) -> None:
    data = _pattern(5 * MiB, seed=2)
    raw, qcow2 = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    raw.write_bytes(data)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                    str(qcow2)], check=True)
    body = qcow2.read_bytes()
    image = _image(body, "qcow2")
    uuid = images.import_image(image, _chunks(body, 256 * 1024))
    assert sim_pool.store.field("VDI", uuid, "virtual_size") == len(data)
    assert sim_pool.vdi_file(uuid).read_bytes() == data
    assert images.has_image(image.id)
    assert list(images.scratch_dir.iterdir()) == []  # the qcow2 and VHD files are gone


def test_checksum_mismatch_destroys_the_vdi_and_says_so(
        sim_pool: SimProcess, images: PoolImages) -> None:
    data = _pattern(2 * MiB)
    image = _image(data, sha256="0" * 64)
    before = sim_pool.store.live("VDI")
    with pytest.raises(StorageError) as refused:
        images.import_image(image, _chunks(data))
    message = str(refused.value)
    assert "checksum mismatch" in message and "was destroyed" in message
    assert sim_pool.store.live("VDI") == before
    assert _vdi_files(sim_pool) == set()  # its content went with it
    assert not images.has_image(image.id)
    assert sim_pool.store.live("task") == set()


def test_redirect_is_followed_once_to_a_pinned_member(
        sim_pool: SimProcess, images: PoolImages) -> None:
    sim_pool.import_redirect(1)
    data = _pattern(2 * MiB, seed=3)
    uuid = images.import_image(_image(data), _chunks(data))
    assert sim_pool.vdi_file(uuid).read_bytes() == data
    assert [t["member"] for t in sim_pool.transfers] == [sim_pool.members[1].address]


def test_redirect_to_an_unpinned_member_is_refused_and_leaves_nothing(
        sim_pool: SimProcess, tmp_path: Path) -> None:
    sim_pool.import_redirect(1)
    client = PoolClient(sim_pool.url(), "root", "secret", _pins(sim_pool, (0,)), label="sim")
    try:
        images = PoolImages(client, sim_pool.sr, tmp_path / "scratch")
        before = sim_pool.store.live("VDI")
        data = _pattern(MiB)
        with pytest.raises(StorageError) as refused:
            images.import_image(_image(data), _chunks(data))
    finally:
        client.close()
    member = sim_pool.members[1].address
    assert f"sends the import to {member}, whose certificate is not pinned" in str(
        refused.value)
    assert "was destroyed" in str(refused.value)
    assert sim_pool.store.live("VDI") == before
    assert sim_pool.transfers == []


def test_a_stream_longer_than_declared_is_cut_and_its_vdi_destroyed(
        sim_pool: SimProcess, client: PoolClient) -> None:
    before = sim_pool.store.live("VDI")
    with pytest.raises(StorageError) as refused:
        import_vdi(client, None, sim_pool.sr, "too-long", MiB, _chunks(_pattern(2 * MiB)))
    assert "longer than the 1048576 bytes declared" in str(refused.value)
    assert sim_pool.store.live("VDI") == before
    with pytest.raises(StorageError) as short:
        import_vdi(client, None, sim_pool.sr, "too-short", 2 * MiB, _chunks(_pattern(MiB)))
    assert "ended after 1048576 of the 2097152 bytes" in str(short.value)
    assert sim_pool.store.live("VDI") == before
    assert sim_pool.store.live("task") == set()


def test_local_file_import_rounds_the_vdi_up_to_whole_sectors(
        sim_pool: SimProcess, images: PoolImages, tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    data = _pattern(300_001, seed=4)
    seed.write_bytes(data)
    uuid = images.import_file(seed, "seed", {"vauban.instance": "i-1"})
    assert sim_pool.store.field("VDI", uuid, "virtual_size") == 300_032
    stored = sim_pool.vdi_file(uuid).read_bytes()
    assert stored[:len(data)] == data and stored[len(data):] == bytes(31)
    assert sim_pool.store.field("VDI", uuid, "other_config") == {"vauban.instance": "i-1"}


def test_sweep_destroys_incomplete_image_vdis_only(
        sim_pool: SimProcess, images: PoolImages) -> None:
    data = _pattern(MiB)
    kept = images.import_image(_image(data), _chunks(data))
    store = sim_pool.store
    left = store.add("VDI", {"SR": sim_pool.sr, "virtual_size": MiB,
                             "other_config": {IMAGE_KEY: "crashed"}})
    disk = store.add("VDI", {"SR": sim_pool.sr, "virtual_size": MiB,
                             "other_config": {IMAGE_KEY: "x", "vauban.instance": "i-2"}})
    assert images.sweep_leftovers() == [left]
    assert {kept, disk} <= store.live("VDI") and left not in store.live("VDI")


def test_delete_image_is_refused_while_a_disk_is_made_from_it(
        sim_pool: SimProcess, images: PoolImages) -> None:
    data = _pattern(MiB)
    image = _image(data)
    uuid = images.import_image(image, _chunks(data))
    store = sim_pool.store
    disk = store.add("VDI", {"SR": sim_pool.sr, "virtual_size": MiB,
                             "other_config": {"vauban.instance": "i-3",
                                              FROM_IMAGE_KEY: image.id}})
    with pytest.raises(ImageInUse) as refused:
        images.delete_image(image.id)
    assert disk in str(refused.value) and uuid in store.live("VDI")
    store.remove("VDI", disk)
    images.delete_image(image.id)
    assert uuid not in store.live("VDI") and not images.has_image(image.id)
    images.delete_image(image.id)  # gone already: a no-op


def _vdi(client: PoolClient, pool: SimProcess, size: int) -> str:
    ref = client.call("VDI.create", {"name_label": "wire", "SR": client.call(
        "SR.get_by_uuid", pool.sr), "virtual_size": size, "type": "user", "sharable": False,
        "read_only": False, "other_config": {}})
    return str(client.call("VDI.get_uuid", ref))


def _answer(pool: SimProcess, path: str, headers: dict[str, str]) -> int:
    """The status a PUT with `headers` and no body sent yet gets from the master."""
    master = pool.members[0]
    connection = pinned_connection(master.address, pool.port, master.fingerprint, 30)
    try:
        connection.putrequest("PUT", path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        answer = connection.getresponse()
        answer.read()
        return answer.status
    finally:
        connection.close()


def test_chunked_oversized_unsized_and_unauthenticated_puts_are_refused(
        sim_pool: SimProcess, client: PoolClient) -> None:
    vdi = _vdi(client, sim_pool, MiB)
    task = client.call("task.create", "oversized", "")
    cookie = {"Cookie": session_cookie(client.session_id())}
    path = f"/import_raw_vdi?vdi={vdi}&format=raw"
    assert _answer(sim_pool, path, {**cookie, "Transfer-Encoding": "chunked"}) == 403
    assert _answer(sim_pool, f"{path}&task_id={task}",
                   {**cookie, "Content-Length": str(2 * MiB)}) == 500
    assert client.call("task.get_record", task)["error_info"] == ["VDI_IO_ERROR",
                                                                   "Device I/O errors"]
    assert _answer(sim_pool, path, cookie) == 411
    assert _answer(sim_pool, path, {"Cookie": "session_id=OpaqueRef:nobody",
                                    "Content-Length": "0"}) == 401
    # the session may come in the query too (xapi reads both; the cookie wins)
    query = f"{path}&session_id={client.session_id()}"
    assert _answer(sim_pool, query, {"Content-Length": "0"}) == 200
    assert sim_pool.vdi_file(vdi).read_bytes() == bytes(MiB)  # nothing was written
    client.call("task.destroy", task)


CHILD = """
import hashlib, json, sys
from pathlib import Path
from agent.drivers.xapi.imports import PoolImages
from agent.drivers.xapi.pool import PoolClient
from agent.protocol import ImageRef

args = json.loads(sys.argv[1])
client = PoolClient(args["url"], "root", "secret", args["pins"], label="sim")
images = PoolImages(client, args["sr"], Path(args["scratch"]))
image = ImageRef(**args["image"])
client.call("pool.get_all")

def chunks():
    for i in range(args["count"]):
        yield hashlib.sha256(str(i).encode()).digest() * (args["chunk"] // 32)

def status(name):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024

Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from now
before = status("VmRSS")
uuid = images.import_image(image, chunks())
print(json.dumps({"uuid": uuid, "before": before, "peak": status("VmHWM")}))
client.close()
"""


def test_a_50_mib_import_streams_with_bounded_memory(
        sim_pool: SimProcess, tmp_path: Path) -> None:
    count, chunk = 50, MiB
    digest = hashlib.sha256()
    for i in range(count):
        digest.update(hashlib.sha256(str(i).encode()).digest() * (chunk // 32))
    image = {"id": str(uuidlib.uuid4()), "name": "big", "disk_format": "raw",
             "size_bytes": count * chunk, "sha256": digest.hexdigest()}
    args = {"url": sim_pool.url(), "pins": _pins(sim_pool), "sr": sim_pool.sr,
            "scratch": str(tmp_path / "scratch"), "image": image, "count": count,
            "chunk": chunk}
    run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    measured = json.loads(run.stdout)
    growth = measured["peak"] - measured["before"]
    # whole in memory would be >= 50 MiB; streamed it is a few chunks
    assert growth < count * chunk / 8, f"peak RSS grew {growth} bytes for a 50 MiB image"
    stored = hashlib.sha256()
    with sim_pool.vdi_file(measured["uuid"]).open("rb") as f:
        while data := f.read(4 * MiB):
            stored.update(data)
    assert stored.hexdigest() == image["sha256"]


def test_with_the_event_cache_the_task_and_the_mark_are_awaited_there(
        sim_pool: SimProcess, client: PoolClient, tmp_path: Path) -> None:
    cache = PoolCache()
    loop = EventLoop(PoolClient(sim_pool.url(), "root", "secret", _pins(sim_pool),
                                label="sim"), cache)
    loop.start()
    try:
        assert cache.wait_for(lambda c: c.valid, 60.0), cache.problem
        images = PoolImages(client, sim_pool.sr, tmp_path / "scratch", cache)
        data = _pattern(2 * MiB, seed=5)
        image = _image(data)
        before = dict(sim_pool.store.calls)
        uuid = images.import_image(image, _chunks(data))
        calls = {m: n - before.get(m, 0) for m, n in sim_pool.store.calls.items()}
        assert images.has_image(image.id, image.sha256)  # from the cache, at once
        assert sim_pool.vdi_file(uuid).read_bytes() == data
        # the task's end and the VDIs were read from events, not asked for
        assert not calls.get("task.get_record") and not calls.get("VDI.get_all_records")
        bad = _image(data, sha256="f" * 64)
        with pytest.raises(StorageError, match="checksum mismatch"):
            images.import_image(bad, _chunks(data))
        assert cache.wait_for(lambda c: set(c.all("VDI")) == sim_pool.store.live("VDI"), 60.0)
        assert not images.has_image(bad.id)
    finally:
        loop.stop()


def test_a_session_that_ended_before_the_put_is_replaced_once(
        sim_pool: SimProcess, client: PoolClient) -> None:
    vdi = _vdi(client, sim_pool, MiB)
    sim_pool.store.expire_sessions()  # between the VDI's creation and its PUT
    assert _probe(client, {"vdi": vdi, "format": "raw"}) == (client.address, client.port)
    assert len(sim_pool.store.logins) == 2
