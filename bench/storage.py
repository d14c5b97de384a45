"""Storage benchmark: RBD clone vs full copy, and VM create on rbd vs localfs.

    .venv/bin/python bench/storage.py [--count 5] [--skip-vm] [--json FILE]

Run as root on a node with Ceph 16 (ceph-mon, ceph-mgr, ceph-osd, python3-rados and
python3-rbd), libvirt and QEMU (with qemu-block-extra for RBD disks). Everything runs in
one fresh directory /var/tmp/vauban-bench-storage-<tag> (mode 0711: QEMU runs as
libvirt-qemu and must traverse to the disks), removed at the end together with all it
holds: the Ceph daemons and the regions' processes are stopped by PID, VMs deleted,
libvirtd stopped if this run started it, and the libvirt Ceph secret the agent made
removed unless it was there before or another Vauban agent runs (regions share its
name). Only loopback addresses are used.

1. **RBD clone vs full copy.** A real single-node Ceph cluster (MiniCluster: mon, mgr,
   one bluestore OSD on a sparse file, size-1 pools) is started in `<dir>/rbd/ceph`. Two
   raw images are imported through `RbdDriver.import_image` as the limited client
   (timed, reported apart; the stream is hashed before, untimed): 1 GiB with a 1 MiB
   extent of pseudo-random data at the start of every 4 MiB object (256 MiB of data,
   every object exists) and 10 GiB with a 1 MiB extent every 16 MiB (640 MiB of data
   spread over it, the rest never written). After one warm-up clone each (checked to be
   a clone of img-<id>@base), `--count` root disks per size are made with
   `RbdDriver.create_root_disk` (what the agent does for each VM) and deleted after
   each, with the bare librbd `RBD().clone` timed alongside (the driver's own share);
   then `--count` full data copies per size of the same snapshot are made with librbd's
   `Image.copy` over the admin connection (`MiniCluster.admin()`), the first checked to
   have no parent, and removed after each. The sizes take turns, so that background work
   of the OSD falls on both alike. Printed: medians per size, the ratio clone/copy per
   size, and the target: the median 10 GiB clone is within 2x of the median 1 GiB clone.
2. **VM create on rbd vs localfs** (left out with `--skip-vm`). Two throwaway
   all-in-one regions (controller on SQLite + one joined agent, the functions of
   controller.allinone), one after the other on free ports: first `--storage ceph` (its
   Ceph cluster is the one of part 1, under `<region>/ceph`), then localfs, with the
   Ceph daemons stopped before it. In each, after a warm-up VM that makes the node
   fetch the test guest image (and import it into RBD), `--count` VMs (1 vCPU, 256 MiB)
   are timed from POST /api/v1/instances until the create operation is seen succeeded
   (polled every 20 ms), each deleted before the next: bench/provision.py's `Platform`
   does the measuring, with one change: its "disk" milestone is the birth time of the
   VM's instance directory, which the agent creates right after create_root_disk
   returned, so that it means "root disk made" on both backends. Printed: per-VM
   milestones, medians, the ratio rbd/localfs and the median of each step on both.

Exit status 0 whether or not the target is met; 1 if the benchmark itself failed.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt
import rados
import rbd
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.config import AgentConfig  # noqa: E402
from agent.drivers.hypervisor.base import HypervisorError  # noqa: E402
from agent.drivers.hypervisor.libvirt import LibvirtDriver  # noqa: E402
from agent.drivers.hypervisor.libvirt.secrets import remove_ceph_secret  # noqa: E402
from agent.drivers.storage.base import StorageError  # noqa: E402
from agent.drivers.storage.rbd.driver import RbdDriver  # noqa: E402
from agent.drivers.storage.rbd.minicluster import MiniCluster, MiniClusterError  # noqa: E402
from agent.drivers.storage.rbd.names import BASE_SNAP, image_name, root_disk_name  # noqa: E402
from agent.hostprep import LIBVIRT_URI, HostPrepError, ensure_libvirtd, stop_daemons  # noqa: E402
from agent.protocol import ImageRef  # noqa: E402
from bench.provision import (  # noqa: E402
    MILESTONES,
    SEGMENTS,
    BenchError,
    DomainEvents,
    Platform,
    PlatformRun,
    cleanup_step,
    fmt,
    import_image,
    median_of,
    ms,
    other_agents,
    shared_host,
    start_event_loop,
)
from controller import allinone, storage_settings  # noqa: E402
from controller.cli.client import ApiError  # noqa: E402
from hardware.kvmprobe import probe_kvm  # noqa: E402
from images.testguest.build import build  # noqa: E402
from tests.e2e.region import free_port  # noqa: E402

MIB = 1024**2
GIB = 1024**3
CHUNK = 4 * MIB  # RBD's default object size; the import stream comes in chunks of it
POOL = allinone.CEPH_POOLS[0]
TARGET_CLONE_RATIO = 2.0  # median 10 GiB clone / median 1 GiB clone, at most
MEMORY_MIB = 256
POLL_S = 0.02
ADMIN_OP_TIMEOUT_S = 600.0  # one full copy of 10 GiB on a loaded 2-core host


@dataclass(frozen=True)
class TestImage:
    """A raw image of `size` bytes: `extent` bytes of pseudo-random data at the start of
    every `stride` bytes, zeros elsewhere (never written: RBD keeps it sparse)."""

    label: str
    size: int
    extent: int
    stride: int
    seed: int

    @property
    def data_bytes(self) -> int:
        return self.size // self.stride * self.extent

    def chunks(self) -> Iterator[bytes]:
        """The image's bytes, CHUNK at a time; the same bytes on every call."""
        rng = random.Random(self.seed)
        zero = bytes(CHUNK)
        tail = bytes(CHUNK - self.extent)
        for offset in range(0, self.size, CHUNK):
            yield rng.randbytes(self.extent) + tail if offset % self.stride == 0 else zero

    def ref(self, image_id: str) -> ImageRef:
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return ImageRef(id=image_id, name=f"bench-{self.label}", disk_format="raw",
                        size_bytes=self.size, sha256=digest.hexdigest())


IMAGES = (
    TestImage("1GiB", 1 * GIB, extent=1 * MIB, stride=4 * MIB, seed=1),
    TestImage("10GiB", 10 * GIB, extent=1 * MIB, stride=16 * MIB, seed=10),
)
for _img in IMAGES:  # the generator relies on it
    assert _img.stride % CHUNK == 0 and _img.extent <= CHUNK and _img.size % _img.stride == 0


def median_ms(values: list[float]) -> float:
    return ms(statistics.median(values))


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- part 1: clone vs copy ------------------------------------------------------------------

def extents(img: Any) -> tuple[int, int]:
    """(objects, data bytes) an open image holds itself, parent not counted: objects from
    the object map, data as the extents the OSD reports allocated in them."""
    found = {"objects": 0, "data": 0}

    def count(key: str, size: int) -> Callable[[int, int, bool], int]:
        def cb(_offset: int, length: int, exists: bool) -> int:
            found[key] += (length // size if size else length) if exists else 0
            return 0
        return cb

    img.diff_iterate(0, img.size(), None, count("objects", CHUNK), include_parent=False,
                     whole_object=True)
    img.diff_iterate(0, img.size(), None, count("data", 0), include_parent=False,
                     whole_object=False)
    return found["objects"], found["data"]


@dataclass
class SizeResult:
    image: TestImage
    image_id: str
    import_s: float = 0.0
    allocated: tuple[int, int] = (0, 0)  # (objects, data bytes) the imported image holds
    copy_allocated: tuple[int, int] = (0, 0)  # the same of the first full copy: what was copied
    clone_s: list[float] = field(default_factory=list)
    clone_delete_s: list[float] = field(default_factory=list)
    bare_clone_s: list[float] = field(default_factory=list)  # librbd's clone call alone
    copy_s: list[float] = field(default_factory=list)
    copy_delete_s: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.clone_s) / statistics.median(self.copy_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "size_bytes": self.image.size, "data_bytes": self.image.data_bytes,
            "objects": self.allocated[0], "allocated_bytes": self.allocated[1],
            "copy_objects": self.copy_allocated[0], "copy_allocated_bytes": self.copy_allocated[1],
            "import_ms": ms(self.import_s),
            "clone_ms": [ms(v) for v in self.clone_s],
            "clone_delete_ms": [ms(v) for v in self.clone_delete_s],
            "bare_clone_ms": [ms(v) for v in self.bare_clone_s],
            "copy_ms": [ms(v) for v in self.copy_s],
            "copy_delete_ms": [ms(v) for v in self.copy_delete_s],
            "median_clone_ms": median_ms(self.clone_s), "median_copy_ms": median_ms(self.copy_s),
            "median_bare_clone_ms": median_ms(self.bare_clone_s),
            "ratio_clone_copy": round(self.ratio, 5),
        }


def import_one(driver: RbdDriver, ioctx: Any, r: SizeResult, tag: str) -> None:
    """Import r.image (timed), note what it holds, check a clone of it is a clone."""
    label = r.image.label
    print(f"{label}: hashing the image stream, then import through RbdDriver.import_image ...",
          flush=True)
    ref = r.image.ref(r.image_id)
    r.import_s = timed(lambda: driver.import_image(ref, r.image.chunks()))
    with rbd.Image(ioctx, image_name(r.image_id), snapshot=BASE_SNAP, read_only=True) as src:
        r.allocated = extents(src)
    warm = f"bench-{tag}-{label}-warm"
    driver.create_root_disk(warm, r.image_id, None)  # warm-up, not counted
    try:
        with rbd.Image(ioctx, root_disk_name(warm), read_only=True) as clone:
            if clone.parent_info()[1] != image_name(r.image_id):
                raise BenchError(f"{root_disk_name(warm)} is not a clone of the image")
    finally:
        driver.delete_vm_disks(warm)


def copy_one(ioctx: Any, r: SizeResult, dest: str) -> None:
    """One full copy of img-<id>@base (timed), checked the first time, removed (timed)."""
    try:
        with rbd.Image(ioctx, image_name(r.image_id), snapshot=BASE_SNAP,
                       read_only=True) as src:
            r.copy_s.append(timed(functools.partial(src.copy, ioctx, dest)))
        if len(r.copy_s) == 1:
            with rbd.Image(ioctx, dest, read_only=True) as copied:
                r.copy_allocated = extents(copied)
                try:
                    copied.parent_info()
                    raise BenchError(f"{dest} has a parent: not a full copy")
                except rbd.ImageNotFound:
                    pass  # no parent: a full copy, as it should be
    finally:
        r.copy_delete_s.append(timed(functools.partial(remove_image, ioctx, dest)))


def remove_image(ioctx: Any, name: str) -> None:
    try:
        rbd.RBD().remove(ioctx, name)
    except rbd.ImageNotFound:
        pass


def clone_vs_copy(cluster: MiniCluster, scratch: Path, count: int,
                  tag: str) -> list[SizeResult]:
    """Both images imported first; then clones, then copies, the sizes taking turns so that
    background work of the OSD (after the imports, after each copy) falls on both alike."""
    info = cluster.info()
    driver = RbdDriver(pool=POOL, user=info.client, key=info.key, mon_host=info.mon_host,
                       secret_usage=f"vauban-bench-{tag}", scratch_dir=scratch)
    results = [SizeResult(image, f"bench-{tag}-{image.label}") for image in IMAGES]
    try:
        with cluster.admin(time.monotonic() + ADMIN_OP_TIMEOUT_S) as admin, \
                admin.open_ioctx(POOL) as ioctx:
            for r in results:
                import_one(driver, ioctx, r, tag)
            print(f"{count} clones (create_root_disk) and deletions per size ...", flush=True)
            for i in range(count):
                for r in results:
                    vm_id = f"bench-{tag}-{r.image.label}-{i}"
                    r.clone_s.append(timed(functools.partial(
                        driver.create_root_disk, vm_id, r.image_id, None)))
                    r.clone_delete_s.append(timed(functools.partial(
                        driver.delete_vm_disks, vm_id)))
                    # the same clone with one librbd call, for the driver's own share
                    name = f"bench-{tag}-{r.image.label}-bare-{i}"
                    r.bare_clone_s.append(timed(functools.partial(
                        rbd.RBD().clone, ioctx, image_name(r.image_id), BASE_SNAP, ioctx,
                        name)))
                    remove_image(ioctx, name)
            print(f"{count} full copies (Image.copy) and removals per size ...", flush=True)
            for i in range(count):
                for r in results:
                    copy_one(ioctx, r, f"bench-{tag}-{r.image.label}-copy-{i}")
        return results
    finally:
        for r in results:  # the cluster goes at the end anyway; this keeps the pool clean
            cleanup_step(f"delete image {r.image_id}",
                         functools.partial(driver.delete_image, r.image_id))
        driver.close()


def report_clones(results: list[SizeResult], count: int) -> dict[str, Any]:
    out = print
    out(f"\nRBD clone vs full copy, pool {POOL} (size 1, one bluestore OSD on a sparse file), "
        f"{count} of each per size, median ms")
    out(f"  {'image':>6} {'data':>8} {'import':>8} {'clone':>8} {'(librbd)':>8} "
        f"{'del clone':>9} {'copy':>9} {'del copy':>9} {'clone/copy':>10}")
    for r in results:
        out(f"  {r.image.label:>6} {r.image.data_bytes // MIB:>4} MiB {ms(r.import_s):>8.0f} "
            f"{median_ms(r.clone_s):>8.1f} {median_ms(r.bare_clone_s):>8.1f} "
            f"{median_ms(r.clone_delete_s):>9.1f} {median_ms(r.copy_s):>9.1f} "
            f"{median_ms(r.copy_delete_s):>9.1f} {r.ratio:>10.4f}")
    out("      import: the one import through RbdDriver.import_image (stream hashed before, "
        "not counted)\n"
        "      clone: RbdDriver.create_root_disk; (librbd): the bare RBD().clone call; "
        "copy: Image.copy of img@base")
    for r in results:
        out(f"  {r.image.label}: clones {', '.join(f'{ms(v):.1f}' for v in r.clone_s)}; "
            f"librbd {', '.join(f'{ms(v):.1f}' for v in r.bare_clone_s)}; "
            f"copies {', '.join(f'{ms(v):.0f}' for v in r.copy_s)}")
        out(f"  {r.image.label}: the image has {r.allocated[0]} objects holding "
            f"{r.allocated[1] // MIB} MiB, a full copy {r.copy_allocated[0]} objects holding "
            f"{r.copy_allocated[1] // MIB} MiB")
    small, big = results[0], results[-1]
    ratio = statistics.median(big.clone_s) / statistics.median(small.clone_s)
    met = ratio <= TARGET_CLONE_RATIO
    out(f"  {big.image.label} clone within {TARGET_CLONE_RATIO:g}x of {small.image.label} "
        f"clone: ratio {ratio:.2f}: {'MET' if met else 'NOT MET'}")
    return {"sizes": {r.image.label: r.to_json() for r in results},
            "clone_ratio_10g_1g": round(ratio, 3), "target_ratio": TARGET_CLONE_RATIO,
            "target_met": met}


# -- part 2: VM create on rbd vs localfs -----------------------------------------------------

def birth_time(path: Path) -> float:
    """When `path` was created (statx birth time, ns precision, as coreutils' stat gives it)."""
    out = subprocess.run(["stat", "-c", "%.9W", str(path)], capture_output=True, text=True,
                         check=True).stdout.strip()
    if float(out) == 0:
        raise BenchError(f"the filesystem of {path} does not record birth times")
    return float(out)


class DiskMadePlatform(Platform):
    """Platform whose "disk" milestone means the same on every backend: the root disk is
    made. The agent creates the VM's instance directory right after create_root_disk
    returned (an RBD clone leaves no file, and librbd's create_timestamp has whole
    seconds only), so that directory's birth time is taken."""

    def disk_made(self, vm_id: str) -> float:
        return birth_time(self.instances_dir / vm_id)


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """This process's stdout and stderr, which its children inherit, go to `path` meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def quiet_storage_env(lay: allinone.Layout, storage: str) -> dict[str, str]:
    """allinone.storage_env, whose minicluster command prints the cluster's info (the
    limited client's key among it) and its log: kept in the region's log directory."""
    out = lay.root / "log" / "minicluster.out"
    try:
        with output_to(out):
            return allinone.storage_env(lay, storage)
    except subprocess.CalledProcessError as e:
        tail = " | ".join(out.read_text(errors="replace").splitlines()[-5:])
        raise BenchError(f"starting the region's Ceph cluster failed: {e}: {tail}") from e


@dataclass
class Region:
    storage: str  # "ceph" or "localfs", as controller.allinone names it
    runs: list[PlatformRun]
    shared: str | None  # why the host was not ours alone when the region started


def run_region(storage: str, root: Path, events: DomainEvents, driver: LibvirtDriver,
               kvm_cache: Path, image: Path, count: int, tag: str) -> Region:
    """One throwaway region on `storage`: warm-up VM, then `count` timed VMs; stopped after."""
    root.mkdir(mode=0o711, exist_ok=True)
    root.chmod(0o711)
    lay = allinone.Layout(root, free_port())
    platform_: Platform | None = None
    try:
        shared = shared_host(driver)
        if shared:
            print(f"note: {shared}; timings include their CPU use", flush=True)
        env = quiet_storage_env(lay, storage)
        allinone.start_controller(lay, env)
        token = allinone.admin_token(lay)
        allinone.join_agent(lay, token, f"bench-{tag}-{storage}")
        # The agent reads this cache when it starts: both regions use the same domain type.
        shutil.copy(kvm_cache, AgentConfig(data_dir=lay.agent_dir).kvm_probe_cache)
        allinone.start_agent(lay)
        allinone.wait_node_up(lay, token)
        import_image(lay, token, image, root)
        platform_ = DiskMadePlatform(lay, token, events, MEMORY_MIB, POLL_S)
        print(f"{storage}: warm-up VM (image to the node) + {count} measured VMs ...",
              flush=True)
        platform_.run_one(f"bench-{tag}-{storage}-0")  # warm-up, not counted
        runs = [platform_.run_one(f"bench-{tag}-{storage}-{i}") for i in range(1, count + 1)]
        return Region(storage, runs, shared)
    finally:
        leftover = platform_.cleanup() if platform_ is not None else []
        cleanup_step("stop agent", lambda: lay.service("agent").stop())
        cleanup_step("stop controller", lambda: lay.service("controller").stop())
        for vm_id in leftover:
            cleanup_step(f"undefine {vm_id}", functools.partial(driver.undefine, vm_id))


def secret_usage(cluster: MiniCluster) -> str:
    """The libvirt secret usage the region's agent gives its Ceph key under."""
    info = cluster.info()
    settings = storage_settings.build("rbd", info.conf, cluster.client_keyring, info.client,
                                      POOL, allinone.CEPH_POOLS)
    assert settings.rbd is not None
    return settings.rbd.secret_usage


def vm_create(top: Path, cluster: MiniCluster, count: int, tag: str) -> dict[str, Any]:
    """Both regions, one after the other; the Ceph cluster is stopped after the rbd one."""
    start_event_loop()
    started = ensure_libvirtd(LIBVIRT_URI)
    events: DomainEvents | None = None
    driver = LibvirtDriver(LIBVIRT_URI, accelerated=False)  # only to list and undefine
    usage = secret_usage(cluster)
    conn = driver.host.connection()
    try:
        conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, usage)
        secret_was_there = True
    except libvirt.libvirtError:
        secret_was_there = False
    try:
        image = build(REPO / "var/images/testguest.raw", REPO / "var/cache/testguest").image
        kvm_cache = top / "kvm-probe.json"
        kvm = probe_kvm(timeout=AgentConfig(data_dir=top).kvm_probe_timeout_s, cache=kvm_cache)
        print(f"domain type: {'kvm' if kvm.usable else 'qemu (TCG)'}: {kvm.detail}", flush=True)
        events = DomainEvents(LIBVIRT_URI)
        regions = []
        for storage in ("ceph", "localfs"):
            root = top / ("rbd" if storage == "ceph" else "localfs")
            regions.append(run_region(storage, root, events, driver, kvm_cache, image, count,
                                      tag))
            if storage == "ceph":  # the localfs region does not share the CPUs with Ceph
                cluster.stop()
        return report_vms(regions, kvm.usable)
    finally:
        if events is not None:
            cleanup_step("close event connection", events.close)
        if not secret_was_there and not other_agents():
            # Made by our agent; another region's agent on this host might use the same
            # usage name (it sets its key again before each use), hence only when alone.
            cleanup_step("remove ceph secret", lambda: remove_ceph_secret(driver.host, usage))
        driver.host.close()
        cleanup_step("stop libvirt daemons", lambda: stop_daemons(started))


DISK_MARK = ("root disk made: the VM's instance directory created, which the agent does "
             "right after create_root_disk returns (birth time)")
STEP_LABELS = {"POST -> qemu-img": "POST -> disk made (image check, clone or qcow2)",
               "qcow2 + seed": "seed"}


def report_vms(regions: list[Region], kvm_usable: bool) -> dict[str, Any]:
    out = print
    keys = [k for k, _ in MILESTONES]
    for region in regions:
        out(f"\nVM create on {region.storage}: POST /api/v1/instances -> operation succeeded, "
            "ms after the POST was sent")
        out(f"  {'vm':>3} " + " ".join(f"{k:>9}" for k in keys))
        for i, p in enumerate(region.runs, 1):
            out(f"  {i:>3} " + " ".join(f"{fmt(p.marks.get(k)):>9}" for k in keys))
    for k, what in MILESTONES:
        out(f"      {k:>9}: {DISK_MARK if k == 'disk' else what}")
    out(f"\n  {'median of each step, ms':<48}" + "  ".join(f"{r.storage:>8}" for r in regions))
    for label, start, end in SEGMENTS:
        out(f"  {STEP_LABELS.get(label, label):<48}" + "  ".join(
            f"{fmt(median_of([p.segment(start, end) for p in r.runs])):>8}" for r in regions))
    med = {r.storage: statistics.median(p.total_s for p in r.runs) for r in regions}
    out("\nSummary (POST -> running seen), median")
    for r in regions:
        out(f"  {r.storage:<8} {fmt(med[r.storage]):>8} ms")
    ratio = med["ceph"] / med["localfs"]
    out(f"  ratio rbd/localfs {ratio:.2f} (difference {fmt(med['ceph'] - med['localfs'])} ms)")
    return {
        "domain_type": "kvm" if kvm_usable else "qemu",
        **{r.storage: {"runs_ms": [{"total": ms(p.total_s),
                                    **{k: ms(v) for k, v in p.marks.items()}}
                                   for p in r.runs],
                       "median_ms": ms(med[r.storage]), "shared_host": r.shared}
            for r in regions},
        "ratio_rbd_localfs": round(ratio, 3),
        "difference_ms": ms(med["ceph"] - med["localfs"]),
    }


# -- main ---------------------------------------------------------------------------------------

def header(count: int, skip_vm: bool) -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    ceph = subprocess.run(["ceph-osd", "--version"], capture_output=True, text=True,
                          check=False).stdout.split(" (")[0]
    return (f"Storage benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on "
            f"{os.uname().nodename}: {os.cpu_count()} CPUs, {mem_gib:.0f} GiB, load average "
            f"{os.getloadavg()[0]:.2f}; {ceph}; {count} of each"
            f"{'; VM part skipped' if skip_vm else ''}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    top = Path("/var/tmp") / f"vauban-bench-storage-{tag}"
    top.mkdir(mode=0o711)
    top.chmod(0o711)  # explicit: mkdir's mode is filtered by the umask
    cluster = MiniCluster(top / "rbd" / "ceph")  # the ceph region's own cluster directory
    try:
        head = header(args.count, args.skip_vm)
        print(head, flush=True)
        t0 = time.monotonic()
        cluster.start(pools=list(allinone.CEPH_POOLS))
        print(f"Ceph cluster healthy after {time.monotonic() - t0:.1f}s", flush=True)
        results: dict[str, Any] = {"host": head}
        clones = results["clone_copy"] = report_clones(
            clone_vs_copy(cluster, top / "scratch", args.count, tag), args.count)
        if not args.skip_vm:
            results["vm_create"] = vm_create(top, cluster, args.count, tag)
        print(f"\nSummary: {head}")
        for label, size in clones["sizes"].items():
            print(f"  {label}: clone {size['median_clone_ms']:.1f} ms, full copy "
                  f"{size['median_copy_ms']:.1f} ms, clone/copy {size['ratio_clone_copy']:.4f}")
        print(f"  10 GiB clone within {TARGET_CLONE_RATIO:g}x of 1 GiB clone: ratio "
              f"{clones['clone_ratio_10g_1g']:.2f}: {'MET' if clones['target_met'] else 'NOT MET'}")
        if "vm_create" in results:
            vm = results["vm_create"]
            print(f"  VM create (POST -> running seen): rbd {vm['ceph']['median_ms']:.1f} ms, "
                  f"localfs {vm['localfs']['median_ms']:.1f} ms, ratio rbd/localfs "
                  f"{vm['ratio_rbd_localfs']:.2f}")
        return results
    finally:
        cleanup_step("stop the Ceph cluster", cluster.stop)
        shutil.rmtree(top, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/storage.py",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--count", type=int, default=5,
                   help="measured clones, copies and VMs each (default 5)")
    p.add_argument("--skip-vm", action="store_true",
                   help="only clone vs copy; no regions, no VMs")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be at least 1")
    if os.geteuid() != 0:
        print("bench/storage.py: run as root (Ceph daemons, VMs on qemu:///system)",
              file=sys.stderr)
        return 1
    try:
        results = run(args)
    except KeyboardInterrupt:
        print("bench/storage.py: interrupted (cleaned up)", file=sys.stderr)
        return 130
    except (BenchError, ApiError, HypervisorError, StorageError, HostPrepError,
            MiniClusterError, OSError, subprocess.SubprocessError, libvirt.libvirtError,
            rados.Error, rbd.Error, requests.RequestException) as e:
        print(f"bench/storage.py: {e}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(
            {**results, "args": {k: str(v) for k, v in vars(args).items()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
