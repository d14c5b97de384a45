"""Storage heartbeat reads: the controller's round over every node's heartbeat object.

    .venv/bin/python bench/heartbeats.py [--nodes 100,1000,3000] [--rounds 5] [--json F]

Run as root on a machine with Ceph 16 (ceph-mon, ceph-mgr, ceph-osd, python3-rados).
Every controller process reads each node's storage heartbeat object every few seconds
(controller.ha.storage_watch), so a round must stay short as a region grows. A real
single-node Ceph cluster (MiniCluster) is started in /var/tmp/vauban-bench-heartbeats-<tag>
(removed at the end, its daemons stopped by PID); for the largest `--nodes`, that many
heartbeat objects are written as an agent writes them. Then, for each size, `--rounds`
rounds of the controller's read (`controller.ha.ceph._read_objects`: READ_WINDOW reads in
flight at once) are timed against a baseline in the same run: the same objects read one
after the other over the same connection (how the controller read them before). The two
take turns. Printed per size: the medians, their ratio, and the round time per node.
Only loopback is used. Exit status 0 whatever the numbers; 1 if the benchmark failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.drivers.storage.rbd.minicluster import MiniCluster  # noqa: E402
from agent.protocol import STORAGE_HEARTBEAT_NAMESPACE, storage_heartbeat_object  # noqa: E402
from controller.ha.ceph import (  # noqa: E402
    READ_WINDOW,
    CephAccess,
    Heartbeat,
    _parse,
    _read_objects,
    open_cluster,
)

POOL = "vauban"


def sequential(cluster: Any, node_ids: list[str]) -> dict[str, Heartbeat | None]:
    """The baseline: one read after the other (the controller's round before)."""
    import rados

    found: dict[str, Heartbeat | None] = {}
    with cluster.open_ioctx(POOL) as ioctx:
        ioctx.set_namespace(STORAGE_HEARTBEAT_NAMESPACE)
        for node_id in node_ids:
            try:
                found[node_id] = _parse(ioctx.read(storage_heartbeat_object(node_id), 4096))
            except rados.ObjectNotFound:
                found[node_id] = None
    return found


def write_heartbeats(cluster: Any, node_ids: list[str]) -> None:
    with cluster.open_ioctx(POOL) as ioctx:
        ioctx.set_namespace(STORAGE_HEARTBEAT_NAMESPACE)
        for i, node_id in enumerate(node_ids):
            ioctx.write_full(storage_heartbeat_object(node_id), json.dumps(
                {"seq": i + 1, "sent_at": "2026-12-03T00:00:00Z"}).encode())


def timed(read: Any, cluster: Any, node_ids: list[str]) -> float:
    started = time.perf_counter()
    got = read(cluster, node_ids)
    took = time.perf_counter() - started
    if len(got) != len(node_ids) or any(v is None for v in got.values()):
        raise RuntimeError(f"{read.__name__} read {len(got)} heartbeats of {len(node_ids)}")
    return took


def run(sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    top = Path("/var/tmp") / f"vauban-bench-heartbeats-{uuid.uuid4().hex[:8]}"
    top.mkdir(mode=0o711)
    cluster = MiniCluster(top / "ceph")
    try:
        info = cluster.start(pools=[POOL])
        conn = open_cluster(CephAccess(info.conf, info.client, info.key))
        try:
            all_ids = [str(uuid.uuid4()) for _ in range(max(sizes))]
            started = time.monotonic()
            write_heartbeats(conn, all_ids)
            print(f"{len(all_ids)} heartbeat objects written in "
                  f"{time.monotonic() - started:.1f} s; READ_WINDOW {READ_WINDOW}", flush=True)
            results = []
            for size in sizes:
                ids = all_ids[:size]
                timed(_read_objects_in_pool, conn, ids)  # warm-up: the OSD's caches
                windowed, baseline = [], []
                for _ in range(rounds):
                    windowed.append(timed(_read_objects_in_pool, conn, ids))
                    baseline.append(timed(sequential, conn, ids))
                w, b = statistics.median(windowed), statistics.median(baseline)
                results.append({"nodes": size, "windowed_s": w, "sequential_s": b,
                                "ratio": w / b})
                print(f"{size:5d} nodes: windowed {w * 1000:8.1f} ms, one by one "
                      f"{b * 1000:8.1f} ms, ratio {w / b:.3f} (1/{b / w:.0f}); "
                      f"{w / size * 1e6:.0f} us per node", flush=True)
            return results
        finally:
            conn.shutdown()
    finally:
        cluster.stop()
        shutil.rmtree(top, ignore_errors=True)


def _read_objects_in_pool(cluster: Any, node_ids: list[str]) -> dict[str, Heartbeat | None]:
    return _read_objects(cluster, POOL, node_ids)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/heartbeats.py",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--nodes", default="100,1000,3000",
                   help="region sizes, comma-separated (default 100,1000,3000)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per size (default 5)")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    args = p.parse_args(argv)
    try:
        sizes = sorted({int(n) for n in args.nodes.split(",")})
    except ValueError:
        p.error("--nodes takes numbers, comma-separated")
    if not sizes or sizes[0] < 1 or args.rounds < 1:
        p.error("--nodes and --rounds must be at least 1")
    try:
        results = run(sizes, args.rounds)
    except Exception as e:  # noqa: BLE001 (the benchmark's own failure, in one line)
        print(f"bench/heartbeats.py: {e}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
