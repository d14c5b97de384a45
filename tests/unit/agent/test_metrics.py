"""The agent's metrics: collectors over fake sources, and the listener's TLS rules."""

from __future__ import annotations

import os
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import (
    AgentCollector,
    DomainStats,
    MetricsServer,
    TlsFiles,
    gpu_metrics,
    serve_metrics,
)
from agent.protocol import GpuTelemetry, NodeGpu, NvmlGpu, PoolUsage, StorageStatus, XidEvent
from agent.storage_sampler import StorageView
from controller.main import issue_scraper_cert
from controller.pki import RegionCA, key_pem, new_key
from hardware.model import GpuInfo

VM = "6f1c0a52-0000-4000-8000-000000000001"
FOREIGN = "6f1c0a52-0000-4000-8000-0000000000ff"
STATS: DomainStats = [
    (VM, {"state.state": 1, "cpu.time": 2_500_000_000, "balloon.current": 65536,
          "balloon.rss": 32768, "block.count": 1, "block.0.name": "vda",
          "block.0.rd.bytes": 4096, "block.0.rd.reqs": 2, "block.0.wr.bytes": 8192,
          "block.0.wr.reqs": 3, "net.count": 1, "net.0.name": "vnet7",
          "net.0.rx.bytes": 100, "net.0.rx.pkts": 1, "net.0.tx.bytes": 200,
          "net.0.tx.pkts": 2}),
    (FOREIGN, {"cpu.time": 1}),
]


def proc(tmp_path: Path) -> Path:
    (tmp_path / "stat").write_text("cpu  100 0 50 1000 5 0 0 0 0 0\ncpu0 100 0 50 1000 5 0 0 0\n")
    (tmp_path / "meminfo").write_text("MemTotal:       8000 kB\nMemFree:  10 kB\n"
                                      "MemAvailable:   6000 kB\n")
    return tmp_path


def scrape(collector: AgentCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def storage() -> StorageView:
    return StorageView(StorageStatus(driver="localfs", health="HEALTH_OK", pools=[
        PoolUsage(pool="localfs", used_bytes=10, max_avail_bytes=90)]), 90, None)


def collector(tmp_path: Path, stats: DomainStats = STATS, gpus: list[NodeGpu] | None = None,
              ) -> AgentCollector:
    def read() -> DomainStats:
        return stats

    return AgentCollector(lambda: {VM: "web-1"}, read, lambda: gpus or [], storage,
                          proc(tmp_path))


def test_vm_counters_come_from_libvirt_for_our_vms_only(tmp_path: Path) -> None:
    got = scrape(collector(tmp_path))
    vm = (("name", "web-1"), ("vm", VM))
    assert got[("vauban_vm_cpu_seconds_total", vm)] == 2.5
    assert got[("vauban_vm_memory_bytes", vm)] == 64 * 1024 * 1024
    assert got[("vauban_vm_disk_write_bytes_total", (("device", "vda"), *vm))] == 8192
    assert got[("vauban_vm_disk_read_ops_total", (("device", "vda"), *vm))] == 2
    assert got[("vauban_vm_network_transmit_packets_total",
                (("interface", "vnet7"), *vm))] == 2
    assert not any(FOREIGN in str(labels) for _, labels in got)
    assert got[("vauban_hypervisor_up", ())] == 1


def test_node_cpu_memory_and_storage(tmp_path: Path) -> None:
    got = scrape(collector(tmp_path))
    ticks = os.sysconf("SC_CLK_TCK")
    assert got[("vauban_node_cpu_seconds_total", (("mode", "idle"),))] == 1000 / ticks
    assert got[("vauban_node_memory_total_bytes", ())] == 8000 * 1024
    assert got[("vauban_node_memory_available_bytes", ())] == 6000 * 1024
    assert got[("vauban_node_storage_free_bytes", ())] == 90
    assert got[("vauban_node_storage_pool_used_bytes",
                (("driver", "localfs"), ("pool", "localfs")))] == 10


def test_libvirt_down_still_serves_the_node(tmp_path: Path) -> None:
    def broken() -> DomainStats:
        raise OSError("libvirtd is away")

    c = AgentCollector(lambda: {VM: "web-1"}, broken, lambda: [], storage, proc(tmp_path))
    got = scrape(c)
    assert got[("vauban_hypervisor_up", ())] == 0
    assert ("vauban_node_memory_total_bytes", ()) in got


def gpu(telemetry: GpuTelemetry | None) -> NodeGpu:
    pci = GpuInfo(address="0000:17:00.0", device_id="2330", model="H100", driver="nvidia",
                  iommu_group=None, group_devices=[], numa_node=None, boot_vga=False,
                  mdev_types=[], passthrough_blocker=None)
    return NodeGpu(pci=pci, nvml=None if telemetry is None else NvmlGpu(
        address="0000:17:00.0", name="NVIDIA H100", uuid="GPU-1", telemetry=telemetry))


def test_no_gpu_means_no_gpu_series_not_zeros() -> None:
    assert list(gpu_metrics([])) == []
    assert list(gpu_metrics([gpu(None)])) == []  # a GPU no nvidia driver reads


def test_gpu_readings_the_gpu_gives_and_its_last_xid(tmp_path: Path) -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    telemetry = GpuTelemetry(utilization_pct=40, temperature_c=61, power_w=300.5,
                             memory_used_bytes=1024, xid_events=[
                                 XidEvent(xid=13, at=at), XidEvent(xid=79, at=at)])
    got = scrape(collector(tmp_path, gpus=[gpu(telemetry)]))
    labels = (("gpu", "0000:17:00.0"), ("model", "NVIDIA H100"), ("uuid", "GPU-1"))
    assert got[("vauban_gpu_utilization_ratio", labels)] == 0.4
    assert got[("vauban_gpu_temperature_celsius", labels)] == 61
    assert got[("vauban_gpu_power_watts", labels)] == 300.5
    assert got[("vauban_gpu_last_xid", labels)] == 79
    assert ("vauban_gpu_ecc_uncorrected_errors", labels) not in got  # not reported: absent


def test_plain_http_only_on_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        MetricsServer(CollectorRegistry(), "192.0.2.1", 0, None)


def test_the_listener_requires_a_client_certificate_of_the_region(tmp_path: Path) -> None:
    ca = RegionCA(tmp_path / "pki")
    ca.ensure(["localhost"])
    node_cert, node_key = _node_cert(ca, "node-1", tmp_path / "node")
    scraper_cert, scraper_key = issue_scraper_cert(ca, "prometheus", tmp_path / "p", _days(1))
    other = RegionCA(tmp_path / "other-pki")
    other.ensure(["localhost"])
    stranger_cert, stranger_key = issue_scraper_cert(other, "x", tmp_path / "x", _days(1))
    server = serve_metrics(collector(tmp_path), "127.0.0.1", 0,
                           TlsFiles(node_cert, node_key, ca.cert_path))
    try:
        port = server.server_address[1]
        body = _get(port, "node-1", _client(ca.cert_path, scraper_cert, scraper_key))
        assert b"vauban_vm_cpu_seconds_total" in body
        for ctx in (_client(ca.cert_path, stranger_cert, stranger_key),
                    _client(ca.cert_path, None, None)):
            with pytest.raises((ssl.SSLError, OSError)):
                _get(port, "node-1", ctx)
        # the scraper verifies the listener too: by the region CA and the node's name
        with pytest.raises(ssl.SSLCertVerificationError):
            _get(port, "node-2", _client(ca.cert_path, scraper_cert, scraper_key))
        with pytest.raises(ssl.SSLCertVerificationError):
            _get(port, "node-1", _client(other.cert_path, scraper_cert, scraper_key))
    finally:
        server.stop()


def _days(n: int) -> timedelta:
    return timedelta(days=n)


def _node_cert(ca: RegionCA, node_id: str, out: Path) -> tuple[Path, Path]:
    """A node's certificate, as the controller signs it when the node joins."""
    key = new_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, node_id)])).sign(key, hashes.SHA256())
    issued = ca.sign_node_csr(csr.public_bytes(serialization.Encoding.PEM).decode(), node_id)
    out.mkdir(parents=True)
    (out / "node.key").write_bytes(key_pem(key))
    (out / "node.pem").write_bytes(issued.pem)
    return out / "node.pem", out / "node.key"


def _get(port: int, node_name: str, ctx: ssl.SSLContext) -> bytes:
    """GET /metrics from the listener on this host's loopback, verified as `node_name`."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname=node_name) as tls:
        tls.sendall(b"GET /metrics HTTP/1.0\r\nHost: " + node_name.encode() + b"\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data


def _client(ca_file: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """A scraper's TLS: the listener verified against `ca_file`, its own certificate given."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def test_settings_refuse_plain_http_beyond_loopback(tmp_path: Path) -> None:
    from agent.settings_file import SettingsFileError, read_settings

    path = tmp_path / "agent.toml"
    path.write_text('metrics_address = "10.0.0.5"\nmetrics_tls = false\n')
    with pytest.raises(SettingsFileError, match="loopback"):
        read_settings(path)
    path.write_text('metrics_address = "127.0.0.1"\nmetrics_tls = false\nmetrics_port = 9100\n')
    assert read_settings(path) == {"metrics_address": "127.0.0.1", "metrics_tls": False,
                                   "metrics_port": 9100}
