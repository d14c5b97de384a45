"""Settling volume operations from what the steward reports, on unsaved model objects."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from agent.protocol import ObservedVolume
from controller.db.models import Operation, Volume
from controller.services.volume_observed import GIB, _settle

GEN = 7  # the desired generation the operation waits for


def op(kind: str) -> Operation:
    return Operation(kind=kind, target_id="vol-1", target_name="data", node_id="n1",
                     expect_generation=GEN, state="pending", requested_by="admin")


def volume(**kw: Any) -> Volume:
    values: dict[str, Any] = {"id": "vol-1", "name": "data", "pool": "p", "size_gib": 2,
                              "snapshots": [], "rollback_seq": 0, "instance_id": None,
                              "target": None}
    return Volume(**{**values, **kw})


def seen(size_gib: int = 2, error: str | None = None, failed_generation: int | None = None,
         **kw: Any) -> ObservedVolume:
    return ObservedVolume(id="vol-1", size_bytes=size_gib * GIB, used_bytes=0,
                          snapshots=kw.pop("snapshots", []), error=error,
                          failed_generation=failed_generation,
                          rollback_seq=kw.pop("rollback_seq", 0), **kw)


def settle(operation: Operation, vol: Volume, obs: ObservedVolume) -> Operation:
    _settle(Session(), operation, vol, obs)  # no session is used but for deletes
    return operation


OLD_ERROR = {"error": "rbd: I/O error", "failed_generation": GEN - 2}


@pytest.mark.parametrize("kind, vol, obs", [
    ("volume.resize", volume(size_gib=4), seen(4, **OLD_ERROR)),
    ("volume.snapshot", volume(snapshots=["s1"]), seen(snapshots=["s1"], **OLD_ERROR)),
    ("volume.snapshot-delete", volume(), seen(**OLD_ERROR)),
    ("volume.rollback", volume(rollback_seq=1), seen(rollback_seq=1, **OLD_ERROR)),
    ("volume.attach", volume(instance_id="vm-1", target="vdc"),
     seen(attached_to="vm-1", target="vdc", **OLD_ERROR)),
    ("volume.detach", volume(), seen(**OLD_ERROR)),
])
def test_an_older_requests_error_does_not_hold_up_what_the_node_shows_done(
        kind: str, vol: Volume, obs: ObservedVolume) -> None:
    """Regression: an operation never settled while an earlier request's error was shown,
    though the node already showed what it asked for."""
    assert settle(op(kind), vol, obs).state == "succeeded"


def test_an_older_requests_error_leaves_an_unfinished_operation_pending() -> None:
    resize = settle(op("volume.resize"), volume(size_gib=4), seen(2, **OLD_ERROR))
    assert resize.state == "pending" and resize.error is None


def test_the_current_requests_error_fails_the_operation() -> None:
    for generation in (GEN, GEN + 1):
        failed = settle(op("volume.resize"), volume(size_gib=4),
                        seen(4, error="pool full", failed_generation=generation))
        assert failed.state == "failed" and failed.error == "pool full"


def test_a_create_settles_only_once_the_volume_exists() -> None:
    # shown for its error alone (nothing in storage): an older error is no success
    absent = seen(0, **OLD_ERROR)
    assert settle(op("volume.create"), volume(), absent).state == "pending"
    assert settle(op("volume.create"), volume(), seen(2)).state == "succeeded"
    assert settle(op("volume.create"), volume(), seen(2, **OLD_ERROR)).state == "succeeded"
