"""The controller's Prometheus metrics (`GET /metrics`, docs/metrics.md).

Two kinds, kept apart:

- **The region's state** (nodes, VMs and operations by state): read from the database when
  Prometheus scrapes, by three GROUP BY queries (`RegionCollector`). Nothing is counted on
  the request paths, and every worker answers the same figures. At a scrape every 15 s that
  is three indexed aggregate queries per 15 s, whatever the region's size.
- **What each worker process sees** (request latencies, long-polls waiting, its database
  pool): kept in the process (`ProcessMetrics`). gunicorn runs several workers and a scrape
  reaches one of them, so under gunicorn these live in prometheus-client's multiprocess
  mode: every worker writes its values to files under `<data>/run/metrics`
  (`enable_multiprocess`, before the workers start; the folder is emptied first), a scrape
  sums the files of all workers, and a worker that exits is marked dead (`worker_exited`)
  so its gauges no longer count. Without gunicorn (tests, `vauban up` in one process) the
  values stay in the process.

Request latencies are labelled by the route's template (`/api/v1/instances/<vm_id>`), the
method and the status class (`2xx`): never by the raw path, so the number of series stays
bounded whatever clients ask for.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, case, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from controller.db.models import Instance, Node, Operation

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# seconds: from a quick read to a whole long-poll (the agents' waits last up to minutes)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0, 300.0)
UNMATCHED_ROUTE = "unmatched"  # a path no route knows (404): one series for all of them
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def metrics_dir(data_dir: Path) -> Path:
    """Where the workers of a controller with this data directory keep their values."""
    return data_dir / "run" / "metrics"


def enable_multiprocess(path: Path) -> None:
    """Make every metric created from now on in this process, and in the processes it forks,
    keep its value in files under `path`, emptied first (values of a previous run would be
    summed with the new ones). Call in the gunicorn master, before the workers start."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(path)
    # prometheus-client chose its value class when first imported: choose again
    values.ValueClass = values.MultiProcessValue()


def worker_exited(pid: int) -> None:
    """Forget the live gauges of a worker that exited (gunicorn's child_exit hook)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        multiprocess.mark_process_dead(pid, path)


class ProcessMetrics:
    """The metrics of one process: API latencies, long-polls waiting, the database pool."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.requests = Histogram(
            "vauban_api_request_duration_seconds",
            "Time to answer an API request, by route template, method and status class",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=registry)
        self.waiters = Gauge(
            "vauban_longpoll_waiters", "Agent long-polls waiting for a change",
            registry=registry, multiprocess_mode="livesum")
        self.pool_size = Gauge(
            "vauban_db_pool_size", "Connections the database pools keep (configured size)",
            registry=registry, multiprocess_mode="livesum")
        self.pool_checked_out = Gauge(
            "vauban_db_pool_checked_out", "Database connections in use by requests",
            registry=registry, multiprocess_mode="livesum")
        self.pool_open = Gauge(
            "vauban_db_pool_connections", "Database connections open (in use or idle)",
            registry=registry, multiprocess_mode="livesum")

    def watch_pool(self, engine: Engine) -> None:
        """Follow `engine`'s pool: its size now, and every connection opened, closed,
        checked out and in from now on."""
        pool: Any = engine.pool
        size = getattr(pool, "size", None)
        if callable(size):
            self.pool_size.inc(size())
        event.listen(engine, "connect", lambda *_: self.pool_open.inc())
        event.listen(engine, "close", lambda *_: self.pool_open.dec())
        event.listen(engine, "close_detached", lambda *_: self.pool_open.dec())
        event.listen(engine, "checkout", lambda *_: self.pool_checked_out.inc())
        event.listen(engine, "checkin", lambda *_: self.pool_checked_out.dec())

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method if method in METHODS else "other",
                             f"{status // 100}xx").observe(seconds)


class RegionCollector(Collector):
    """Nodes, VMs and operations by state, read from the database at each scrape."""

    def __init__(self, reads: sessionmaker[Session], down_after_s: float) -> None:
        self.reads, self.down_after_s = reads, down_after_s

    def collect(self) -> Iterator[Metric]:
        cutoff = datetime.now(UTC) - timedelta(seconds=self.down_after_s)
        node_state = case((Node.last_seen_at.is_(None), "new"),
                          (Node.last_seen_at >= cutoff, "up"), else_="down")
        vm_state = case((Instance.deleting, "deleting"),
                        (Instance.observed_state.is_(None), "pending"),
                        else_=Instance.observed_state)
        with self.reads() as db:
            nodes: dict[str, int] = {
                state: count for state, count in
                db.execute(select(node_state, func.count()).group_by(node_state)).all()}
            vms = db.execute(select(vm_state, func.count()).group_by(vm_state)).all()
            ops = db.execute(select(Operation.kind, Operation.state, func.count())
                             .group_by(Operation.kind, Operation.state)).all()
        family = GaugeMetricFamily("vauban_nodes", "Nodes of the region by state "
                                   "(new: never reported; down: silent too long)", labels=["state"])
        for state in ("new", "up", "down"):  # every state, 0 included: alerts need the series
            family.add_metric([state], nodes.get(state, 0))
        yield family
        family = GaugeMetricFamily("vauban_vms", "VMs by the state their node last reported",
                                   labels=["state"])
        for state, count in vms:
            family.add_metric([str(state)], count)
        yield family
        family = GaugeMetricFamily("vauban_operations", "Operations the region keeps, by "
                                   "kind and state (pending, running, succeeded, failed)",
                                   labels=["kind", "state"])
        for kind, state, count in ops:
            family.add_metric([kind, state], count)
        yield family


class ControllerMetrics:
    """What `/metrics` answers in this process: the region's state and the processes'
    values (of every worker in multiprocess mode, of this process otherwise)."""

    def __init__(self, reads: sessionmaker[Session], down_after_s: float) -> None:
        path = os.environ.get(MULTIPROC_ENV)
        local = None if path else CollectorRegistry()
        self.process = ProcessMetrics(local)
        self.exposed = local if local is not None else CollectorRegistry()
        if path:
            multiprocess.MultiProcessCollector(self.exposed, path=path)
        self.exposed.register(RegionCollector(reads, down_after_s))

    def render(self) -> Response:
        return Response(generate_latest(self.exposed), mimetype=None,
                        content_type=CONTENT_TYPE_LATEST)


def install_request_timing(app: Flask, metrics: ProcessMetrics) -> None:
    """Time every request of `app`, labelled by its route's template."""

    @app.before_request
    def _started() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _answered(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is not None:
            rule = request.url_rule
            metrics.observe_request(rule.rule if rule is not None else UNMATCHED_ROUTE,
                                    request.method, response.status_code,
                                    time.perf_counter() - started)
        return response
