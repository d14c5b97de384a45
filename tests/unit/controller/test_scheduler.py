"""Placement decisions, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.db.models import Node
from controller.errors import NoValidHost
from controller.services.scheduler import PlacementRequest, Policy, Usage, choose_node

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = Policy(cpu_allocation_ratio=2.0, reserved_host_memory_mib=512, node_down_after_s=30)


def node(name: str, cpus: int = 4, memory: int = 8192, seen_ago: float | None = 1) -> Node:
    seen = None if seen_ago is None else NOW - timedelta(seconds=seen_ago)
    return Node(id=name, name=name, cpus=cpus, memory_mib=memory, last_seen_at=seen)


def test_most_free_memory_wins() -> None:
    nodes = [node("a"), node("b")]
    usage = {"a": Usage(1, 4096, 1)}
    assert choose_node(nodes, usage, PlacementRequest(1, 1024), POLICY, NOW).name == "b"


def test_overcommit_ratio_and_reserve_are_applied() -> None:
    nodes = [node("a", cpus=2, memory=2048)]
    assert choose_node(nodes, {}, PlacementRequest(4, 1536), POLICY, NOW).name == "a"
    with pytest.raises(NoValidHost, match="a has 4 vCPUs free, 5 asked"):
        choose_node(nodes, {}, PlacementRequest(5, 128), POLICY, NOW)
    with pytest.raises(NoValidHost, match="a has 1536 MiB memory free, 1537 asked"):
        choose_node(nodes, {}, PlacementRequest(1, 1537), POLICY, NOW)


def test_every_refusal_is_explained() -> None:
    nodes = [node("down", seen_ago=300), node("new", seen_ago=None), node("full", memory=1024)]
    with pytest.raises(NoValidHost) as e:
        choose_node(nodes, {}, PlacementRequest(1, 1024), POLICY, NOW)
    assert e.value.extra["reasons"] == {
        "down": "is down (no recent heartbeat)",
        "new": "has never reported",
        "full": "has 512 MiB memory free, 1024 asked",
    }


def test_pinning_and_empty_region() -> None:
    nodes = [node("a"), node("b")]
    assert choose_node(nodes, {}, PlacementRequest(1, 64, "b"), POLICY, NOW).name == "b"
    with pytest.raises(NoValidHost, match="no nodes"):
        choose_node([], {}, PlacementRequest(1, 64), POLICY, NOW)
