"""Provisioning benchmark: what the platform adds to starting a VM, over raw libvirt.

    make bench                 (= .venv/bin/python bench/provision.py, after host preparation)
    .venv/bin/python bench/provision.py [--count 5] [--memory 256] [--poll-ms 20] [--json F]

Run as root on a node with libvirt (started here, and stopped afterwards, if it is not
running). Target: the median create->running time through the API is at most 300 ms
above the median of the same start done with raw libvirt.

One run measures `--count` VMs (1 vCPU, `--memory` MiB, the test guest image) each way:

- baseline, raw libvirt: for each VM the files the agent would make (a qcow2 overlay of
  the test image through the localfs storage driver, a NoCloud seed) are prepared
  outside the timed section; then `conn.defineXML(xml)` + `dom.create()` of the domain
  XML the libvirt driver renders for that VM is timed (same domain type as the agent
  uses here: the agent reuses this bench's KVM probe result).
- platform: from sending POST /api/v1/instances (202) until the create operation is
  seen succeeded by polling GET /api/v1/operations/<id> every `--poll-ms`: the agent got
  the desired state, made disk and seed, defined and started the domain, and its status
  report reached the controller.

The region is a throwaway one (controller on SQLite + one joined agent, the all-in-one
launcher's functions) on a free port under a fresh /var/tmp directory (mode 0711: QEMU
runs as libvirt-qemu and must traverse to the disks). The agent runs only during the
platform phase. An agent only touches domains labelled with its own node, so other
regions on this host are safe; they still compete for the CPUs, so the bench says when
it shares the host and, with `--wait-alone SECONDS`, waits for it to be alone first.
Every VM is removed before the next one is created, so each measurement starts
from a quiet host. One warm-up VM per side is not counted; the platform one also makes
the node download and cache the image, so the image transfer is not measured.

Printed: per-VM times, medians, the ratio platform/baseline, the overhead (difference
of the medians) against the target, and a breakdown of the platform path from libvirt
events (defined, started, metadata changed), file times (root disk directory, seed) and
the operation's finished_at. Everything made is removed at the end (VMs through the API
or by UUID, files, the region's processes by PID, libvirtd if this run started it).
Exit status 0 whether or not the target is met; 1 if the benchmark itself failed.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tests` is not an installed package; free_port lives there

from agent.config import AgentConfig  # noqa: E402
from agent.drivers.hypervisor.base import DiskSpec, HypervisorError, VmSpec  # noqa: E402
from agent.drivers.hypervisor.libvirt import LibvirtDriver  # noqa: E402
from agent.drivers.hypervisor.libvirt.config import NS  # noqa: E402
from agent.drivers.storage.base import StorageError  # noqa: E402
from agent.drivers.storage.localfs import LocalfsDriver  # noqa: E402
from agent.hostprep import LIBVIRT_URI, HostPrepError, ensure_libvirtd, stop_daemons  # noqa: E402
from agent.protocol import CloudInitSeed, ImageRef  # noqa: E402
from controller import allinone  # noqa: E402
from controller.cli.client import ApiError, Client, Settings  # noqa: E402
from hardware.kvmprobe import probe_kvm  # noqa: E402
from images.seed import build_nocloud_seed  # noqa: E402
from images.testguest.build import build  # noqa: E402
from tests.e2e.region import free_port  # noqa: E402

TARGET_OVERHEAD_MS = 300.0
IMAGE_NAME = "testguest"
VCPUS = 1
START_TIMEOUT_S = 300.0  # one VM from POST to running, on a loaded 2-core TCG host
DELETE_TIMEOUT_S = 120.0


class BenchError(Exception):
    """The benchmark could not run (not: the target was missed)."""


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# -- libvirt events -----------------------------------------------------------------------

def start_event_loop() -> None:
    """libvirt's default event loop in a daemon thread; call before opening any connection."""
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name="libvirt-events", daemon=True).start()


class DomainEvents:
    """Wall-clock time of the first defined / started / metadata-changed event per domain UUID."""

    def __init__(self, uri: str) -> None:
        self._lock = threading.Lock()
        self._times: dict[str, dict[str, float]] = {}
        self._conn = libvirt.open(uri)
        self._ids = [
            self._conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None),
            self._conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._metadata, None),
        ]

    def _record(self, dom: libvirt.virDomain, what: str) -> None:
        now = time.time()
        with self._lock:
            self._times.setdefault(dom.UUIDString(), {}).setdefault(what, now)

    def _lifecycle(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int,
                   _detail: int, _opaque: object) -> None:
        what = {libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
                libvirt.VIR_DOMAIN_EVENT_STARTED: "started"}.get(event)
        if what is not None:
            self._record(dom, what)

    def _metadata(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, _mtype: int,
                  nsuri: str | None, _opaque: object) -> None:
        if nsuri == NS:
            self._record(dom, "metadata")

    def times(self, vm_id: str) -> dict[str, float]:
        with self._lock:
            return dict(self._times.get(vm_id, {}))

    def close(self) -> None:
        for cb_id in self._ids:
            try:
                self._conn.domainEventDeregisterAny(cb_id)
            except libvirt.libvirtError:
                pass  # the connection may be gone; it is closed either way
        self._conn.close()


# -- guards ---------------------------------------------------------------------------------

def other_agents() -> list[int]:
    """PIDs of `vauban-agent ... run` processes on this host (any region)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"vauban-agent") for a in argv[:2]) and b"run" in argv:
            pids.append(int(proc.name))
    return pids


def shared_host(driver: LibvirtDriver) -> str | None:
    """Why this host is not ours alone right now, or None.

    Other regions' agents and VMs share the CPUs and make the timings noisier.
    """
    agents = other_agents()
    if agents:
        return f"another Vauban agent runs on this host (PIDs {agents})"
    foreign = [f"{vm.name} ({vm.id})" for vm in driver.list_vms()]
    if foreign:
        return f"libvirt holds Vauban VMs of another region or test: {', '.join(foreign)}"
    return None


def wait_host_alone(driver: LibvirtDriver, timeout: float) -> None:
    """Poll until no other Vauban agent or domain is on the host; BenchError at the deadline."""
    if timeout <= 0:
        why = shared_host(driver)
        if why:
            print(f"note: {why}; timings include their CPU use", flush=True)
        return
    deadline = time.monotonic() + timeout
    said = ""
    while (why := shared_host(driver)) is not None:
        if time.monotonic() >= deadline:
            raise BenchError(f"{why}; gave up after {timeout:.0f}s (--wait-alone)")
        if why != said:
            print(f"waiting: {why}", flush=True)
            said = why
        time.sleep(1.0)  # other processes' VMs and agents: nothing to block on


# -- results ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BaselineRun:
    define_s: float
    create_s: float
    started_event_s: float | None  # libvirt's started event, s after defineXML was called

    @property
    def total_s(self) -> float:
        return self.define_s + self.create_s


# Milestones of one platform create, in seconds after the POST was sent, in path order.
MILESTONES = (
    ("accepted", "202 received"),
    ("disk", "root disk dir made (qemu-img create began; mtime)"),
    ("seed", "seed.iso written (mtime)"),
    ("defined", "libvirt: domain defined (event)"),
    ("started", "libvirt: domain started (event)"),
    ("metadata", "libvirt: power-seq metadata set (event)"),
    ("finished", "controller: operation finished_at"),
    ("seen", "poll saw the operation succeeded"),
)
# Segments between consecutive milestones on the VM's critical path (accepted is a side
# branch: the agent is woken before the 202 reaches the client).
SEGMENTS = (
    ("POST -> qemu-img", None, "disk"),
    ("qcow2 + seed", "disk", "seed"),
    ("define", "seed", "defined"),
    ("start (create)", "defined", "started"),
    ("-> metadata", "started", "metadata"),
    ("report + ingest", "metadata", "finished"),
    ("observe (poll)", "finished", "seen"),
)


@dataclass
class PlatformRun:
    name: str
    vm_id: str
    total_s: float
    marks: dict[str, float] = field(default_factory=dict)  # milestone -> s after POST

    def segment(self, start: str | None, end: str) -> float | None:
        t0 = 0.0 if start is None else self.marks.get(start)
        t1 = self.marks.get(end)
        return None if t0 is None or t1 is None else t1 - t0


# -- baseline -----------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


class Baseline:
    """Raw libvirt starts of the XML the driver renders, over files made like the agent's."""

    def __init__(self, driver: LibvirtDriver, events: DomainEvents, image: Path, work: Path,
                 memory_mib: int) -> None:
        self.driver = driver
        self.events = events
        self.memory_mib = memory_mib
        self.instances_dir = work / "instances"
        self.store = LocalfsDriver(work / "storage")
        self.image = ImageRef(id="bench-testguest", name=IMAGE_NAME, disk_format="raw",
                              size_bytes=image.stat().st_size, sha256=sha256_of(image))
        self.store.import_image(self.image, file_chunks(image))
        self.defined: set[str] = set()  # ids whose domain may exist; removed by cleanup

    def prepare(self, name: str) -> tuple[str, str]:
        """Disk, seed and domain XML of a new VM, as the agent's reconciler makes them."""
        vm_id = str(uuid.uuid4())
        self.defined.add(vm_id)
        root = self.store.create_root_disk(vm_id, self.image.id, None)
        vm_dir = self.instances_dir / vm_id
        vm_dir.mkdir(parents=True)
        vm_dir.chmod(0o755)
        seed = vm_dir / "seed.iso"
        build_nocloud_seed(CloudInitSeed(instance_id=vm_id, hostname=name), seed)
        spec = VmSpec(
            id=vm_id, name=f"vauban-{name}", vcpus=VCPUS, memory_mib=self.memory_mib,
            disks=(root, DiskSpec(source=seed, format="raw", target="vdb", readonly=True)),
            console_log=vm_dir / "console.log", power_seq=0,
        )
        return vm_id, self.driver.domain_config(spec).to_xml()

    def run_one(self, name: str) -> BaselineRun:
        vm_id, xml = self.prepare(name)
        conn = self.driver.host.connection()  # the driver's persistent connection, as the agent
        wall0 = time.time()
        t0 = time.perf_counter()
        dom = conn.defineXML(xml)
        t1 = time.perf_counter()
        dom.create()
        t2 = time.perf_counter()
        self.remove(vm_id)
        started = self.events.times(vm_id).get("started")
        return BaselineRun(define_s=t1 - t0, create_s=t2 - t1,
                           started_event_s=None if started is None else started - wall0)

    def remove(self, vm_id: str) -> None:
        self.driver.undefine(vm_id)  # by UUID: destroy if running, then undefine
        self.store.delete_vm_disks(vm_id)
        shutil.rmtree(self.instances_dir / vm_id, ignore_errors=True)
        self.defined.discard(vm_id)

    def cleanup(self) -> None:
        for vm_id in list(self.defined):
            self.remove(vm_id)


# -- platform -----------------------------------------------------------------------------------

class Platform:
    """Creates VMs through the API of a throwaway region and times them."""

    def __init__(self, lay: allinone.Layout, token: str, events: DomainEvents,
                 memory_mib: int, poll_s: float) -> None:
        self.lay = lay
        self.client = Client(Settings(url=lay.url, token=token, ca_file=str(lay.ca_file)))
        self.events = events
        self.memory_mib = memory_mib
        self.poll_s = poll_s
        cfg = AgentConfig(data_dir=lay.agent_dir)
        self.instances_dir = cfg.instances_dir
        self.disks = LocalfsDriver(cfg.storage_dir)
        self.created: dict[str, str] = {}  # name -> id, until deleted

    def run_one(self, name: str) -> PlatformRun:
        body = {"name": name, "image": IMAGE_NAME, "vcpus": VCPUS, "memory_mib": self.memory_mib}
        wall0 = time.time()
        t0 = time.perf_counter()
        op = self.client.post("/instances", body)
        t_accepted = time.perf_counter()
        self.created[name] = op["target_id"]
        op = self.client.wait(op, lambda _op: None, timeout=START_TIMEOUT_S,
                              interval=self.poll_s)
        t_seen = time.perf_counter()
        inst = self.client.get(f"/instances/{name}")
        if inst["state"] != "running":
            raise BenchError(f"{name}: operation succeeded but the instance is {inst['state']}")
        vm_id = str(inst["id"])
        marks = {"accepted": t_accepted - t0, "seen": t_seen - t0}
        walls = dict(self.events.times(vm_id))
        walls["disk"] = self.disk_made(vm_id)
        walls["seed"] = (self.instances_dir / vm_id / "seed.iso").stat().st_mtime
        finished = datetime.fromisoformat(str(op["finished_at"]))
        if finished.tzinfo is None:
            finished = finished.replace(tzinfo=UTC)
        walls["finished"] = finished.timestamp()
        marks.update({k: v - wall0 for k, v in walls.items()})
        run = PlatformRun(name=name, vm_id=vm_id, total_s=t_seen - t0, marks=marks)
        self.delete(name)
        return run

    def disk_made(self, vm_id: str) -> float:
        """Wall-clock time the VM's root disk was made: its localfs directory's mtime (a
        storage benchmark overrides this for other backends)."""
        return self.disks.disk_path(vm_id).parent.stat().st_mtime

    def delete(self, name: str) -> None:
        op = self.client.delete(f"/instances/{name}")
        self.client.wait(op, lambda _op: None, timeout=DELETE_TIMEOUT_S, interval=0.1)
        self.created.pop(name, None)

    def cleanup(self) -> list[str]:
        """Delete what is left through the API; the ids it could not delete are returned."""
        left = []
        for name, vm_id in list(self.created.items()):
            try:
                self.delete(name)
            except Exception as e:  # cleanup goes on; the caller undefines what is left
                print(f"cleanup: could not delete {name} through the API: {e}", file=sys.stderr)
                left.append(vm_id)
        return left


def import_image(lay: allinone.Layout, token: str, image: Path, root: Path) -> None:
    """`vauban image import`, as an operator (and the e2e tests) would."""
    env = {**os.environ, "VAUBAN_URL": lay.url, "VAUBAN_TOKEN": token,
           "VAUBAN_CA_FILE": str(lay.ca_file), "VAUBAN_CONFIG": str(root / "cli.json")}
    out = subprocess.run([str(allinone.VENV_BIN / "vauban"), "image", "import", str(image),
                          "--name", IMAGE_NAME], env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    if out.returncode != 0:
        raise BenchError(f"image import failed: {out.stderr.strip()}{out.stdout.strip()}")


# -- report -------------------------------------------------------------------------------------

def fmt(value: float | None) -> str:
    return "-" if value is None else f"{ms(value):.1f}"


def median_of(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def report(base: list[BaselineRun], plat: list[PlatformRun], header: list[str]) -> dict[str, Any]:
    out = print
    for line in header:
        out(line)
    out("\nBaseline, raw libvirt (defineXML + create), ms")
    out(f"  {'vm':>3} {'define':>8} {'create':>8} {'total':>8} {'started':>8}")
    for i, b in enumerate(base, 1):
        out(f"  {i:>3} {fmt(b.define_s):>8} {fmt(b.create_s):>8} {fmt(b.total_s):>8} "
            f"{fmt(b.started_event_s):>8}")
    out("      started: libvirt's started event, after defineXML was called")
    out("\nPlatform, POST /api/v1/instances -> operation succeeded, ms after the POST was sent")
    keys = [k for k, _ in MILESTONES]
    out(f"  {'vm':>3} " + " ".join(f"{k:>9}" for k in keys))
    for i, p in enumerate(plat, 1):
        out(f"  {i:>3} " + " ".join(f"{fmt(p.marks.get(k)):>9}" for k in keys))
    for k, what in MILESTONES:
        out(f"      {k:>9}: {what}")
    out("\nPlatform path, median of each segment, ms (baseline's same step alongside)")
    same_step = {
        "define": median_of([b.define_s for b in base]),
        "start (create)": median_of([None if b.started_event_s is None
                                     else b.started_event_s - b.define_s for b in base]),
    }
    for label, start, end in SEGMENTS:
        seg = fmt(median_of([p.segment(start, end) for p in plat]))
        alongside = f"   baseline {fmt(same_step[label])}" if label in same_step else ""
        out(f"  {label:<18} {seg:>8}{alongside}")
    med_base = statistics.median(b.total_s for b in base)
    med_plat = statistics.median(p.total_s for p in plat)
    overhead = med_plat - med_base
    met = ms(overhead) <= TARGET_OVERHEAD_MS
    out("\nSummary")
    define = fmt(median_of([b.define_s for b in base]))
    create = fmt(median_of([b.create_s for b in base]))
    out(f"  median baseline   {fmt(med_base):>8} ms  (define {define}, create {create})")
    out(f"  median platform   {fmt(med_plat):>8} ms  (202 after "
        f"{fmt(median_of([p.marks.get('accepted') for p in plat]))})")
    out(f"  ratio             {med_plat / med_base:>8.2f}")
    out(f"  overhead          {fmt(overhead):>8} ms  target <= {TARGET_OVERHEAD_MS:.0f} ms: "
        f"{'MET' if met else 'NOT MET'}")
    return {
        "baseline_ms": [{"define": ms(b.define_s), "create": ms(b.create_s),
                         "total": ms(b.total_s),
                         "started_event": None if b.started_event_s is None
                         else ms(b.started_event_s)} for b in base],
        "platform_ms": [{"total": ms(p.total_s), **{k: ms(v) for k, v in p.marks.items()}}
                        for p in plat],
        "median_baseline_ms": ms(med_base), "median_platform_ms": ms(med_plat),
        "ratio": round(med_plat / med_base, 2), "overhead_ms": ms(overhead),
        "target_ms": TARGET_OVERHEAD_MS, "target_met": met,
    }


def host_header(count: int, memory_mib: int, kvm_usable: bool, kvm_detail: str,
                poll_ms: float, driver: LibvirtDriver) -> list[str]:
    conn = driver.host.connection()
    lib = conn.getLibVersion()
    hv = conn.getVersion()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return [
        f"Provisioning benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on "
        f"{os.uname().nodename}: {os.cpu_count()} CPUs, {mem_gib:.0f} GiB, load average "
        f"{os.getloadavg()[0]:.2f} (other processes share these CPUs)",
        f"libvirt {lib // 1000000}.{lib // 1000 % 1000}.{lib % 1000}, "
        f"QEMU {hv // 1000000}.{hv // 1000 % 1000}.{hv % 1000}, domain type "
        f"{'kvm' if kvm_usable else 'qemu (TCG)'}: {kvm_detail}",
        f"{count} VMs each way, {VCPUS} vCPU / {memory_mib} MiB, test guest; each VM removed "
        "before the next; one warm-up VM per side not counted (the platform one downloads "
        f"the image to the node: not measured); poll every {poll_ms:g} ms",
    ]


# -- main ---------------------------------------------------------------------------------------

def cleanup_step(what: str, fn: Callable[[], object]) -> None:
    """Run one cleanup step; a failure is reported and the next steps still run."""
    try:
        fn()
    except Exception as e:
        print(f"cleanup: {what} failed: {e}", file=sys.stderr)


def run(args: argparse.Namespace) -> dict[str, Any]:
    start_event_loop()
    started = ensure_libvirtd(LIBVIRT_URI)
    try:
        return measure(args)
    finally:
        cleanup_step("stop libvirt daemons", lambda: stop_daemons(started))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Both sides in one throwaway directory and region; everything made is removed."""
    tag = uuid.uuid4().hex[:6]
    root = Path("/var/tmp") / f"vauban-bench-{tag}"
    root.mkdir(mode=0o711)
    root.chmod(0o711)  # explicit: mkdir's mode is filtered by the umask
    lay = allinone.Layout(root, free_port())
    driver = LibvirtDriver(LIBVIRT_URI, accelerated=False)  # domain type set after the probe
    events: DomainEvents | None = None
    baseline: Baseline | None = None
    platform_: Platform | None = None
    try:
        wait_host_alone(driver, args.wait_alone)
        image = build(REPO / "var/images/testguest.raw", REPO / "var/cache/testguest").image
        events = DomainEvents(LIBVIRT_URI)
        allinone.start_controller(lay)
        token = allinone.admin_token(lay)
        allinone.join_agent(lay, token, f"bench-{tag}")
        # The agent reads this cache when it starts: both sides use the same domain type.
        cfg = AgentConfig(data_dir=lay.agent_dir)
        kvm = probe_kvm(timeout=cfg.kvm_probe_timeout_s, cache=cfg.kvm_probe_cache)
        driver = LibvirtDriver(LIBVIRT_URI, accelerated=kvm.usable)
        header = host_header(args.count, args.memory, kvm.usable, kvm.detail, args.poll_ms,
                             driver)

        print("baseline: warm-up + measured VMs ...", flush=True)
        baseline = Baseline(driver, events, image, root / "baseline", args.memory)
        baseline.run_one(f"bench-{tag}-b0")  # warm-up, not counted
        base = [baseline.run_one(f"bench-{tag}-b{i}") for i in range(1, args.count + 1)]

        wait_host_alone(driver, args.wait_alone)
        allinone.start_agent(lay)
        allinone.wait_node_up(lay, token)
        import_image(lay, token, image, root)
        platform_ = Platform(lay, token, events, args.memory, args.poll_ms / 1000)
        node = platform_.client.get(f"/nodes/bench-{tag}")
        if bool(node["kvm_usable"]) != kvm.usable:
            raise BenchError("the agent chose another domain type than the baseline used")
        print("platform: warm-up (image download to the node) + measured VMs ...", flush=True)
        platform_.run_one(f"bench-{tag}-p0")  # warm-up, not counted: caches the image
        plat = [platform_.run_one(f"bench-{tag}-p{i}") for i in range(1, args.count + 1)]
        return report(base, plat, header)
    finally:
        leftover: list[str] = []
        if platform_ is not None:
            leftover = platform_.cleanup()
        cleanup_step("stop agent", lambda: lay.service("agent").stop())
        cleanup_step("stop controller", lambda: lay.service("controller").stop())
        for vm_id in leftover:
            cleanup_step(f"undefine {vm_id}", functools.partial(driver.undefine, vm_id))
        if baseline is not None:
            cleanup_step("remove baseline VMs", baseline.cleanup)
        if events is not None:
            cleanup_step("close event connection", events.close)
        driver.host.close()
        if args.logs is not None:
            cleanup_step("keep logs", lambda: shutil.copytree(root / "log", args.logs,
                                                              dirs_exist_ok=True))
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/provision.py",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--count", type=int, default=5, help="measured VMs each way (default 5)")
    p.add_argument("--memory", type=int, default=256, help="MiB per VM (default 256)")
    p.add_argument("--poll-ms", type=float, default=20.0,
                   help="operation poll interval (default 20)")
    p.add_argument("--wait-alone", type=float, default=0.0,
                   help="seconds to wait for other Vauban agents and VMs on this host to go "
                        "(default 0: only say so)")
    p.add_argument("--logs", type=Path,
                   help="copy the controller's and agent's logs to this directory at the end")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be at least 1")
    if os.geteuid() != 0:
        print("bench/provision.py: run as root (it starts VMs on qemu:///system)",
              file=sys.stderr)
        return 1
    try:
        results = run(args)
    except KeyboardInterrupt:
        print("bench/provision.py: interrupted (cleaned up)", file=sys.stderr)
        return 130
    except (BenchError, ApiError, HypervisorError, StorageError, HostPrepError, OSError,
            subprocess.SubprocessError, libvirt.libvirtError, requests.RequestException) as e:
        print(f"bench/provision.py: {e}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(
            {**results, "args": {k: str(v) for k, v in vars(args).items()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
