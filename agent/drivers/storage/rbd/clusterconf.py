"""The pure parts of a MiniCluster: its ClusterInfo, its ceph.conf, its client's caps,
and what "settled" means in a `ceph status`."""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ClusterInfo:
    """How to reach a running MiniCluster."""

    fsid: str
    mon_host: str  # as librados takes it: "[v2:127.0.0.1:P2,v1:127.0.0.1:P1]"
    conf: Path  # ceph.conf; has no key and points at no client keyring
    client: str  # cephx id of the limited client, without "client."
    key: str  # that client's base64 cephx key
    admin_keyring: Path  # for tests and operators only
    pools: tuple[str, ...]

    def to_json(self) -> str:
        d = asdict(self)
        d.update(conf=str(self.conf), admin_keyring=str(self.admin_keyring),
                 pools=list(self.pools))
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterInfo:
        d = json.loads(text)
        return cls(fsid=d["fsid"], mon_host=d["mon_host"], conf=Path(d["conf"]),
                   client=d["client"], key=d["key"], admin_keyring=Path(d["admin_keyring"]),
                   pools=tuple(d["pools"]))


def client_caps(pools: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The limited client's caps: RBD on exactly `pools`, read of the cluster maps."""
    rbd_pools = ", ".join(f"profile rbd pool={p}" for p in pools)
    return {"mon": "profile rbd", "osd": rbd_pools, "mgr": rbd_pools}


FENCE_CLIENT = "vauban-fence"  # the controller's own client for (un)fencing nodes


def fence_caps() -> dict[str, str]:
    """The fence client's caps: read the maps and add, list and remove blocklist entries;
    nothing on any pool. Never given to nodes: their shared client (`profile rbd`) may
    only add entries, so a fenced node cannot lift its own."""
    return {"mon": 'allow r, allow command "osd blocklist"'}


def free_ports(n: int, address: str = "127.0.0.1") -> list[int]:
    """`n` distinct TCP ports free on `address` right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((address, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def conf_text(d: Path, fsid: str, mon_host: str, address: str = "127.0.0.1") -> str:
    """ceph.conf of a cluster in directory `d`: every daemon on `address` only (loopback
    unless told), size-1 pools, small daemons."""
    return f"""[global]
fsid = {fsid}
mon_host = {mon_host}
public_addr = {address}
cluster_addr = {address}
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = {d}/run
pid_file =
admin_socket = {d}/run/$name.$pid.asok
log_file = {d}/log/$name.log
log_to_stderr = false
err_to_stderr = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_allow_pool_delete = true
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mgr_stats_period = 1
mon_mgr_digest_period = 1
paxos_propose_interval = 0.1
mgr_initial_modules =

[mon]
mon_data = {d}/$name
keyring = {d}/$name/keyring

[mgr]
mgr_data = {d}/$name
keyring = {d}/$name/keyring

[osd]
osd_data = {d}/$name
keyring = {d}/$name/keyring
osd_objectstore = bluestore
bluestore_block_path = {d}/$name/block.img
bluestore_block_create = false
osd_memory_target = 939524096
bluestore_cache_autotune = true
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
"""


def health_problems(status: dict[str, Any], expected_pgs: int) -> list[str]:
    """Why a `ceph status` JSON does not show a settled, healthy one-OSD cluster (empty: it
    does)."""
    problems = []
    health = status.get("health", {})
    if health.get("status") != "HEALTH_OK":
        checks = ", ".join(sorted(health.get("checks", {})))
        problems.append(f"{health.get('status')} ({checks})")
    osdmap = status.get("osdmap", {})
    osdmap = osdmap.get("osdmap", osdmap)  # older releases nest it once more
    if osdmap.get("num_up_osds") != 1 or osdmap.get("num_in_osds") != 1:
        problems.append(f"osds up/in {osdmap.get('num_up_osds')}/{osdmap.get('num_in_osds')}")
    if not status.get("mgrmap", {}).get("available"):
        problems.append("mgr not available")
    pgmap = status.get("pgmap", {})
    clean = sum(s["count"] for s in pgmap.get("pgs_by_state", [])
                if s["state_name"] == "active+clean")
    if pgmap.get("num_pgs", 0) != expected_pgs or clean != expected_pgs:
        problems.append(f"{clean}/{expected_pgs} PGs active+clean "
                        f"({pgmap.get('pgs_by_state', [])})")
    return problems
