"""docs/metrics.md names every metric served, and the Grafana dashboard uses only those."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.protocol import GpuTelemetry, XidEvent
from controller.metrics import ProcessMetrics
from tests.unit.agent.test_metrics import collector, gpu

DOCS = Path(__file__).resolve().parents[2] / "docs"
SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def documented() -> set[str]:
    return set(re.findall(r"^\| `(vauban_[a-z_]+)` \|", (DOCS / "metrics.md").read_text(),
                          re.MULTILINE))


def served_names(registry: CollectorRegistry) -> set[str]:
    text = generate_latest(registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_metric_served_is_documented(tmp_path: Path) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    full = GpuTelemetry(utilization_pct=1, memory_utilization_pct=1, memory_total_bytes=1,
                        memory_used_bytes=1, temperature_c=1, power_w=1, power_limit_w=1,
                        ecc_uncorrected_volatile=0, ecc_uncorrected_aggregate=0,
                        xid_events=[XidEvent(xid=79, at=at)])
    agent = CollectorRegistry(auto_describe=False)
    agent.register(collector(tmp_path, gpus=[gpu(full)]))
    process = CollectorRegistry()
    ProcessMetrics(process).observe_request("/x", "GET", 200, 0.1)
    names = {base(n) for n in served_names(agent) | served_names(process)}
    # the controller's region state (database) is checked end to end
    names |= {"vauban_nodes", "vauban_vms", "vauban_operations"}
    assert names == documented()


def test_the_dashboard_is_json_with_its_datasource_a_variable() -> None:
    dash = json.loads((DOCS / "grafana-dashboard.json").read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
    used = {base(n) for e in exprs for n in re.findall(r"vauban_[a-z_]+", e)}
    assert used - documented() == set()
