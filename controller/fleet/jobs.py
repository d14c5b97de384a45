"""Rollout jobs, as the API sees them: checked, recorded, handed to a worker process.

A job runs in its own process (`python -m controller.fleet.worker JOB`), never in the
controller's event loop: Ansible forks, blocks and takes seconds per task. The job's
rows say how far it got; a job whose worker died is found and marked failed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller import __version__
from controller.config import ControllerConfig
from controller.db.models import FleetHost, Operation, RolloutHost, RolloutJob, as_utc
from controller.errors import Conflict, InvalidInput, NotFound
from controller.services import audit

WHEELS_NAME = re.compile(r"^vauban-(?P<version>[0-9][0-9A-Za-z.+-]{0,30})-wheels\.tar$")
ACTIVE = ("pending", "running")
UNSTARTED_GRACE_S = 60.0  # a job still without a worker this long after it was made


def release(config: ControllerConfig, version: str | None = None) -> tuple[Path, str]:
    """The release archive of `version` (default: the controller's own) and its version;
    InvalidInput saying what to do when it is not there."""
    wanted = version or __version__
    archive = config.releases / f"vauban-{wanted}-wheels.tar"
    if not WHEELS_NAME.match(archive.name):
        raise InvalidInput(f"version {wanted[:40]!r} is not a version")
    if not archive.is_file():
        have = sorted(m["version"] for p in config.releases.glob("vauban-*-wheels.tar")
                      if (m := WHEELS_NAME.match(p.name)))
        raise InvalidInput(f"no release {wanted} in {config.releases} (there: "
                           f"{', '.join(have) or 'none'}); build it with 'make dist' and copy "
                           f"dist/vauban-{wanted}-wheels.tar there")
    return archive, wanted


def _chosen_hosts(db: Session, limit: list[str] | None) -> list[FleetHost]:
    hosts = list(db.scalars(select(FleetHost).order_by(FleetHost.name)))
    if limit is None:
        chosen = hosts
    else:
        by_name = {h.name: h for h in hosts}
        unknown = [name for name in limit if name not in by_name]
        if unknown:
            raise InvalidInput(f"not in the fleet: {', '.join(unknown)} (add servers with "
                               "'vauban node add')")
        chosen = [by_name[name] for name in dict.fromkeys(limit)]
    if not chosen:
        raise InvalidInput("the fleet has no servers: add them with 'vauban node add'")
    return chosen


def start(db: Session, config: ControllerConfig, actor: str, limit: list[str] | None,
          tags: list[str], batch_size: int | None, upgrade: bool,
          version: str | None = None) -> RolloutJob:
    """Record a rollout of the fleet (or of `limit`, host names) in batches of
    `batch_size` (all at once by default), with its operation. The caller commits, then
    calls `spawn`. Conflict while another rollout runs."""
    _, version = release(config, version)
    if config.node_url() is None:
        raise InvalidInput("the controller listens on a wildcard address: set "
                           "VAUBAN_ADVERTISE_URL to its URL as nodes reach it")
    running = db.scalar(select(RolloutJob).where(RolloutJob.state.in_(ACTIVE)))
    if running is not None:
        raise Conflict(f"rollout {running.id} is {running.state}: one rollout at a time",
                       rollout=running.id)
    hosts = _chosen_hosts(db, limit)
    size = batch_size or len(hosts)
    job = RolloutJob(upgrade=upgrade, version=version, batch_size=size, tags=tags,
                     requested_by=actor, tasks_expected=_tasks_expected(db, tags))
    db.add(job)
    db.flush()
    for i, host in enumerate(hosts):
        db.add(RolloutHost(job_id=job.id, host=host.name, batch=i // size))
    op = Operation(kind="rollout", target_id=job.id, target_name=f"rollout of {len(hosts)} "
                   f"host{'s' if len(hosts) != 1 else ''}", requested_by=actor)
    db.add(op)
    db.flush()
    job.operation_id = op.id
    audit.record(db, actor, "rollout.run", f"rollout/{job.id}", hosts=[h.name for h in hosts],
                 batch=size, tags=tags, upgrade=upgrade, version=version)
    return job


def _tasks_expected(db: Session, tags: list[str]) -> int:
    """A host's task count in the last rollout that succeeded with these tags (0: none):
    what a progress bar counts up to."""
    for job in db.scalars(select(RolloutJob).where(RolloutJob.state == "succeeded")
                          .order_by(RolloutJob.created_at.desc()).limit(20)):
        if job.tags == tags:
            return max((h.tasks_done for h in job.hosts), default=0)
    return 0


def spawn(config: ControllerConfig, job_id: str) -> int:
    """Start the job's worker in its own session (it outlives a controller restart); its
    output goes to the job's folder. Returns its PID."""
    folder = config.rollouts_dir / job_id
    folder.mkdir(parents=True, mode=0o700)
    env = {**os.environ, "VAUBAN_DATA_DIR": str(config.data_dir),
           "VAUBAN_DATABASE_URL": config.database_url, "VAUBAN_HOST": config.host,
           "VAUBAN_PORT": str(config.port)}
    with open(folder / "worker.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "controller.fleet.worker", job_id],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    return proc.pid


def get(db: Session, job_id: str) -> RolloutJob:
    job = db.get(RolloutJob, job_id)
    if job is None:
        raise NotFound(f"rollout '{job_id}' does not exist")
    return job


def log_text(config: ControllerConfig, job: RolloutJob) -> str:
    """The job's full Ansible output so far ('' before its first batch starts)."""
    try:
        return (config.rollouts_dir / job.id / "ansible.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


def worker_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"controller.fleet.worker" in f.read()
    except OSError:
        return False


def fail_orphans(db: Session) -> list[str]:
    """Mark failed the running jobs whose worker is gone (the controller's host restarted,
    or it was killed), and those never given a worker (the controller stopped between
    recording the job and starting it); returns their ids."""
    failed = []
    unstarted_before = datetime.now(UTC) - timedelta(seconds=UNSTARTED_GRACE_S)
    for job in db.scalars(select(RolloutJob).where(RolloutJob.state.in_(ACTIVE))):
        if job.worker_pid is not None and not worker_alive(job.worker_pid):
            finish(db, job, "failed", f"the rollout's worker (PID {job.worker_pid}) ended "
                   "without finishing")
            failed.append(job.id)
        elif job.worker_pid is None and as_utc(job.created_at) < unstarted_before:
            finish(db, job, "failed", "the rollout's worker was never started (the "
                   "controller stopped meanwhile)")
            failed.append(job.id)
    return failed


def finish(db: Session, job: RolloutJob, state: str, error: str | None = None) -> None:
    """End the job and its operation, and audit its end; hosts not reached are 'not run'."""
    now = datetime.now(UTC)
    job.state, job.error, job.finished_at = state, error, now
    audit.record(db, job.requested_by, "rollout.run", f"rollout/{job.id}",
                 "succeeded" if state == "succeeded" else "failed", error=error)
    for host in job.hosts:
        if host.state in ("pending", "running"):
            host.state = "not run" if host.state == "pending" else "failed"
    op = db.get(Operation, job.operation_id) if job.operation_id else None
    if op is not None:
        op.state = "succeeded" if state == "succeeded" else "failed"
        op.progress = 100 if state == "succeeded" else op.progress
        op.error, op.finished_at = error, now
