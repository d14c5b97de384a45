"""Placement decisions, without a database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from agent.protocol import PoolUsage, StorageStatus
from controller.db.models import Node
from controller.errors import NoValidHost
from controller.services.scheduler import (
    DiskClaim,
    PlacementRequest,
    Policy,
    Snapshot,
    Usage,
    disk_capacities,
    place,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GIB = 1024**3
POLICY = Policy(cpu_allocation_ratio=2.0, reserved_host_memory_mib=512, node_down_after_s=30)
RBD = replace(POLICY, storage="rbd", root_pool="vauban")


def disk(pool: str = "localfs", total_gib: float = 100, free_gib: float | None = None,
         health: str = "OK") -> dict[str, object]:
    """A storage report as a node's agent sends it, in GiB."""
    free = total_gib if free_gib is None else free_gib
    return StorageStatus(driver="rbd" if pool != "localfs" else "localfs", health=health,
                         pools=[PoolUsage(pool=pool, used_bytes=int((total_gib - free) * GIB),
                                          max_avail_bytes=int(free * GIB))]
                         ).model_dump(mode="json")


def node(name: str, cpus: int = 4, memory: int = 8192, seen_ago: float | None = 1,
         storage: dict[str, object] | None = None) -> Node:
    seen = None if seen_ago is None else NOW - timedelta(seconds=seen_ago)
    return Node(id=name, name=name, cpus=cpus, memory_mib=memory, last_seen_at=seen,
                storage_status=disk() if storage is None else storage)


def region(nodes: list[Node], usage: dict[str, Usage] | None = None,
           policy: Policy = POLICY, volume_gib: int = 0) -> Snapshot:
    usage = usage or {}
    return Snapshot(nodes, usage, {}, disk_capacities(nodes, usage, policy, volume_gib))


def chosen(nodes: list[Node], req: PlacementRequest, usage: dict[str, Usage] | None = None,
           policy: Policy = POLICY, volume_gib: int = 0) -> str:
    return place(region(nodes, usage, policy, volume_gib), req, policy, NOW).node_name


def reasons(nodes: list[Node], req: PlacementRequest, usage: dict[str, Usage] | None = None,
            policy: Policy = POLICY, volume_gib: int = 0) -> dict[str, str]:
    with pytest.raises(NoValidHost) as e:
        place(region(nodes, usage, policy, volume_gib), req, policy, NOW)
    return e.value.extra["reasons"]  # type: ignore[no-any-return]


def test_most_free_memory_wins() -> None:
    nodes = [node("a"), node("b")]
    usage = {"a": Usage(1, 4096, 1)}
    assert chosen(nodes, PlacementRequest(1, 1024), usage) == "b"


def test_overcommit_ratio_and_reserve_are_applied() -> None:
    nodes = [node("a", cpus=2, memory=2048)]
    assert chosen(nodes, PlacementRequest(4, 1536)) == "a"
    assert reasons(nodes, PlacementRequest(5, 128)) == {"a": "has 4 vCPUs free, 5 asked"}
    assert reasons(nodes, PlacementRequest(1, 1537)) == {
        "a": "has 1536 MiB memory free, 1537 asked"}


def test_every_refusal_is_explained() -> None:
    nodes = [node("down", seen_ago=300), node("new", seen_ago=None), node("full", memory=1024)]
    with pytest.raises(NoValidHost) as e:
        place(region(nodes), PlacementRequest(1, 1024, disk_gib=10), POLICY, NOW)
    assert e.value.extra["reasons"] == {
        "down": "is down (no recent heartbeat)",
        "new": "has never reported",
        "full": "has 512 MiB memory free, 1024 asked",
    }
    assert str(e.value).startswith("no node can host 1 vCPUs, 1024 MiB and 10 GiB of disk: ")


def test_pinning_and_empty_region() -> None:
    nodes = [node("a"), node("b")]
    assert chosen(nodes, PlacementRequest(1, 64, "b")) == "b"
    with pytest.raises(NoValidHost, match="no nodes"):
        place(region([]), PlacementRequest(1, 64), POLICY, NOW)


def test_a_disk_larger_than_the_node_is_refused_with_the_numbers() -> None:
    nodes = [node("n1", storage=disk(total_gib=80, free_gib=79))]
    usage = {"n1": Usage(2, 1024, 1, disk_gib=2)}
    assert reasons(nodes, PlacementRequest(1, 64, disk_gib=65536), usage) == {
        "n1": "needs 65536 GiB of disk, 78 GiB free of 80 GiB at ratio 1.0"}
    placed = place(region(nodes, usage), PlacementRequest(1, 64, disk_gib=78), POLICY, NOW)
    assert placed.disk == DiskClaim(pool="localfs", gib=78, free_gib=78, capacity_gib=80)


def test_the_disk_ratio_allows_thin_overcommit() -> None:
    nodes = [node("n1", storage=disk(total_gib=80))]
    usage = {"n1": Usage(disk_gib=100)}
    thin = replace(POLICY, disk_allocation_ratio=1.5)
    assert chosen(nodes, PlacementRequest(1, 64, disk_gib=20), usage, thin) == "n1"
    assert reasons(nodes, PlacementRequest(1, 64, disk_gib=21), usage, thin) == {
        "n1": "needs 21 GiB of disk, 20 GiB free of 120 GiB at ratio 1.5"}
    # at the default ratio the node is already full: nothing more fits
    assert reasons(nodes, PlacementRequest(1, 64, disk_gib=1), usage) == {
        "n1": "needs 1 GiB of disk, 0 GiB free of 80 GiB at ratio 1.0"}


def test_the_node_with_disk_room_is_chosen() -> None:
    nodes = [node("big", memory=4096, storage=disk(total_gib=500)),
             node("small", memory=8192, storage=disk(total_gib=10))]
    assert chosen(nodes, PlacementRequest(1, 64, disk_gib=5)) == "small"  # more memory
    assert chosen(nodes, PlacementRequest(1, 64, disk_gib=50)) == "big"


def test_unknown_disk_capacity_is_a_refusal() -> None:
    nodes = [node("silent", storage={}), node("broken", storage=StorageStatus(
        driver="localfs", health="ERROR", detail="/srv is not writable").model_dump())]
    nodes[0].storage_status = None
    assert reasons(nodes, PlacementRequest(1, 64, disk_gib=1)) == {
        "silent": "has not reported its disk capacity",
        "broken": "has not reported its disk capacity (ERROR: /srv is not writable)"}


def test_rbd_nodes_share_one_pool_counting_every_disk_and_volume() -> None:
    pool = disk("vauban", total_gib=100, free_gib=90)
    nodes = [node("a", storage=pool), node("b", storage=pool)]
    usage = {"a": Usage(disk_gib=30), "b": Usage(disk_gib=20)}
    # 100 GiB pool: 50 GiB of root disks on both nodes and 40 GiB of volumes
    assert chosen(nodes, PlacementRequest(1, 64, disk_gib=10), usage, RBD, 40) in ("a", "b")
    refused = reasons(nodes, PlacementRequest(1, 64, disk_gib=11), usage, RBD, 40)
    assert refused == {n: "needs 11 GiB of disk, Ceph pool vauban has 10 GiB free of 100 GiB "
                          "at ratio 1.0" for n in ("a", "b")}
    placed = place(region(nodes, usage, RBD, 40), PlacementRequest(1, 64, disk_gib=10), RBD, NOW)
    assert placed.disk == DiskClaim(pool="vauban", gib=10, free_gib=10, capacity_gib=100)


def test_rbd_pool_size_comes_from_the_freshest_report() -> None:
    nodes = [node("old", seen_ago=20, storage=disk("vauban", total_gib=10)),
             node("fresh", seen_ago=1, storage=disk("vauban", total_gib=1000)),
             node("blind", seen_ago=0, storage=disk("localfs"))]
    assert chosen(nodes, PlacementRequest(1, 64, "old", disk_gib=500), policy=RBD) == "old"


def test_rbd_pool_nobody_reports_is_a_refusal() -> None:
    unreachable = StorageStatus(driver="rbd", health="UNREACHABLE", detail="timed out")
    nodes = [node("a", storage=unreachable.model_dump())]
    assert reasons(nodes, PlacementRequest(1, 64, disk_gib=1), policy=RBD) == {
        "a": "cannot tell the space of Ceph pool vauban: no node reports it "
             "(a: UNREACHABLE: timed out)"}
