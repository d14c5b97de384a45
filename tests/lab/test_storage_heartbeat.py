"""Every agent of the lab region writes its storage heartbeat into the shared Ceph
cluster and the controller shows it fresh; no node of a healthy region fences itself."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.region import wait_for
from tests.lab.region import LabRegion

pytestmark = pytest.mark.e2e

SEEN_TIMEOUT_S = 120  # failure bound: the controller reads every 2 s


def nodes(region: LabRegion) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in json.loads(region.cli("node", "list", "--json"))}


def test_every_node_writes_a_fresh_storage_heartbeat_and_none_is_fenced(
        lab_region: LabRegion) -> None:
    names = sorted(n.name for n in lab_region.nodes)

    def all_fresh() -> dict[str, dict[str, Any]] | None:
        found = nodes(lab_region)
        beats = {name: found[name].get("storage_heartbeat") for name in names}
        ok = all(b is not None and b["seq"] is not None and not b["stale"]
                 for b in beats.values())
        return found if ok else None

    first = wait_for(all_fresh, SEEN_TIMEOUT_S, "every node's storage heartbeat to be read",
                     interval=2.0)
    seqs = {name: first[name]["storage_heartbeat"]["seq"] for name in names}

    def advanced() -> bool:
        found = nodes(lab_region)
        return all(found[name]["storage_heartbeat"]["seq"] > seqs[name] for name in names)

    wait_for(advanced, SEEN_TIMEOUT_S, "every node's storage heartbeat to advance", interval=2.0)
    for name, node in nodes(lab_region).items():
        assert node["self_fenced_at"] is None, f"{name} fenced itself: {node}"
    shown = lab_region.cli("node", "show", names[0])
    assert "storage heartbeat: " in shown and "s ago (seq " in shown, shown
