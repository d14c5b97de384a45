"""A rollout job's rows as ansible-runner's events move them, over a real region database;
the checks between batches of an upgrade; orphaned jobs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from controller import __version__
from controller.db.models import (
    FleetHost,
    Image,
    Instance,
    Node,
    Operation,
    Project,
    RolloutHost,
    RolloutJob,
)
from controller.fleet import jobs
from controller.fleet.worker import (
    BatchFailed,
    _behind,
    _drain,
    _drain_key_fifos,
    _inventory,
    _Progress,
    _reason,
    _undrain,
)
from controller.region import Region
from controller.storage_settings import StorageConfigError
from tests.e2e.region import wait_for

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def _add_hosts(region: Region, *names: str, role: str = "node") -> None:
    with region.sessions() as db, db.begin():
        for i, name in enumerate(names):
            db.add(FleetHost(name=name, address=f"10.0.0.{20 + i}", host_key=HOST_KEY,
                             role=role, created_by="admin"))


def _start(region: Region, batch: int | None = None) -> str:
    """A job over the fleet, as the API records it (its worker is not started)."""
    config = region.config
    config.releases.mkdir(parents=True, exist_ok=True)
    (config.releases / f"vauban-{__version__}-wheels.tar").write_bytes(b"")
    with region.sessions() as db, db.begin():
        job = jobs.start(db, config, "admin", None, [], batch, False)
        job_id = job.id
    (config.rollouts_dir / job_id).mkdir(parents=True)
    return job_id


def _rows(region: Region, job_id: str) -> dict[str, RolloutHost]:
    with region.reads() as db:
        rows = db.scalars(select(RolloutHost).where(RolloutHost.job_id == job_id))
        return {r.host: r for r in rows}


def _event(kind: str, host: str | None = None, task: str = "", stdout: str = "",
           **data: Any) -> dict[str, Any]:
    """An event as ansible-runner hands it to an event handler."""
    event_data: dict[str, Any] = {"playbook": "site.yml", "play": "nodes", "task": task,
                                  "task_action": "ansible.builtin.apt", **data}
    if host:
        event_data.update(host=host, remote_addr=host)
    return {"uuid": "5b3c0a8e-6f0e-4b8a-9d7e-1c2f3a4b5c6d", "counter": 7, "stdout": stdout,
            "start_line": 10, "end_line": 11, "runner_ident": "1", "event": kind,
            "event_data": event_data}


@pytest.fixture
def job(region: Region) -> str:
    _add_hosts(region, "n1", "n2", "n3", "n4", "n5")
    return _start(region, batch=4)  # n1..n4 in the first batch, n5 in the second


def test_events_move_each_hosts_row(region: Region, job: str) -> None:
    progress = _Progress(region, job)
    try:
        events = [
            _event("playbook_on_start", stdout=""),
            _event("playbook_on_task_start", task="base : packages",
                   stdout="\r\nTASK [base : packages] ****"),
            *(_event("runner_on_start", h, "base : packages") for h in ("n1", "n2", "n3", "n4")),
            _event("runner_on_ok", "n1", "base : packages", stdout="changed: [n1]",
                   res={"changed": True, "cache_updated": False}),
            _event("runner_on_ok", "n4", "base : packages", stdout="ok: [n4]",
                   res={"changed": False}),
            _event("runner_on_failed", "n2", "base : packages",
                   stdout="fatal: [n2]: FAILED! => {\"msg\": \"No package matching 'qemu'\"}",
                   res={"changed": False, "msg": "No package matching 'qemu' is available",
                        "stderr": ""}, ignore_errors=None),
            _event("runner_on_unreachable", "n3", "base : packages",
                   stdout="fatal: [n3]: UNREACHABLE!",
                   res={"unreachable": True, "changed": False,
                        "msg": "Failed to connect to the host via ssh: ssh: connect to host "
                               "10.0.0.22 port 22: No route to host"}),
            _event("runner_on_start", "n1", "agent : unit"),
            _event("runner_on_skipped", "n1", "agent : unit", stdout="skipping: [n1]"),
            _event("runner_on_start", "n4", "agent : probe"),
            _event("runner_on_failed", "n4", "agent : probe", stdout="...ignoring",
                   res={"rc": 1, "stderr": "line one\nno kvm here", "msg": ""},
                   ignore_errors=True),
            _event("runner_on_ok", "unknown-host", "agent : probe"),  # no row: ignored
        ]
        assert all(progress.event(e) is True for e in events)
    finally:
        progress.close()
    rows = _rows(region, job)
    got = {h: (r.state, r.task, r.tasks_done, r.changed, r.message) for h, r in rows.items()}
    assert got == {
        "n1": ("running", "agent : unit", 2, 1, None),
        "n2": ("failed", "base : packages", 0, 0, "No package matching 'qemu' is available"),
        "n3": ("unreachable", "base : packages", 0, 0,
               "Failed to connect to the host via ssh: ssh: connect to host 10.0.0.22 port 22: "
               "No route to host"),
        "n4": ("running", "agent : probe", 2, 0, None),  # its failure was ignored: a task done
        "n5": ("pending", "", 0, 0, None),
    }
    assert progress.reasons(["n2", "n3", "n5"]) == (
        "n2: No package matching 'qemu' is available; n3: Failed to connect to the host via "
        "ssh: ssh: connect to host 10.0.0.22 port 22: No route to host; n5: see the log")
    log = (region.config.rollouts_dir / job / "ansible.log").read_text()
    assert log.splitlines() == [
        "", "TASK [base : packages] ****", "changed: [n1]", "ok: [n4]",
        "fatal: [n2]: FAILED! => {\"msg\": \"No package matching 'qemu'\"}",
        "fatal: [n3]: UNREACHABLE!", "skipping: [n1]", "...ignoring"]

    progress = _Progress(region, job)
    try:
        progress.settle(["n1", "n2", "n3", "n4"], {
            "ok": {"n1": 2, "n4": 1}, "changed": {"n1": 1}, "failures": {"n2": 1},
            "dark": {"n3": 1}, "skipped": {"n1": 1}, "ignored": {"n4": 1}})
    finally:
        progress.close()
    rows = _rows(region, job)
    assert {h: r.state for h, r in rows.items()} == {
        "n1": "changed", "n2": "failed", "n3": "unreachable", "n4": "ok", "n5": "pending"}
    with region.reads() as db:
        job_row = db.get(RolloutJob, job)
        assert job_row is not None
        op = db.get(Operation, job_row.operation_id)
        assert op is not None and op.kind == "rollout" and op.progress == 80


def test_reason_is_ansibles_message_in_one_line() -> None:
    assert _reason({"msg": "  Timeout waiting for privilege escalation  "}) == \
        "Timeout waiting for privilege escalation"
    assert _reason({"msg": "", "stderr": "E: one\nE: Unable to locate package qemu\n"}) == \
        "E: Unable to locate package qemu"
    assert _reason({"module_stderr": "Traceback...\nKeyError: 'x'", "rc": 1}) == \
        "KeyError: 'x'"
    assert _reason({"msg": "first\nsecond"}) == "first\nsecond"  # a message is kept whole
    assert _reason({"msg": "m" * 600}) == "m" * 500
    assert _reason({"stderr": "s" * 600}) == "s" * 500
    assert _reason({}) == "failed"
    assert _reason({"msg": None, "stderr": "   "}) == "failed"


def test_behind_names_each_node_not_on_the_version(region: Region) -> None:
    _add_hosts(region, "n1", "n2", "n3", "n4", "n5")
    _add_hosts(region, "c1", role="controller")
    now = datetime.now(UTC)
    with region.sessions() as db, db.begin():
        db.add_all([
            Node(name="n2", cert_serial="2", inventory={"agent_version": "0.1"},
                 last_seen_at=now),
            Node(name="n3", cert_serial="3", inventory={}, last_seen_at=now),
            Node(name="n4", cert_serial="4", inventory={"agent_version": "9.9"},
                 last_seen_at=now - timedelta(minutes=10)),
            Node(name="n5", cert_serial="5", inventory={"agent_version": "9.9"},
                 last_seen_at=now),
        ])
    assert _behind(region, ["n1", "n2", "n3", "n4", "n5", "c1"], "9.9") == {
        "n1": "not joined", "n2": "reports 0.1", "n3": "reports no version",
        "n4": "not heard from"}
    assert _behind(region, ["n5", "c1"], "9.9") == {}


def test_start_records_batches_and_finish_ends_the_job(region: Region, job: str) -> None:
    with region.sessions() as db, db.begin():
        row = jobs.get(db, job)
        assert row.state == "pending" and row.batch_size == 4 and row.version == __version__
        assert [(h.host, h.batch) for h in row.hosts] == [
            ("n1", 0), ("n2", 0), ("n3", 0), ("n4", 0), ("n5", 1)]
        row.hosts[0].state, row.hosts[1].state = "running", "ok"
        jobs.finish(db, row, "failed", "batch 1 failed on n1: it broke")
    with region.reads() as db:
        row = jobs.get(db, job)
        assert (row.state, row.error) == ("failed", "batch 1 failed on n1: it broke")
        assert row.finished_at is not None
        assert [h.state for h in row.hosts] == ["failed", "ok", "not run", "not run", "not run"]
        op = db.get(Operation, row.operation_id)
        assert op is not None and (op.state, op.error) == ("failed", row.error)


def test_fail_orphans_fails_the_jobs_whose_worker_is_gone(region: Region, job: str) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          check=True, capture_output=True, text=True)
    # a live process that looks like a worker: its command line names the module
    with subprocess.Popen([sys.executable, "-c", "import sys; print('up', flush=True); "
                           "sys.stdin.read()", "controller.fleet.worker"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as alive:
        assert alive.stdin is not None and alive.stdout is not None
        try:
            assert alive.stdout.readline() == "up\n"  # exec'd: its command line is its own
            with region.sessions() as db, db.begin():
                jobs.get(db, job).worker_pid = alive.pid
                assert jobs.fail_orphans(db) == []
                jobs.get(db, job).worker_pid = int(gone.stdout)
                assert jobs.fail_orphans(db) == [job]
        finally:
            alive.stdin.close()  # it ends; leaving `with` waits for it
    with region.reads() as db:
        row = jobs.get(db, job)
        assert row.state == "failed"
        assert row.error == f"the rollout's worker (PID {gone.stdout.strip()}) ended without " \
                            "finishing"
        assert {h.state for h in row.hosts} == {"not run"}


def test_fail_orphans_fails_a_job_never_given_a_worker_once_its_grace_is_over(
        region: Region, job: str) -> None:
    with region.sessions() as db, db.begin():
        assert jobs.fail_orphans(db) == []  # just made: its worker may be on its way
        jobs.get(db, job).created_at = datetime.now(UTC) - timedelta(
            seconds=jobs.UNSTARTED_GRACE_S + 1)
        assert jobs.fail_orphans(db) == [job]
    with region.reads() as db:
        row = jobs.get(db, job)
        assert (row.state, row.error) == ("failed", "the rollout's worker was never started "
                                          "(the controller stopped meanwhile)")


FSID = "0b3b5d5e-4a4e-4f52-9d5c-3f1e6b7a8c9d"
MON_HOST = "[v2:10.0.0.5:3300,v1:10.0.0.5:6789]"
BOOTSTRAP_KEY = "AQBzN1ZmAAAAABAAm1uUq6iYQnXfFbXbNmYwXw=="


def _ceph_region(region: Region, tmp_path: Path, keyring: bool = True) -> Region:
    conf = tmp_path / "ceph.conf"
    conf.write_text(f"[global]\nfsid = {FSID}\nmon_host = {MON_HOST}\n")
    ring = tmp_path / "bootstrap-osd.keyring"
    ring.write_text(f"[client.bootstrap-osd]\n\tkey = {BOOTSTRAP_KEY}\n")
    config = dataclasses.replace(region.config, ceph_conf=conf,
                                 ceph_bootstrap_osd_keyring=ring if keyring else None)
    return dataclasses.replace(region, config=config)


def _label(region: Region, name: str, labels: dict[str, str], disks: list[str]) -> None:
    with region.sessions() as db, db.begin():
        host = db.scalars(select(FleetHost).where(FleetHost.name == name)).one()
        host.qualification = {"profile": "storage", "verdict": "PASS", "results": [],
                              "free_osd_disks": disks}
        db.add(Node(name=name, cert_serial=name, labels=labels))


def test_a_rollout_gives_ceph_osd_nodes_their_disks_and_the_cluster(
        region: Region, job: str, tmp_path: Path) -> None:
    ceph = _ceph_region(region, tmp_path)
    _label(ceph, "n1", {"ceph": "osd"}, ["sdb", "sdc"])
    _label(ceph, "n2", {"rack": "r1"}, ["sdb"])
    inv = _inventory(ceph, job, ["n1", "n2"], tmp_path / "known_hosts")["all"]
    assert inv["children"]["ceph_osds"] == {"hosts": {"n1": {}}}
    nodes = inv["children"]["vauban_nodes"]["hosts"]
    assert nodes["n1"]["ceph_osd_devices"] == ["/dev/sdb", "/dev/sdc"]
    assert "ceph_osd_devices" not in nodes["n2"]
    assert {k: v for k, v in inv["vars"].items() if k.startswith("ceph_")} == {
        "ceph_fsid": FSID, "ceph_mon_host": MON_HOST, "ceph_bootstrap_osd_key": BOOTSTRAP_KEY}
    # a batch without such a node is given no key
    other = _inventory(ceph, job, ["n2", "n3"], tmp_path / "known_hosts")["all"]
    assert other["children"]["ceph_osds"] == {"hosts": {}}
    assert "ceph_bootstrap_osd_key" not in json.dumps(other)


def test_a_rollout_keeps_each_nodes_hardware_profile(region: Region, job: str,
                                                      tmp_path: Path) -> None:
    """A node added with --profile lab (or storage) is not rolled back to compute."""
    _label(region, "n1", {}, [])  # qualified against the storage profile when added
    nodes = _inventory(region, job, ["n1", "n2"], tmp_path / "known_hosts")["all"][
        "children"]["vauban_nodes"]["hosts"]
    assert nodes["n1"]["agent_hardware_profile"] == "storage"
    assert nodes["n2"]["agent_hardware_profile"] == "compute"  # no qualification recorded


def test_a_rollout_without_the_bootstrap_keyring_leaves_the_key_for_the_role_to_ask(
        region: Region, job: str, tmp_path: Path) -> None:
    ceph = _ceph_region(region, tmp_path, keyring=False)
    _label(ceph, "n1", {"ceph": "osd"}, ["sdb"])
    inv = _inventory(ceph, job, ["n1"], tmp_path / "known_hosts")["all"]
    assert inv["vars"]["ceph_fsid"] == FSID and "ceph_bootstrap_osd_key" not in inv["vars"]
    (tmp_path / "ceph.conf").write_text(f"[global]\nmon_host = {MON_HOST}\n")
    with pytest.raises(StorageConfigError, match="ceph.conf has no fsid in its"):
        _inventory(ceph, job, ["n1"], tmp_path / "known_hosts")


def test_a_key_fifo_no_ssh_add_read_is_drained_and_removed(tmp_path: Path) -> None:
    """ansible-runner's writer thread holds the key until someone reads its FIFO; when the
    run ended before ssh-add, the worker reads it, so the thread ends and no FIFO is left."""
    from ansible_runner.utils import open_fifo_write

    artifacts = tmp_path / "artifacts" / "ident"
    artifacts.mkdir(parents=True)
    before = set(threading.enumerate())
    open_fifo_write(str(artifacts / "ssh_key_data"), "-----BEGIN OPENSSH PRIVATE KEY-----")
    writers = set(threading.enumerate()) - before
    for thread in writers:  # as in a run: the writer waits in open() for a reader
        assert wait_for(lambda t=thread: Path(  # type: ignore[misc]
            f"/proc/self/task/{t.native_id}/wchan").read_text() == "wait_for_partner",
            60, "the key's writer to wait for a reader")
    _drain_key_fifos(tmp_path)
    for thread in writers:
        thread.join(60)
        assert not thread.is_alive()
    assert (artifacts / "ssh_key_data").is_dir()  # no FIFO, and no file with the key
    assert list((artifacts / "ssh_key_data").iterdir()) == []
    _drain_key_fifos(tmp_path)  # nothing left: nothing done


def test_a_key_writer_that_comes_after_the_drain_writes_no_file(tmp_path: Path) -> None:
    """The FIFO drained before its writer opened it: the writer fails, no key is on disk."""
    artifacts = tmp_path / "artifacts" / "ident"
    artifacts.mkdir(parents=True)
    fifo = artifacts / "ssh_key_data"
    os.mkfifo(fifo, 0o600)
    _drain_key_fifos(tmp_path)  # no writer yet
    with pytest.raises(IsADirectoryError):
        fifo.open("wb")  # what ansible-runner's late writer thread does
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_rollout_tells_a_ceph_mon_node_where_to_put_a_new_cluster(
        region: Region, job: str, tmp_path: Path) -> None:
    _label(region, "n1", {"ceph": "mon"}, [])
    _label(region, "n2", {"rack": "r1"}, [])
    inv = _inventory(region, job, ["n1", "n2"], tmp_path / "known_hosts")["all"]
    assert inv["children"]["ceph_mons"] == {"hosts": {"n1": {}}}
    assert inv["children"]["ceph_osds"] == {"hosts": {}}
    assert {k: v for k, v in inv["vars"].items() if k.startswith("ceph_")} == {
        "ceph_mon_nodes": ["n1"], "ceph_fetch_dir": str(region.config.data_dir / "ceph"),
        "ceph_client": "vauban", "ceph_client_pools": ["vauban"]}
    # a batch without such a node is told nothing of Ceph
    other = _inventory(region, job, ["n2"], tmp_path / "known_hosts")["all"]
    assert not [k for k in other["vars"] if k.startswith("ceph_")]
    # OSD nodes of a region without a cluster read the one this rollout makes, if any
    _label(region, "n3", {"ceph": "osd"}, ["sdb"])
    osds = _inventory(region, job, ["n3"], tmp_path / "known_hosts")["all"]
    assert {k: v for k, v in osds["vars"].items() if k.startswith("ceph_")} == {
        "ceph_fetch_dir": str(region.config.data_dir / "ceph")}


def test_a_rollout_names_the_configured_cluster_and_every_mon_node_to_a_ceph_mon_node(
        region: Region, job: str, tmp_path: Path) -> None:
    ceph = _ceph_region(region, tmp_path)
    _label(ceph, "n1", {"ceph": "mon"}, [])
    _label(ceph, "n3", {"ceph": "mon"}, [])  # not in the batch: the role refuses both
    inv = _inventory(ceph, job, ["n1"], tmp_path / "known_hosts")["all"]
    assert (inv["vars"]["ceph_fsid"], inv["vars"]["ceph_mon_host"]) == (FSID, MON_HOST)
    assert inv["vars"]["ceph_mon_nodes"] == ["n1", "n3"]
    assert "ceph_bootstrap_osd_key" not in inv["vars"]  # only OSD nodes are given it


def _node_with_a_vm(region: Region, name: str) -> str:
    """A node row holding one VM row (as the API would have placed it); its id."""
    with region.sessions() as db, db.begin():
        project = db.scalars(select(Project)).first()
        assert project is not None
        image = Image(name=f"img-{name}", disk_format="raw", size_bytes=1, sha256="0" * 64,
                      virtual_size_bytes=1, project_id=None)
        node = Node(name=name, cert_serial=name, inventory={}, last_seen_at=datetime.now(UTC))
        db.add_all([image, node])
        db.flush()
        db.add(Instance(name=f"vm-{name}", project_id=project.id, node_id=node.id,
                        image_id=image.id, vcpus=1, memory_mib=64, hostname="h"))
        return node.id


def _end_maintenance_op(region: Region, node_id: str, error: str | None) -> bool:
    """What the controller's evacuator does once the node is empty (or given up): False
    while no maintenance operation is open yet."""
    with region.sessions() as db, db.begin():
        op = db.scalars(select(Operation).where(Operation.target_id == node_id,
                                                Operation.kind == "node.maintenance",
                                                Operation.state == "pending")).first()
        if op is None:
            return False
        op.state, op.error = ("failed", error) if error else ("succeeded", None)
        return True


def test_an_upgrade_batch_waits_for_its_nodes_to_be_emptied_and_frees_them_after(
        region: Region) -> None:
    busy = _node_with_a_vm(region, "n1")
    with region.sessions() as db, db.begin():
        db.add(Node(name="n2", cert_serial="n2", inventory={}))  # no VM: left alone
    drained: list[list[str]] = []
    worker = threading.Thread(target=lambda: drained.append(_drain(region, ["n1", "n2"])))
    worker.start()
    wait_for(lambda: _end_maintenance_op(region, busy, None), 30, "maintenance asked of n1")
    worker.join(30)
    assert drained == [["n1"]]
    with region.reads() as db:
        assert {n.name: n.maintenance for n in db.scalars(select(Node))} == \
            {"n1": True, "n2": False}
    _undrain(region, drained[0])
    with region.reads() as db:
        assert not any(n.maintenance for n in db.scalars(select(Node)))


def test_an_upgrade_batch_whose_node_cannot_be_emptied_fails_before_it_is_touched(
        region: Region) -> None:
    busy = _node_with_a_vm(region, "n1")
    failed: list[str] = []

    def drain() -> None:
        try:
            _drain(region, ["n1"])
        except BatchFailed as e:
            failed.append(str(e))

    worker = threading.Thread(target=drain)
    worker.start()
    wait_for(lambda: _end_maintenance_op(region, busy, "vm-n1: it holds a GPU"), 30,
             "maintenance asked of n1")
    worker.join(30)
    assert failed and "node n1 could not be emptied" in failed[0] and "GPU" in failed[0]
