"""The agent's Prometheus metrics and the listener that serves them (docs/metrics.md).

What a scrape reads, at the scrape and nowhere else:

- the VMs of the desired state, with libvirt's statistics of all running domains read in
  one `getAllDomainStats` call (CPU time, memory, disk and network counters);
- the node's CPU time and memory (/proc/stat, /proc/meminfo) and its storage as the
  storage sampler last saw it (no call to the backend: one that hangs never holds a scrape);
- the GPUs through NVML where the driver reports them. A node without an NVIDIA GPU has
  no GPU series at all (not zeros), and a reading a GPU does not give is left out.

The listener is off unless `metrics_address` is set (agent/settings_file.py). It speaks
TLS with the node's own certificate and requires a client certificate issued by the region
CA (`vauban-controller metrics-client-cert` makes one for Prometheus). Plain HTTP is
accepted only on a loopback address (`metrics_tls = false`), for a Prometheus on the node.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.protocol import NodeGpu
from agent.storage_sampler import StorageView

log = logging.getLogger(__name__)

DEFAULT_PORT = 9475
MAX_SCRAPES = 8  # connections served at once; more are closed at once
SCRAPE_IDLE_S = 10.0  # a peer silent this long (handshake included) is dropped
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
NS = 1e-9

DomainStats = list[tuple[str, dict[str, object]]]


def _num(stats: dict[str, object], key: str) -> float | None:
    value = stats.get(key)
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class _Family:
    name: str
    doc: str
    key: str  # the libvirt statistic after `block.<i>.` or `net.<i>.`
    counter: bool = True


VM_DISK = (_Family("vauban_vm_disk_read_bytes", "Bytes read from the VM's disk", "rd.bytes"),
           _Family("vauban_vm_disk_write_bytes", "Bytes written to the VM's disk", "wr.bytes"),
           _Family("vauban_vm_disk_read_ops", "Read requests of the VM's disk", "rd.reqs"),
           _Family("vauban_vm_disk_write_ops", "Write requests of the VM's disk", "wr.reqs"))
VM_NET = (
    _Family("vauban_vm_network_receive_bytes", "Bytes the VM's interface received", "rx.bytes"),
    _Family("vauban_vm_network_transmit_bytes", "Bytes the VM's interface sent", "tx.bytes"),
    _Family("vauban_vm_network_receive_packets", "Packets the VM's interface received",
            "rx.pkts"),
    _Family("vauban_vm_network_transmit_packets", "Packets the VM's interface sent", "tx.pkts"))


def _family(f: _Family, labels: list[str]) -> CounterMetricFamily | GaugeMetricFamily:
    kind = CounterMetricFamily if f.counter else GaugeMetricFamily
    return kind(f.name, f.doc, labels=labels)


def vm_metrics(vms: dict[str, str], stats: DomainStats) -> Iterator[Metric]:
    """Families of the VMs named in `vms` (id: name) from libvirt's `stats`; domains that
    are not among them (not ours, or being removed) are left out."""
    cpu = CounterMetricFamily("vauban_vm_cpu_seconds", "CPU time the VM used",
                              labels=["vm", "name"])
    memory = GaugeMetricFamily("vauban_vm_memory_bytes", "Memory the VM has (balloon size)",
                               labels=["vm", "name"])
    rss = GaugeMetricFamily("vauban_vm_memory_rss_bytes", "Host memory the VM's process holds",
                            labels=["vm", "name"])
    disks = [_family(f, ["vm", "name", "device"]) for f in VM_DISK]
    nets = [_family(f, ["vm", "name", "interface"]) for f in VM_NET]
    for uuid, values in stats:
        name = vms.get(uuid)
        if name is None:
            continue
        labels = [uuid, name]
        if (ns := _num(values, "cpu.time")) is not None:
            cpu.add_metric(labels, ns * NS)
        if (kib := _num(values, "balloon.current")) is not None:
            memory.add_metric(labels, kib * 1024)
        if (kib := _num(values, "balloon.rss")) is not None:
            rss.add_metric(labels, kib * 1024)
        for prefix, families, specs in (("block", disks, VM_DISK), ("net", nets, VM_NET)):
            for i in range(int(_num(values, f"{prefix}.count") or 0)):
                device = str(values.get(f"{prefix}.{i}.name", i))
                for family, spec in zip(families, specs, strict=True):
                    if (v := _num(values, f"{prefix}.{i}.{spec.key}")) is not None:
                        family.add_metric([*labels, device], v)
    yield from (cpu, memory, rss, *disks, *nets)


def node_metrics(proc: Path, storage: StorageView) -> Iterator[Metric]:
    """The node's CPU time by mode, its memory, and its storage as last sampled."""
    cpu = CounterMetricFamily("vauban_node_cpu_seconds", "CPU time of all the node's CPUs, "
                              "by mode", labels=["mode"])
    ticks = os.sysconf("SC_CLK_TCK")
    for line in (proc / "stat").read_text().splitlines():
        if line.startswith("cpu "):
            for mode, value in zip(CPU_MODES, line.split()[1:], strict=False):
                cpu.add_metric([mode], int(value) / ticks)
            break
    yield cpu
    meminfo = {}
    for line in (proc / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            meminfo[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    for key, name, doc in (("MemTotal", "vauban_node_memory_total_bytes", "The node's memory"),
                           ("MemAvailable", "vauban_node_memory_available_bytes",
                            "Memory available to new processes and VMs")):
        if key in meminfo:
            yield GaugeMetricFamily(name, doc, value=meminfo[key])
    if storage.storage is None:
        return  # not sampled yet: no figure rather than a wrong one
    yield GaugeMetricFamily("vauban_node_storage_free_bytes", "Space left for VM disks "
                            "and volumes", value=storage.free_bytes)
    used = GaugeMetricFamily("vauban_node_storage_pool_used_bytes", "Bytes used in each "
                             "storage pool", labels=["driver", "pool"])
    avail = GaugeMetricFamily("vauban_node_storage_pool_available_bytes", "Bytes that can "
                              "still be written to each storage pool", labels=["driver", "pool"])
    for pool in storage.storage.pools:
        used.add_metric([storage.storage.driver, pool.pool], pool.used_bytes)
        avail.add_metric([storage.storage.driver, pool.pool], pool.max_avail_bytes)
    yield used
    yield avail


GPU_GAUGES = (
    ("utilization_pct", "vauban_gpu_utilization_ratio", "Time the GPU was busy", 0.01),
    ("memory_utilization_pct", "vauban_gpu_memory_utilization_ratio",
     "Time the GPU's memory was being read or written", 0.01),
    ("memory_total_bytes", "vauban_gpu_memory_total_bytes", "The GPU's memory", 1.0),
    ("memory_used_bytes", "vauban_gpu_memory_used_bytes", "The GPU's memory in use", 1.0),
    ("temperature_c", "vauban_gpu_temperature_celsius", "The GPU's temperature", 1.0),
    ("power_w", "vauban_gpu_power_watts", "The GPU's power draw", 1.0),
    ("power_limit_w", "vauban_gpu_power_limit_watts", "The GPU's enforced power limit", 1.0),
    ("ecc_uncorrected_volatile", "vauban_gpu_ecc_uncorrected_errors",
     "Uncorrected ECC errors since the driver loaded", 1.0),
    ("ecc_uncorrected_aggregate", "vauban_gpu_ecc_uncorrected_errors_lifetime",
     "Uncorrected ECC errors over the GPU's life", 1.0),
)


def gpu_metrics(gpus: list[NodeGpu]) -> Iterator[Metric]:
    """Families of the GPUs NVML reads; none at all when no GPU is driven by nvidia."""
    read = [g.nvml for g in gpus if g.nvml is not None]
    if not read:
        return
    labels = ["gpu", "uuid", "model"]
    for field, name, doc, scale in GPU_GAUGES:
        family = GaugeMetricFamily(name, doc, labels=labels)
        for gpu in read:
            value = getattr(gpu.telemetry, field)
            if value is not None:
                family.add_metric([gpu.address, gpu.uuid, gpu.name], value * scale)
        if family.samples:
            yield family
    xid = GaugeMetricFamily("vauban_gpu_last_xid", "Code of the GPU's latest Xid error "
                            "since the agent started", labels=labels)
    when = GaugeMetricFamily("vauban_gpu_last_xid_timestamp_seconds", "When that Xid error "
                             "was reported (Unix time)", labels=labels)
    for gpu in read:
        if gpu.telemetry.xid_events:
            last = gpu.telemetry.xid_events[-1]
            xid.add_metric([gpu.address, gpu.uuid, gpu.name], last.xid)
            when.add_metric([gpu.address, gpu.uuid, gpu.name], last.at.timestamp())
    if xid.samples:
        yield xid
        yield when


class AgentCollector(Collector):
    """Everything the agent exposes, read at each scrape from the sources given."""

    def __init__(self, vms: Callable[[], dict[str, str]], stats: Callable[[], DomainStats],
                 gpus: Callable[[], list[NodeGpu]], storage: Callable[[], StorageView],
                 proc: Path = Path("/proc")) -> None:
        self.vms, self.stats, self.gpus, self.storage, self.proc = vms, stats, gpus, storage, proc

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("vauban_hypervisor_up", "1 when libvirt answered this scrape")
        try:
            stats = self.stats()
            up.add_metric([], 1)
        except Exception as e:  # the node's own figures are still worth serving
            log.warning("metrics: no domain statistics: %s", e)
            stats = []
            up.add_metric([], 0)
        yield up
        yield from vm_metrics(self.vms(), stats)
        yield from node_metrics(self.proc, self.storage())
        yield from gpu_metrics(self.gpus())


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


@dataclass(frozen=True)
class TlsFiles:
    """The node's certificate and key, and the CA whose client certificates are admitted."""

    cert: Path
    key: Path
    ca: Path

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        ctx.load_verify_locations(self.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def stamp(self) -> tuple[int, int]:
        st = self.cert.stat()
        return st.st_ino, st.st_mtime_ns


class MetricsServer(ThreadingHTTPServer):
    """Serves `registry` at GET /metrics on (address, port), over mutual TLS when `tls` is
    given. Refuses (ValueError) plain HTTP on an address that is not loopback. The TLS
    context is built again when the node's certificate file changes (a renewal)."""

    daemon_threads = True

    def __init__(self, registry: CollectorRegistry, address: str, port: int,
                 tls: TlsFiles | None) -> None:
        if tls is None and not is_loopback(address):
            raise ValueError(f"metrics on {address} without TLS: plain HTTP is served on a "
                             "loopback address only")
        self.registry, self.tls = registry, tls
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES)
        self._stamp = tls.stamp() if tls else None
        self._context = tls.context() if tls else None
        if ":" in address:
            self.address_family = socket.AF_INET6
        super().__init__((address, port), _ScrapeHandler)

    def _current_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        try:
            stamp = self.tls.stamp()
            if stamp != self._stamp:
                self._context, self._stamp = self.tls.context(), stamp
        except (OSError, ssl.SSLError) as e:  # mid-renewal: keep the context we have
            log.warning("metrics: the node certificate does not load (yet): %s", e)
        return self._context

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        context = self._current_context()
        if context is None:
            return sock, addr
        # the handshake happens on the handler's thread, at its first read
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="metrics", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _ScrapeHandler(BaseHTTPRequestHandler):
    server: MetricsServer
    timeout = SCRAPE_IDLE_S

    def handle(self) -> None:
        try:
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.do_handshake()  # a client without a region certificate ends here
            super().handle()
        except (ssl.SSLError, OSError) as e:
            log.debug("metrics: connection from %s ended: %s", self.client_address[0], e)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404)
            return
        try:
            body = generate_latest(self.server.registry)
        except Exception:
            log.exception("metrics: a collector failed")
            self.send_error(500)
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("metrics: %s " + format, self.client_address[0], *args)


def serve_metrics(collector: AgentCollector, address: str, port: int,
                  tls: TlsFiles | None) -> MetricsServer:
    """A started MetricsServer for `collector`; OSError when the address cannot be bound."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server = MetricsServer(registry, address, port, tls)
    server.start()
    return server
