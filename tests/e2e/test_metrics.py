"""End to end: the real Prometheus server (Debian's `prometheus`) scrapes a controller of two
workers and an agent's metrics listener, and what it stored matches what the API says."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from controller.allinone import free_port
from tests.conftest import _reset_postgres
from tests.e2e.region import BIN, E2ERegion, wait_for

pytestmark = pytest.mark.e2e

SCRAPED_WITHIN_S = 120  # first scrapes of both targets, on a loaded machine
BOOT_TIMEOUT = 180


@pytest.fixture(scope="module")
def region(libvirtd: str, testguest_image: Path, postgres_url: str) -> Iterator[E2ERegion]:
    _reset_postgres(postgres_url)
    env = {"VAUBAN_DATABASE_URL": postgres_url, "VAUBAN_WORKERS": "2"}
    port = free_port()
    settings = ['metrics_address = "127.0.0.1"', f"metrics_port = {port}"]
    with E2ERegion.running(testguest_image, env, settings) as r:
        yield r


@pytest.fixture
def prometheus(region: E2ERegion) -> Iterator[str]:
    """A Prometheus server on 127.0.0.1 scraping the controller (with the admin's token)
    and the agent (with a client certificate of the region CA) every second; its URL.
    Stopped by its PID afterwards; its files are in the region's folder."""
    binary = shutil.which("prometheus")
    assert binary is not None, "Prometheus is not installed (make deps installs it)"
    home = region.root / "prometheus"
    home.mkdir()
    subprocess.run([str(BIN / "vauban-controller"), "metrics-client-cert", "--data-dir",
                    str(region.layout.controller_dir), "--out", str(home)], check=True)
    (home / "token").write_text(region.token)
    agent_port = _agent_metrics_port(region)
    [node] = json.loads(region.cli("node", "list", "--json"))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": "vauban-controller", "scheme": "https",
             "tls_config": {"ca_file": str(region.layout.ca_file)},
             "authorization": {"credentials_file": str(home / "token")},
             "static_configs": [{"targets": [f"127.0.0.1:{region.layout.port}"]}]},
            # each side verifies the other by the region CA; the agent by its node id
            {"job_name": "vauban-agent", "scheme": "https",
             "tls_config": {"cert_file": str(home / "prometheus.pem"),
                            "key_file": str(home / "prometheus.key"),
                            "ca_file": str(region.layout.ca_file),
                            "server_name": node["id"]},
             "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}]},
        ],
    }
    (home / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = (home / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={home / 'prometheus.yml'}",
         f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _agent_metrics_port(region: E2ERegion) -> int:
    line = next(s for s in region.agent_settings if s.startswith("metrics_port"))
    return int(line.split("=")[1])


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """The instant vector Prometheus answers for `promql` (empty before any scrape)."""
    r = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    if not r.ok:  # still starting
        return []
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def test_prometheus_scrapes_the_controller_and_the_agent(region: E2ERegion,
                                                         prometheus: str) -> None:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
               "--wait")
    vm_id = region.vm(name)["id"]
    # both targets scraped and up
    for job in ("vauban-controller", "vauban-agent"):
        wait_for(lambda job=job: [s for s in query(prometheus, f'up{{job="{job}"}}')
                                  if s["value"][1] == "1"], SCRAPED_WITHIN_S, f"{job} scraped")
    nodes = json.loads(region.cli("node", "list", "--json"))
    up = sum(1 for n in nodes if n["state"] == "up")
    [sample] = wait_for(lambda: query(prometheus, 'vauban_nodes{state="up"}'),
                        SCRAPED_WITHIN_S, "the nodes counted")
    assert float(sample["value"][1]) == up == 1
    running = wait_for(lambda: query(prometheus, 'vauban_vms{state="running"}'),
                       SCRAPED_WITHIN_S, "the running VM counted")
    assert float(running[0]["value"][1]) == 1
    # the VM's CPU counter, from libvirt through the agent's listener, grows
    cpu = wait_for(lambda: query(prometheus, f'vauban_vm_cpu_seconds_total{{vm="{vm_id}"}}'),
                   BOOT_TIMEOUT, "the VM's CPU time")
    assert cpu[0]["metric"]["name"] == name and float(cpu[0]["value"][1]) > 0
    assert query(prometheus, f'vauban_vm_memory_bytes{{vm="{vm_id}"}}')[0]["value"][1] \
        == str(256 * 1024 * 1024)
    assert query(prometheus, 'vauban_node_memory_total_bytes{job="vauban-agent"}')
    # the requests of both workers, by route template: the VM's show was one of them
    shown = wait_for(lambda: query(
        prometheus, 'sum(vauban_api_request_duration_seconds_count'
        '{route="/api/v1/instances/<ref>",method="GET",status="2xx"})'),
        SCRAPED_WITHIN_S, "the API's requests counted")
    assert float(shown[0]["value"][1]) >= 1
    # no GPU on this machine: no GPU series at all
    assert query(prometheus, '{__name__=~"vauban_gpu_.*"}') == [] or shutil.which("nvidia-smi")
