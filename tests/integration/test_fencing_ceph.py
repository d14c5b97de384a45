"""Storage heartbeat and fencing against the session's real MiniCluster and libvirtd.

What is blocklisted, and why: a whole-IP entry ("127.0.0.1:0/0") would fence every Ceph
client of this machine, the session's other tests and the cluster's own daemons included.
So the caps check (may the nodes' client add a whole-IP entry? may it remove one?) uses a
whole-IP entry for a random loopback address nobody connects from (127.2xx.x.x), and the
fence of a node uses the per-client entry of the agent's own connection ("ip:0/nonce",
from `Rados.get_addrs()`), which fences that one librados instance and nothing else.
Both are the same code paths the controller takes (controller.ha.ceph), and every entry a
test adds is removed at its end, checked with `osd blocklist ls`.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.drivers.hypervisor.base import DiskSpec, VmSpec
from agent.drivers.hypervisor.libvirt import LibvirtDriver
from agent.drivers.storage.base import StorageError
from agent.drivers.storage.rbd.driver import RbdDriver
from agent.drivers.storage.rbd.minicluster import ClusterInfo, MiniCluster
from agent.fencing import Watchdog
from agent.protocol import STORAGE_HEARTBEAT_NAMESPACE, storage_heartbeat_object
from agent.reconcile import OWNER_LABEL, Reconciler
from agent.storage_heartbeat import StorageHeartbeat
from controller.ha.ceph import (
    FENCE_USER,
    READ_WINDOW,
    CephAccess,
    CephHaError,
    Fencer,
    HeartbeatJudge,
    HeartbeatReader,
    blocklist_entries,
    connected,
    mon_command,
    read_heartbeats,
    whole_ip,
)
from controller.storage_settings import key_from_keyring
from tests.integration.libvirt_fixtures import URI, Domains

pytestmark = pytest.mark.integration

POOL = "vauban"
BLOCKLIST_SETTLE_S = 60.0  # failure bound only: the OSD sees the new map within seconds


@pytest.fixture(scope="module")
def fence_access(ceph_minicluster: MiniCluster) -> CephAccess:
    keyring = ceph_minicluster.ensure_fence_client()
    return CephAccess(ceph_minicluster.conf, FENCE_USER, key_from_keyring(keyring, FENCE_USER))


@pytest.fixture
def node_access(ceph_cluster: ClusterInfo) -> CephAccess:
    return CephAccess(ceph_cluster.conf, ceph_cluster.client, ceph_cluster.key)


class RecordingFencer(Fencer):
    """The controller's fencer, and the entries a test added (noted before each add)."""

    def __init__(self, access: CephAccess) -> None:
        super().__init__(access)
        self.added: list[str] = []


@pytest.fixture
def fencer(fence_access: CephAccess) -> Iterator[RecordingFencer]:
    """The controller's fencer; every entry a test notes in `added` is removed afterwards,
    and the blocklist is checked to be as before."""
    f = RecordingFencer(fence_access)
    before = {e.addr for e in f.listed()}
    yield f
    for addr in f.added:
        f.remove(addr)
    assert {e.addr for e in f.listed()} == before


@pytest.fixture
def node_id(ceph_admin: Any) -> Iterator[str]:
    """A node id of this test; its heartbeat object is removed afterwards."""
    nid = f"it-{secrets.token_hex(6)}"
    yield nid
    with ceph_admin.open_ioctx(POOL) as ioctx:
        ioctx.set_namespace(STORAGE_HEARTBEAT_NAMESPACE)
        try:
            ioctx.remove_object(storage_heartbeat_object(nid))
        except Exception:  # noqa: BLE001 - the object may never have been written
            pass


def unused_loopback() -> str:
    """A loopback address no client of this machine uses (nothing binds 127.2xx.x.x)."""
    return f"127.{random.randint(200, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


class Destroys:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> list[str]:
        self.calls += 1
        return []


def test_the_nodes_client_may_fence_an_ip_but_only_the_fence_client_may_lift_it(
        node_access: CephAccess, fencer: RecordingFencer) -> None:
    addr = whole_ip(unused_loopback())
    fencer.added.append(addr)
    with connected(node_access) as node:
        mon_command(node, "osd blocklist", blocklistop="add", addr=addr, expire=600.0)
        assert addr in {e.addr for e in blocklist_entries(node)}
        with pytest.raises(CephHaError, match=r"\(-13\)"):
            mon_command(node, "osd blocklist", blocklistop="rm", addr=addr)
    assert addr in {e.addr for e in fencer.listed()}
    assert fencer.remove(addr) is True
    assert addr not in {e.addr for e in fencer.listed()}
    assert fencer.remove(addr) is False  # nothing to lift: a no-op


def test_the_fence_client_adds_lists_and_removes_with_an_expiry(fencer: RecordingFencer) -> None:
    addr = whole_ip(unused_loopback())
    fencer.added.append(addr)
    entry = fencer.add(addr, expire_s=3600)
    assert entry.addr == addr and entry.until
    assert fencer.add(addr, expire_s=3600).addr == addr  # again: renewed, still one entry
    assert [e.addr for e in fencer.listed()].count(addr) == 1
    assert fencer.remove(addr) is True


def test_the_fence_client_touches_no_pool(fence_access: CephAccess, node_id: str) -> None:
    import rados

    with connected(fence_access) as cluster, cluster.open_ioctx(POOL) as ioctx:
        ioctx.set_namespace(STORAGE_HEARTBEAT_NAMESPACE)
        with pytest.raises(rados.Error) as e:
            ioctx.write_full(storage_heartbeat_object(node_id), b"{}")
        assert abs(e.value.errno) == 1 or abs(e.value.errno) == 13  # EPERM / EACCES


def test_the_agents_heartbeat_is_read_back_by_the_controller(
        ceph_cluster: ClusterInfo, node_access: CephAccess, node_id: str,
        tmp_path: Path) -> None:
    driver = RbdDriver(POOL, ceph_cluster.client, ceph_cluster.key, ceph_cluster.mon_host,
                       "vauban-ceph", scratch_dir=tmp_path)
    watchdog = Watchdog(60.0, Destroys())
    beat = StorageHeartbeat(driver.conn, POOL, node_id, 1.0, watchdog)
    try:
        beat.beat()
        beat.beat()
        addrs = beat.client_addrs()
    finally:
        driver.close()
    assert addrs and all(re.fullmatch(r"127\.0\.0\.1:\d+/\d+", a) for a in addrs), addrs
    other = f"{node_id}-none"
    read = read_heartbeats(node_access, POOL, [node_id, other])
    assert read[other] is None
    got = read[node_id]
    assert got is not None and got.seq == 2 and got.sent_at
    reader = HeartbeatReader(node_access, POOL)  # the controller's watch: one connection
    try:
        assert reader.read([node_id]) == {node_id: got}
        assert reader.read([node_id]) == {node_id: got}
    finally:
        reader.close()

    now = [0.0]
    judge = HeartbeatJudge(30.0, clock=lambda: now[0])
    assert not judge.observe(node_id, got).stale
    now[0] = 29.0
    assert not judge.observe(node_id, got).stale
    now[0] = 30.0
    assert judge.observe(node_id, got).stale  # unchanged for 30 s by our clock


def test_a_round_reads_every_heartbeat_across_its_read_windows(
        ceph_admin: Any, node_access: CephAccess) -> None:
    """More nodes than one window of reads in flight: each gets its own heartbeat, the
    missing ones None, none mixed up."""
    ids = [f"it-{secrets.token_hex(6)}" for _ in range(READ_WINDOW + 5)]
    written = {n: i + 1 for i, n in enumerate(ids) if i % 3}  # every third never wrote
    with ceph_admin.open_ioctx(POOL) as ioctx:
        ioctx.set_namespace(STORAGE_HEARTBEAT_NAMESPACE)
        try:
            for n, seq in written.items():
                ioctx.write_full(storage_heartbeat_object(n), json.dumps(
                    {"seq": seq, "sent_at": "2026-12-03T00:00:00Z"}).encode())
            read = read_heartbeats(node_access, POOL, ids)
        finally:
            for n in written:
                ioctx.remove_object(storage_heartbeat_object(n))
    assert set(read) == set(ids)
    assert {n: b.seq for n, b in read.items() if b is not None} == written
    assert all(read[n] is None for n in ids if n not in written)


def running_domain(driver: LibvirtDriver, domains: Domains, workdir: Path, owner: str) -> str:
    """A running domain of node `owner` (an empty disk: QEMU runs, the guest idles)."""
    vm_id = domains.new_id()
    disk = workdir / f"{vm_id}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    driver.define(VmSpec(id=vm_id, name=f"vauban-it-{vm_id}", vcpus=1, memory_mib=64,
                         disks=(DiskSpec(disk, "qcow2", "vda"),),
                         console_log=workdir / f"{vm_id}.log", power_seq=1,
                         labels={OWNER_LABEL: owner}))
    driver.start(vm_id)
    return vm_id


def test_a_blocklisted_node_fences_itself_and_destroys_its_running_domain(
        ceph_cluster: ClusterInfo, fencer: RecordingFencer, node_id: str, domains: Domains,
        workdir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hv = LibvirtDriver(URI, accelerated=False)
    storage = RbdDriver(POOL, ceph_cluster.client, ceph_cluster.key, ceph_cluster.mon_host,
                        "vauban-ceph", scratch_dir=tmp_path / "scratch")
    try:
        vm_id = running_domain(hv, domains, workdir, owner=node_id)
        rec = Reconciler(hv, storage, lambda _i: iter(()), tmp_path / "instances",
                         owner=node_id, stop_grace_s=1)
        watchdog = Watchdog(3600.0, rec.destroy_own_vms, state_dir=tmp_path)
        rec.start_refusal = watchdog.start_refusal
        beat = StorageHeartbeat(storage.conn, POOL, node_id, 1.0, watchdog)
        beat.beat()
        (addr,) = beat.client_addrs()
        fencer.added.append(addr)
        fencer.add(addr, expire_s=600)

        failure = None
        deadline = time.monotonic() + BLOCKLIST_SETTLE_S
        while failure is None and time.monotonic() < deadline:
            try:
                beat.beat()  # a real write each time, until the OSD refuses it
            except StorageError as e:
                failure = e
        assert failure is not None, "the blocklisted client's writes kept succeeding"
        assert watchdog.fenced_at is not None, f"not fenced on: {failure}"
        assert "its Ceph client is blocklisted" in caplog.text
        assert json.loads((tmp_path / "fence.json").read_text())["fenced_at"]
        [obs] = [o for o in hv.list_vms() if o.id == vm_id]
        assert obs.running is False  # destroyed, still defined
        assert (workdir / f"{vm_id}.qcow2").exists()
        assert rec.start_refusal() is not None
    finally:
        storage.close()
        hv.host.close()


def test_the_fence_client_has_exactly_its_caps_and_a_private_keyring(
        ceph_minicluster: MiniCluster, fence_access: CephAccess, ceph_admin: Any) -> None:
    import stat

    from agent.drivers.storage.rbd.clusterconf import fence_caps

    assert stat.S_IMODE(ceph_minicluster.fence_keyring.stat().st_mode) == 0o600
    ret, out, err = ceph_admin.mon_command(json.dumps(
        {"prefix": "auth get", "entity": f"client.{FENCE_USER}", "format": "json"}), b"")
    assert ret == 0, err
    (entry,) = json.loads(out)
    assert entry["caps"] == fence_caps() == {"mon": 'allow r, allow command "osd blocklist"'}
    assert entry["key"] == fence_access.key
    assert ceph_minicluster.ensure_fence_client() == ceph_minicluster.fence_keyring  # again
