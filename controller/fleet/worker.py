"""Run one rollout job to its end: `python -m controller.fleet.worker JOB_ID`.

Started by the controller (controller.fleet.jobs.spawn) with the controller's settings
in its environment. Batch after batch, the site playbook runs through ansible-runner on
the batch's hosts, logging in with the fleet key and only to the pinned host keys; each
host's progress is written to the job's rows as Ansible reports it, and its output to
the job's ansible.log. The first batch with a failed or unreachable host ends the job:
the hosts of later batches are not touched. With `upgrade`, every node of a batch is
first put in maintenance and emptied (its VMs moved live to other nodes: an upgrade
never takes a VM down; a node that cannot be emptied fails the job before its batch is
touched), must report the new agent version before the next batch starts, and leaves
maintenance after.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ansible_runner
from sqlalchemy import select

from controller import storage_settings
from controller.bootstrap import open_region
from controller.config import ControllerConfig
from controller.db.models import FleetHost, JoinToken, Node, Operation, RolloutHost, as_utc
from controller.fleet import jobs
from controller.fleet.inventory import (
    CEPH_GROUPS,
    CEPH_MON_GROUP,
    CEPH_OSD_GROUP,
    ROLE_GROUPS,
    ceph_groups,
    ceph_host_vars,
    first_mon_nodes,
)
from controller.fleet.keys import (
    ensure_fleet_key,
    fleet_private_key,
    fleet_public_key_path,
    known_hosts_line,
)
from controller.region import Region
from controller.services import maintenance
from controller.services import nodes as node_service

log = logging.getLogger("vauban.rollout")
TOKEN_TTL_S = 3600
UPGRADE_POLL_S = 2.0


class BatchFailed(Exception):
    """A batch ended with a failed or unreachable host; the message names them."""


def run(region: Region, job_id: str) -> str:
    """Run the job; returns its final state (succeeded or failed)."""
    config = region.config
    folder = config.rollouts_dir / job_id
    with region.sessions() as db, db.begin():
        job = jobs.get(db, job_id)
        job.state = "running"
        op = db.get(Operation, job.operation_id)
        if op is not None:
            op.state = "running"
        batches: dict[int, list[str]] = {}
        for host in job.hosts:
            batches.setdefault(host.batch, []).append(host.host)
        version, upgrade, tags = job.version, job.upgrade, list(job.tags)
    try:
        for number in sorted(batches):
            drained = _drain(region, batches[number]) if upgrade else []
            _run_batch(region, job_id, folder, batches[number], number, tags)
            if upgrade:
                _wait_for_version(region, batches[number], version)
                _undrain(region, drained)
    except BatchFailed as e:
        return _finish(region, job_id, "failed", str(e))
    except Exception as e:  # the job must end with its cause, whatever went wrong
        log.exception("rollout %s failed", job_id)
        return _finish(region, job_id, "failed", f"{type(e).__name__}: {e}")
    return _finish(region, job_id, "succeeded")


def _finish(region: Region, job_id: str, state: str, error: str | None = None) -> str:
    with region.sessions() as db, db.begin():
        job = jobs.get(db, job_id)
        jobs.finish(db, job, state, error)
        # unused join tokens of this job go: they were made for it alone
        for token in db.scalars(select(JoinToken).where(
                JoinToken.description == _token_description(job_id),
                JoinToken.used_at.is_(None))):
            db.delete(token)
    return state


def _token_description(job_id: str) -> str:
    return f"rollout {job_id}"


def _inventory(region: Region, job_id: str, hosts: list[str], known_hosts: Path
               ) -> dict[str, Any]:
    """The batch's inventory; a host whose node has not joined gets a one-time token, and
    where a host makes Ceph OSDs, the cluster's settings and bootstrap-osd key come too;
    where one is to bootstrap the first monitor, the cluster configured (if any) and where
    its files are fetched to."""
    config = region.config
    with region.sessions() as db, db.begin():
        fleet = {h.name: h for h in db.scalars(select(FleetHost).where(FleetHost.name.in_(hosts)))}
        joined = {n.name: n for n in db.scalars(select(Node).where(Node.name.in_(hosts)))}
        lines: list[str] = []
        groups: dict[str, dict[str, Any]] = {
            group: {} for group in (*ROLE_GROUPS.values(), *CEPH_GROUPS)}
        for name in hosts:
            host, node = fleet[name], joined.get(name)
            lines.append(known_hosts_line(host.address, host.port, host.host_key))
            host_vars: dict[str, Any] = {"ansible_host": host.address,
                                         "ansible_port": host.port, "ansible_user": host.user,
                                         **ceph_host_vars(host, node)}
            if host.role == "node":  # the profile it was added with: a rollout keeps it
                host_vars["agent_hardware_profile"] = (host.qualification or {}).get(
                    "profile", "compute")
            if host.role == "node" and node is None:
                secret, _ = node_service.create_join_token(
                    db, f"rollout/{job_id}", _token_description(job_id), TOKEN_TTL_S)
                host_vars["vauban_join_token"] = secret
            groups[ROLE_GROUPS[host.role]][name] = host_vars
            for group in ceph_groups(host, node):
                groups[group][name] = {}
        mon_nodes = first_mon_nodes(db) if groups[CEPH_MON_GROUP] else []
    known_hosts.write_text("\n".join(lines) + "\n")
    with region.reads() as db:
        wheels, version = jobs.release(config, jobs.get(db, job_id).version)
    extra = json.loads(config.rollout_vars.read_text()) if config.rollout_vars else {}
    ceph = ceph_vars(config, bool(groups[CEPH_OSD_GROUP]), mon_nodes)
    return {"all": {
        "vars": {
            # the public half: ssh offers the key of that name from the run's ssh-agent
            "ansible_ssh_private_key_file": str(fleet_public_key_path(config.data_dir)),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} "
                                       "-o GlobalKnownHostsFile=/dev/null "
                                       "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
            "vauban_version": version, "vauban_wheels": str(wheels),
            "vauban_controller_url": config.node_url(), "vauban_ca_sha256": region.ca_sha256,
            **ceph, **extra,
        },
        "children": {group: {"hosts": members} for group, members in groups.items()},
    }}


def ceph_vars(config: ControllerConfig, osds: bool, mon_nodes: list[str]) -> dict[str, Any]:
    """The `ceph` role's cluster variables, only where the batch has a host that uses them:
    for OSDs the cluster they join (its bootstrap-osd key too), or where the controller
    has none, the folder a node of this rollout fetches a new cluster's files to (the
    role reads them there once they are); for the first monitor
    (`mon_nodes`: the fleet's nodes labelled ceph=mon, empty where the batch has none) the
    cluster configured (the role then refuses to make another), every node so labelled,
    the controller's client and its pools, and the folder the new cluster's conf and
    keyrings are fetched to."""
    found: dict[str, Any] = {}
    if osds:
        found.update(storage_settings.osd_vars(config.ceph_conf,
                                               config.ceph_bootstrap_osd_keyring))
        if config.ceph_conf is None:
            found["ceph_fetch_dir"] = str(config.ceph_dir)
    if mon_nodes:
        found.update(storage_settings.osd_vars(config.ceph_conf, None))
        found.update(ceph_mon_nodes=mon_nodes, ceph_fetch_dir=str(config.ceph_dir),
                     ceph_client=config.ceph_client,
                     ceph_client_pools=list(dict.fromkeys(
                         [config.ceph_pool, *config.ceph_volume_pools])))
    return found


def _run_batch(region: Region, job_id: str, folder: Path, hosts: list[str], number: int,
               tags: list[str]) -> None:
    private = folder / f"batch-{number}"
    private.mkdir(mode=0o700)
    inventory = _inventory(region, job_id, hosts, folder / "known_hosts")
    progress = _Progress(region, job_id)
    try:
        # the fleet key goes to ansible-runner in memory, and from it through a FIFO
        # into the run's ssh-agent; suppress_env_files keeps it out of env/ssh_key
        result = ansible_runner.run(
            private_data_dir=str(private), project_dir=str(region.config.playbooks_dir),
            playbook="site.yml", inventory=inventory, tags=",".join(tags) or None,
            forks=region.config.rollout_forks,
            timeout=int(region.config.rollout_batch_timeout_s),
            quiet=True, event_handler=progress.event,
            ssh_key=fleet_private_key(region.config.data_dir), suppress_env_files=True,
            envvars={"ANSIBLE_CONFIG": str(region.config.playbooks_dir / "ansible.cfg"),
                     "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"})
    finally:
        shutil.rmtree(private / "inventory", ignore_errors=True)  # it held join tokens
        _drain_key_fifos(private)
        progress.close()
    stats = result.stats or {}
    failed = sorted(set(stats.get("failures", {})) | set(stats.get("dark", {})))
    progress.settle(hosts, stats)
    if failed or result.rc != 0:
        names = ", ".join(failed) or "the playbook"
        raise BatchFailed(f"batch {number + 1} failed on {names}: {progress.reasons(failed)}"
                          if failed else f"batch {number + 1}: ansible-playbook exited "
                          f"{result.rc} ({result.status})")


def _drain_key_fifos(private: Path) -> None:
    """Afterwards no FIFO or file holding the fleet key is left in the batch's artifacts.

    ansible-runner writes the key into `artifacts/<ident>/ssh_key_data` from a thread,
    and ssh-add reads and removes it; when the run ended before ssh-add (ssh-agent
    missing, the run killed), that thread still waits for a reader, holding the key, and
    would keep the worker from exiting. It is read here, and the FIFO removed."""
    for fifo in private.glob("artifacts/*/ssh_key_data"):
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue  # the folder left by an earlier drain
            os.set_blocking(fd, True)  # a waiting writer counts: read to its end
            while os.read(fd, 65536):
                pass
        finally:
            os.close(fd)
        fifo.unlink(missing_ok=True)
        # a writer that had not opened the FIFO yet would now create a plain file with the
        # key in it: a folder in its place makes its open fail instead
        fifo.mkdir(mode=0o700, exist_ok=True)


class _Progress:
    """Each host's task and counts, written to its row as Ansible reports them; the
    output appended to the job's ansible.log."""

    def __init__(self, region: Region, job_id: str) -> None:
        self.region, self.job_id = region, job_id
        self.log = open(region.config.rollouts_dir / job_id / "ansible.log", "a")
        self.messages: dict[str, str] = {}

    def close(self) -> None:
        self.log.close()

    def event(self, event: dict[str, Any]) -> bool:
        if event.get("stdout"):
            self.log.write(event["stdout"] + "\n")
            self.log.flush()
        data, kind = event.get("event_data", {}), event.get("event", "")
        host = data.get("host")
        if host and kind.startswith("runner_on_"):
            self._update(host, kind, data)
        return True

    def _update(self, host: str, kind: str, data: dict[str, Any]) -> None:
        res = data.get("res") or {}
        with self.region.sessions() as db, db.begin():
            row = db.scalar(select(RolloutHost).where(RolloutHost.job_id == self.job_id,
                                                      RolloutHost.host == host))
            if row is None:
                return
            row.task = str(data.get("task", ""))[:255]
            if kind == "runner_on_start":
                row.state = "running" if row.state == "pending" else row.state
            elif kind in ("runner_on_ok", "runner_on_skipped"):
                row.tasks_done += 1
                row.changed += 1 if kind == "runner_on_ok" and res.get("changed") else 0
            elif kind == "runner_on_failed" and data.get("ignore_errors"):
                row.tasks_done += 1  # a failure the playbook allows: a task done
            elif kind == "runner_on_failed":
                row.state, row.message = "failed", _reason(res)
            elif kind == "runner_on_unreachable":
                row.state, row.message = "unreachable", _reason(res)
            if row.message:
                self.messages[host] = row.message

    def settle(self, hosts: list[str], stats: dict[str, Any]) -> None:
        """Hosts that ended well: 'changed' or 'ok'; the job's progress moves on."""
        with self.region.sessions() as db, db.begin():
            job = jobs.get(db, self.job_id)
            for row in job.hosts:
                if row.host in hosts and row.state in ("pending", "running"):
                    row.state = "changed" if stats.get("changed", {}).get(row.host) else "ok"
            done = sum(1 for r in job.hosts if r.state not in ("pending", "running"))
            op = db.get(Operation, job.operation_id)
            if op is not None:
                op.progress = int(100 * done / max(1, len(job.hosts)))

    def reasons(self, hosts: list[str]) -> str:
        return "; ".join(f"{h}: {self.messages.get(h, 'see the log')}" for h in hosts)


def _reason(res: dict[str, Any]) -> str:
    """What Ansible says went wrong, in one line."""
    for key in ("msg", "stderr", "module_stderr"):
        text = str(res.get(key) or "").strip()
        if text:
            return text.splitlines()[-1][:500] if key != "msg" else text[:500]
    return "failed"


def _drain(region: Region, hosts: list[str],
           clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Put the batch's nodes that hold VMs in maintenance and wait until they are empty
    (the controller moves their VMs); the names of those this put in maintenance.
    BatchFailed, naming what could not move and why, when one is not empty in time (the
    nodes stay in maintenance: the operator decides)."""
    actor = "rollout"
    with region.sessions() as db, db.begin():
        nodes = list(db.scalars(select(Node).where(Node.name.in_(hosts))))
        ops = {}
        for node in nodes:
            if not node.instances or node.maintenance:
                continue
            op = maintenance.set_maintenance(db, actor, node, True)
            if op is not None:
                db.flush()  # its id
                ops[node.name] = op.id
    deadline = clock() + region.config.rollout_upgrade_wait_s
    waiting = dict(ops)
    while waiting:
        with region.reads() as db:
            for name, op_id in list(waiting.items()):
                op = db.get(Operation, op_id)
                if op is not None and op.state == "succeeded":
                    del waiting[name]
                elif op is None or op.state == "failed":
                    raise BatchFailed(f"node {name} could not be emptied for its upgrade: "
                                      f"{op.error if op else 'its maintenance ended'}")
                elif clock() > deadline:
                    raise BatchFailed(
                        f"node {name} was not emptied within "
                        f"{region.config.rollout_upgrade_wait_s:.0f} s, so its batch was "
                        f"not upgraded (no VM taken down): {op.message or 'no progress'}")
        if waiting:
            time.sleep(UPGRADE_POLL_S)  # the controller moves the VMs, not this process
    return sorted(ops)


def _undrain(region: Region, names: list[str]) -> None:
    """Maintenance off for the nodes `_drain` put in it."""
    with region.sessions() as db, db.begin():
        for node in db.scalars(select(Node).where(Node.name.in_(names))):
            maintenance.set_maintenance(db, "rollout", node, False)


def _wait_for_version(region: Region, hosts: list[str], version: str,
                      clock: Callable[[], float] = time.monotonic) -> None:
    """Every node of `hosts` reports agent `version` (and is heard) within the configured
    wait; BatchFailed naming those that do not."""
    deadline = clock() + region.config.rollout_upgrade_wait_s
    while True:
        behind = _behind(region, hosts, version)
        if not behind:
            return
        if clock() > deadline:
            raise BatchFailed(f"not on agent {version} within "
                              f"{region.config.rollout_upgrade_wait_s:.0f} s: "
                              + "; ".join(f"{h} ({why})" for h, why in behind.items()))
        time.sleep(UPGRADE_POLL_S)  # the nodes report to the controller, not to this process


def _behind(region: Region, hosts: list[str], version: str) -> dict[str, str]:
    heard_since = datetime.now(UTC) - timedelta(seconds=region.config.node_down_after_s)
    with region.reads() as db:
        nodes = {n.name: n for n in db.scalars(select(Node).where(Node.name.in_(hosts)))}
        roles = {name: role for name, role in db.execute(
            select(FleetHost.name, FleetHost.role).where(FleetHost.name.in_(hosts)))}
    behind = {}
    for name in hosts:
        if roles.get(name) != "node":
            continue
        node = nodes.get(name)
        reported = (node.inventory or {}).get("agent_version") if node else None
        seen = node.last_seen_at if node else None
        if node is None:
            behind[name] = "not joined"
        elif reported != version:
            behind[name] = f"reports {reported or 'no version'}"
        elif seen is None or as_utc(seen) < heard_since:
            behind[name] = "not heard from"
    return behind


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m controller.fleet.worker JOB_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    region = open_region(ControllerConfig.from_env())
    ensure_fleet_key(region.config.data_dir)
    state = run(region, args[0])
    log.info("rollout %s %s", args[0], state)
    return 0 if state == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
