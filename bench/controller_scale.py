"""Controller scale benchmark: API latency beside 100 to 10,000 long-polling agents.

    .venv/bin/python bench/controller_scale.py [--sizes 100,1000,10000] [--vms-per-node 2]
        [--databases sqlite,postgresql] [--api-clients 10] [--api-rate 50] [--seconds 30]
        [--json F] [--logs DIR] [--node-down-after 30] [--node-keepalive 900]
        [--workers 1,2]

For each database and each size a fresh controller (the real `vauban-controller serve`
process) is started on a throwaway data directory (PostgreSQL: a private server from
Debian's packages on a Unix socket). Its database is seeded directly with the nodes
(each with its own certificate from the region CA), two images and `--vms-per-node`
VMs per node, so the desired states carry thousands of VMs.

Then, in one asyncio process (bench/agent_swarm.py), each node is a simulated agent
speaking the agent's real protocol over mutual TLS, from its own loopback source
address (127.1.0.0/16): a long-poll of its desired state and a status report every
5 s at least, at the interval the controller names for the region's size, and after
every change. Beside them, `--api-clients` threads send operator requests (status, show
a node, show a VM, recent operations, images) for `--seconds` seconds at `--api-rate`
requests a second in all, each on a fixed schedule: a request's latency counts from
when it was due, so a server that falls behind is charged for the wait (no coordinated
omission).

On PostgreSQL each size runs once per `--workers` count (controller worker processes);
SQLite is served by one.

Measured per size: API latency p50/p99 and errors; failed agent requests by cause;
the controller's memory (RSS of its workers together); and the time for a desired-state change
of every node (an image deleted: each node drops its copy) to reach every agent.
The baseline is the same API load with no agent at all, measured in the same run on
the same database; ratios are against it. Everything made is removed at the end:
processes by PID, directories, the PostgreSQL server.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.protocol import (  # noqa: E402
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    REPORT_INTERVAL_HEADER,
    NodeStatus,
    ObservedVm,
    ObservedVmState,
)
from controller import allinone  # noqa: E402
from controller.bootstrap import open_region  # noqa: E402
from controller.config import ControllerConfig  # noqa: E402
from controller.db.models import Image, Instance, Node  # noqa: E402
from controller.serving import raise_open_files_limit  # noqa: E402
from tests.e2e.region import free_port  # noqa: E402
from tests.functional.helpers import inventory, storage  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402

HEARTBEAT_S = 5.0  # the agent's default (agent/config.py)
POLL_WAIT_S = 25.0
READY_TIMEOUT_S = 900.0
CHANGE_TIMEOUT_S = 600.0
FREE_MARK = 123456789012345  # stands in the status template for the free bytes of each report


@dataclass
class Result:
    database: str
    nodes: int
    vms: int
    workers: int = 1  # controller worker processes (more than one on PostgreSQL only)
    api_requests: int = 0
    api_errors: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    agent_errors: dict[str, int] = field(default_factory=dict)
    connect_s: float = 0.0  # until every agent had its first desired state and report taken
    connected: int = 0  # agents that had it (all of them, unless READY_TIMEOUT_S passed)
    change_reach_s: float | None = None  # image delete -> every agent has the new generation
    change_p50_s: float | None = None
    controller_rss_mib: float = 0.0
    report_interval_s: float = 0.0  # as the controller named it to the agents
    agent_requests_per_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Seeded:
    node_ids: list[str]
    instance_ids: list[str]
    spare_image: str
    specs: list[dict[str, Any]]


def seed(config: ControllerConfig, nodes: int, vms_per_node: int, certs: Path) -> Seeded:
    """Nodes with certificates, two images and the VMs, written straight to the database."""
    region = open_region(config)
    key = ec.generate_private_key(ec.SECP256R1())  # one key, a certificate per node
    key_file = certs / "node.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    used, spare = str(uuid.uuid4()), str(uuid.uuid4())
    node_ids, instance_ids, specs = [], [], []
    with region.sessions() as db:
        for image_id, name in ((used, "used"), (spare, "spare")):
            db.add(Image(id=image_id, name=name, disk_format="raw", size_bytes=1 << 20,
                         virtual_size_bytes=1 << 20, sha256="0" * 64))
        for i in range(nodes):
            node_id, name = str(uuid.uuid4()), f"sim-{i:05d}"
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .sign(key, hashes.SHA256()))
            cert, serial, _ = region.ca.sign_node_csr(
                csr.public_bytes(serialization.Encoding.PEM).decode(), node_id)
            (certs / f"{i}.pem").write_bytes(cert)
            db.add(Node(id=node_id, name=name, cert_serial=serial, cpus=64,
                        memory_mib=262144, generation=1))
            vms = []
            for v in range(vms_per_node):
                vm_id = str(uuid.uuid4())
                db.add(Instance(id=vm_id, name=f"vm-{i:05d}-{v}", node_id=node_id,
                                image_id=used, vcpus=1, memory_mib=512, hostname=f"vm{v}"))
                vms.append(ObservedVm(id=vm_id, name=f"vm-{i:05d}-{v}",
                                      state=ObservedVmState.RUNNING, power_seq=1))
                instance_ids.append(vm_id)
            status = NodeStatus(applied_generation=1, inventory=inventory(cpus=64), vms=vms,
                                storage=storage(total_bytes=10**15, free_bytes=FREE_MARK),
                                sent_at=datetime.now(UTC))
            text = status.model_dump_json().replace(
                json.dumps(status.model_dump(mode="json")["sent_at"]), '"SENT_AT"').replace(
                str(FREE_MARK), '"FREE_BYTES"')
            specs.append({"id": node_id, "cert": str(certs / f"{i}.pem"), "key": str(key_file),
                          "source": f"127.1.{i // 250}.{i % 250 + 1}", "status": text})
            node_ids.append(node_id)
            if i % 500 == 499:
                db.commit()
        db.commit()
    region.engine.dispose()
    return Seeded(node_ids, instance_ids, spare, specs)


class ApiLoad:
    """`clients` threads sending operator requests, `rate` a second in all, until stopped."""

    def __init__(self, url: str, ca: str, token: str, seeded: Seeded, clients: int,
                 rate: float) -> None:
        self.url, self.ca, self.seeded = url, ca, seeded
        self.period_s = clients / rate  # between two requests of one client
        self.headers = {"Authorization": f"Bearer {token}"}
        self.latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                         for n in range(clients)]

    def _paths(self, rng: random.Random) -> Iterator[str]:
        while True:
            yield "/api/v1/status"
            if self.seeded.node_ids:
                yield f"/api/v1/nodes/{rng.choice(self.seeded.node_ids)}"
            if self.seeded.instance_ids:
                yield f"/api/v1/instances/{rng.choice(self.seeded.instance_ids)}"
            yield "/api/v1/operations?limit=20"
            yield "/api/v1/images"

    def _client(self, n: int) -> None:
        http = requests.Session()
        rng = random.Random(n)
        paths = self._paths(rng)
        due = time.perf_counter() + rng.uniform(0, self.period_s)
        while not self._stop.wait(max(0.0, due - time.perf_counter())):
            path = next(paths)
            started, due = due, due + self.period_s
            try:
                ok = http.get(self.url + path, headers=self.headers, verify=self.ca,
                              timeout=60).status_code == 200
            except requests.RequestException:
                ok = False
            took = time.perf_counter() - started
            with self._lock:
                self.latencies.append(took)
                self.errors += not ok

    def run(self, seconds: float) -> None:
        for t in self._threads:
            t.start()
        self._stop.wait(seconds)
        self._stop.set()
        for t in self._threads:
            t.join()


class SwarmProcess:
    """bench/agent_swarm.py as a child process; its stdout lines are read as they come."""

    def __init__(self, spec: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "agent_swarm.py"),
                                      str(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self.lines.append({"exited": self.proc.wait()})
            self._cond.notify_all()

    def wait_for(self, key: str, timeout: float) -> dict[str, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: any(key in m or "exited" in m
                                                   for m in self.lines), timeout):
                raise TimeoutError(f"the agent swarm sent no '{key}' in {timeout:.0f}s")
            line = next(m for m in self.lines if key in m or "exited" in m)
        if "exited" in line:
            raise RuntimeError(f"the agent swarm exited with {line['exited']}")
        return line

    def last(self, key: str) -> int:
        with self._cond:
            return next((int(m[key]) for m in reversed(self.lines) if key in m), 0)

    def finish(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.wait_for("received", 300)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def worker_rss_mib(arbiter_pid: int) -> float:
    """Resident memory of the controller's worker processes (the arbiter's children)."""
    children = Path(f"/proc/{arbiter_pid}/task/{arbiter_pid}/children").read_text().split()
    total = 0
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def empty_database(db_url: str) -> None:
    """Drop everything the last size left in the PostgreSQL database."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run_size(database: str, db_url: str, nodes: int, vms_per_node: int, api_clients: int,
             api_rate: float, seconds: float, logs: Path | None = None,
             down_after_s: float = 30.0, node_keepalive_s: float = 900.0,
             workers: int = 1) -> Result:
    root = Path("/var/tmp") / f"vauban-scale-{uuid.uuid4().hex[:8]}"
    (root / "certs").mkdir(parents=True)
    layout = allinone.Layout(root, free_port())
    config = ControllerConfig(data_dir=layout.controller_dir, database_url=db_url,
                              node_down_after_s=down_after_s)
    result = Result(database, nodes, nodes * vms_per_node, workers)
    swarm: SwarmProcess | None = None
    try:
        if db_url:
            empty_database(db_url)  # one server for every size: each starts from nothing
        seeded = seed(config, nodes, vms_per_node, root / "certs")
        env = {"VAUBAN_DATABASE_URL": db_url, "VAUBAN_MAX_CONNECTIONS": str(3 * nodes + 1000),
               "VAUBAN_NODE_DOWN_AFTER": str(down_after_s),
               "VAUBAN_NODE_KEEPALIVE": str(node_keepalive_s), "VAUBAN_WORKERS": str(workers)}
        pid = allinone.start_controller(layout, env)
        token = allinone.admin_token(layout)
        if nodes:
            spec = root / "swarm.json"
            spec.write_text(json.dumps({
                "url": layout.url, "ca_pem": layout.ca_file.read_text(),
                "heartbeat_s": HEARTBEAT_S, "poll_wait_s": POLL_WAIT_S,
                "nodes": seeded.specs}))
            started = time.monotonic()
            swarm = SwarmProcess(spec)
            try:
                swarm.wait_for("ready", READY_TIMEOUT_S)
                result.connected = nodes
                # the API is measured once the region has settled: every first report taken
                swarm.wait_for("all_reported", READY_TIMEOUT_S)
            except TimeoutError:  # measured all the same: the curve shows where it breaks
                result.connected = swarm.last("connected")
            result.connect_s = time.monotonic() - started
        load = ApiLoad(layout.url, str(layout.ca_file), token, seeded, api_clients, api_rate)
        load.run(seconds)
        result.report_interval_s = float(requests.get(
            f"{layout.url}/agent/v1/nodes/none/desired", verify=str(layout.ca_file),
            timeout=60, headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)}
        ).headers.get(REPORT_INTERVAL_HEADER, "nan"))
        result.api_requests, result.api_errors = len(load.latencies), load.errors
        result.p50_ms = 1000 * statistics.median(load.latencies)
        result.p99_ms = 1000 * percentile(load.latencies, 0.99)
        result.controller_rss_mib = worker_rss_mib(pid)
        if swarm is not None:
            _measure_change(layout, token, seeded, swarm, result)
    finally:
        if swarm is not None:
            swarm.kill()
        layout.service("controller").stop()
        if logs is not None and layout.service("controller").logfile.exists():
            # the access log gives each request's time inside the server
            logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(layout.service("controller").logfile,
                        logs / f"controller-{database}-{workers}w-{nodes}.log")
        shutil.rmtree(root, ignore_errors=True)
    return result


def _measure_change(layout: allinone.Layout, token: str, seeded: Seeded, swarm: SwarmProcess,
                    result: Result) -> None:
    """Delete the spare image (every node's desired state changes); time until all have it."""
    changed_at = time.time()
    r = requests.delete(f"{layout.url}/api/v1/images/{seeded.spare_image}", timeout=600,
                        verify=str(layout.ca_file), headers={"Authorization": f"Bearer {token}"})
    r.raise_for_status()
    try:
        swarm.wait_for("all_have", CHANGE_TIMEOUT_S)
    except TimeoutError as e:
        print(f"  {e}", flush=True)
    summary = swarm.finish()
    times = summary["received"].get("2", [])
    result.agent_errors = summary["errors"]
    result.agent_requests_per_s = {k: round(v, 1) for k, v in summary["per_s"].items()}
    if len(times) == len(seeded.node_ids):
        result.change_reach_s = max(times) - changed_at
        result.change_p50_s = statistics.median(times) - changed_at


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--vms-per-node", type=int, default=2)
    p.add_argument("--databases", default="sqlite,postgresql")
    p.add_argument("--api-clients", type=int, default=10)
    p.add_argument("--api-rate", type=float, default=50.0, help="API requests a second")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--logs", type=Path, help="keep each controller's log in this directory")
    p.add_argument("--node-down-after", type=float, default=30.0,
                   help="VAUBAN_NODE_DOWN_AFTER: the agents' poll wait is this less 5 s")
    p.add_argument("--node-keepalive", type=float, default=900.0,
                   help="VAUBAN_NODE_KEEPALIVE: below the report interval, the reports' "
                        "connections close between reports (two per agent need 2 fds)")
    p.add_argument("--workers", default="1",
                   help="controller worker processes to compare on PostgreSQL, e.g. 1,2")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    raise_open_files_limit(3 * max(sizes) + 1000)
    results: list[Result] = []
    for database in args.databases.split(","):
        counts = [int(w) for w in args.workers.split(",")] if database == "postgresql" else [1]
        with postgres_server() if database == "postgresql" else nullcontext("") as url:
            for workers in counts:
                for nodes in [0, *sizes]:
                    print(f"[{database}, {workers} worker(s)] {nodes} nodes ...", flush=True)
                    res = run_size(database, url, nodes, args.vms_per_node, args.api_clients,
                                   args.api_rate, args.seconds, args.logs,
                                   args.node_down_after, args.node_keepalive, workers)
                    results.append(res)
                    print_row(res, results)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


def print_row(r: Result, results: list[Result]) -> None:
    base = next(b for b in results
                if b.database == r.database and b.workers == r.workers and b.nodes == 0)
    reach = f"{r.change_reach_s:.2f} s (p50 {r.change_p50_s:.2f} s)" \
        if r.change_reach_s is not None else "n/a"
    print(f"  {r.database:10} workers={r.workers} nodes={r.nodes:6} vms={r.vms:6} api: "
          f"{r.api_requests} requests, "
          f"{r.api_errors} errors, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms "
          f"(x{r.p99_ms / base.p99_ms:.1f} of no agents) | {r.connected} agents connected in "
          f"{r.connect_s:.0f} s | "
          f"change reaches all in {reach} | rss {r.controller_rss_mib:.0f} MiB | "
          f"report interval {r.report_interval_s:g} s, agent requests/s "
          f"{r.agent_requests_per_s or 0} | agent errors {r.agent_errors or 0}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
