"""A real single-node Ceph cluster for the session (see agent.drivers.storage.rbd.minicluster).

Started once in a fresh directory under /var/tmp, stopped by its recorded PIDs and
removed at the end of the session.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.drivers.storage.rbd.minicluster import ClusterInfo, MiniCluster

POOLS = ("vauban", "vauban-fast")


@pytest.fixture(scope="session")
def ceph_minicluster() -> Iterator[MiniCluster]:
    """The session's running MiniCluster, with pools `vauban` and `vauban-fast`."""
    root = Path(tempfile.mkdtemp(prefix="vauban-ceph-", dir="/var/tmp"))
    root.chmod(0o711)
    cluster = MiniCluster(root)
    try:
        cluster.start(pools=list(POOLS))
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def ceph_cluster(ceph_minicluster: MiniCluster) -> ClusterInfo:
    """How to reach the session's cluster: monitors, the limited client and its key."""
    return ceph_minicluster.info()


@pytest.fixture(scope="session")
def ceph_admin(ceph_minicluster: MiniCluster) -> Iterator[Any]:
    """A `rados.Rados` connected as client.admin: for checks and set-up behind the driver."""
    with ceph_minicluster.admin() as admin:
        yield admin
