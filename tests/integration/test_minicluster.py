"""MiniCluster: a real Ceph cluster that starts healthy, listens on loopback only, keeps
its keys private, gives its client caps on its pools only, and stops leaving no process."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.drivers.storage.base import StorageError
from agent.drivers.storage.rbd.driver import RbdDriver
from agent.drivers.storage.rbd.minicluster import DAEMONS, MiniCluster, pid_alive

pytestmark = pytest.mark.integration


def listening_addresses(pid: int) -> set[str]:
    """"ip:port" of every TCP socket the process listens on (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                ip_hex, port_hex = f[1].split(":")
                ip = (".".join(str(int(ip_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
                      if table == "tcp" else ip_hex)
                found.add(f"{ip}:{int(port_hex, 16)}")
    return found


def test_session_cluster_runs_on_loopback_only(ceph_minicluster: MiniCluster) -> None:
    pids = ceph_minicluster.pids()
    assert set(pids) == set(DAEMONS)
    for name, pid in pids.items():
        assert int(ceph_minicluster.pid_file(name).read_text()) == pid
        addrs = listening_addresses(pid)
        assert addrs, f"{name} listens nowhere"
        assert all(a.startswith("127.0.0.1:") for a in addrs), (name, addrs)
    st = ceph_minicluster.status()
    assert st["health"] == "HEALTH_OK", st


def test_keys_stay_private(ceph_minicluster: MiniCluster) -> None:
    info = ceph_minicluster.info()
    for secret_file in (ceph_minicluster.info_file, info.admin_keyring):
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    conf = info.conf.read_text()
    assert not re.search(r"^\s*key\s*=", conf, re.M), "a key in ceph.conf"
    assert "client." not in conf and info.key not in conf
    assert not (ceph_minicluster.dir / "bootstrap.keyring").exists()


def test_client_caps_cover_its_pools_only(ceph_minicluster: MiniCluster,
                                          ceph_admin: Any) -> None:
    info = ceph_minicluster.info()
    ret, out, err = ceph_admin.mon_command(json.dumps(
        {"prefix": "auth get", "entity": "client.vauban", "format": "json"}), b"")
    assert ret == 0, err
    (entry,) = json.loads(out)
    assert entry["key"] == info.key
    assert entry["caps"] == {
        "mon": "profile rbd",
        "osd": "profile rbd pool=vauban, profile rbd pool=vauban-fast",
        "mgr": "profile rbd pool=vauban, profile rbd pool=vauban-fast",
    }


def test_start_of_a_running_cluster_only_checks_it(ceph_minicluster: MiniCluster) -> None:
    before = ceph_minicluster.pids()
    t0 = time.monotonic()
    info = ceph_minicluster.start(pools=["vauban"])
    assert time.monotonic() - t0 < 10
    assert info == ceph_minicluster.info()
    assert info.pools == ("vauban", "vauban-fast")  # pools are only ever added
    assert ceph_minicluster.pids() == before


@pytest.fixture
def scratch_cluster() -> Iterator[MiniCluster]:
    root = Path(tempfile.mkdtemp(prefix="vauban-ceph2-", dir="/var/tmp"))
    root.chmod(0o711)
    cluster = MiniCluster(root)
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


def cli(cluster: MiniCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.drivers.storage.rbd.minicluster",
                           *args, "--dir", str(cluster.dir)],
                          capture_output=True, text=True, timeout=180)


def test_stop_leaves_no_process_and_restart_keeps_the_data(scratch_cluster: MiniCluster,
                                                           tmp_path: Path) -> None:
    info = scratch_cluster.start(pools=["p1"])
    pids = scratch_cluster.pids()
    assert set(pids) == set(DAEMONS)
    driver = RbdDriver(pool="p1", user=info.client, key=info.key, mon_host=info.mon_host,
                       secret_usage="u", scratch_dir=tmp_path, connect_timeout=2, op_timeout=2)
    driver.create_volume("v1", 1)

    scratch_cluster.stop()
    t0 = time.monotonic()
    with pytest.raises(StorageError) as e:  # the driver's connection is now dead
        driver.list_volumes()
    assert e.value.retryable and time.monotonic() - t0 < 15
    for pid in pids.values():  # children of this process: reaped, so gone entirely
        assert not Path(f"/proc/{pid}").exists()
    assert scratch_cluster.pids() == {}
    assert not list((scratch_cluster.dir / "run").iterdir())
    scratch_cluster.stop()  # idempotent

    # The CLI restarts it from its data (same fsid, same client key), then stops it.
    out = cli(scratch_cluster, "start", "--pool", "p2")
    assert out.returncode == 0, out.stderr
    assert info.key not in out.stdout + out.stderr  # the key is never printed
    assert f"Ceph cluster {info.fsid} healthy" in out.stdout
    restarted = scratch_cluster.info()
    assert (restarted.fsid, restarted.key) == (info.fsid, info.key)
    assert list(restarted.pools) == ["p1", "p2"]
    assert [v.id for v in driver.list_volumes()] == ["v1"]  # the same driver reconnected
    driver.close()
    status = json.loads(cli(scratch_cluster, "status").stdout)
    assert status["health"] == "HEALTH_OK" and set(status["pids"]) == set(DAEMONS)
    cli_pids = scratch_cluster.pids()

    out = cli(scratch_cluster, "stop")
    assert out.returncode == 0, out.stderr
    # Not our children: their parent (init) reaps them; none may still run.
    assert not any(pid_alive(pid) for pid in cli_pids.values())
    assert cli(scratch_cluster, "stop").returncode == 0
    assert json.loads(cli(scratch_cluster, "status").stdout)["pids"] == {}
