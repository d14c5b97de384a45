"""The pure parts of controller.ha.ceph: blocklist addresses, Ceph's answers, and when a
storage heartbeat is stale by the controller's clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from controller.ha.ceph import (
    BlocklistEntry,
    CephHaError,
    Heartbeat,
    HeartbeatJudge,
    blocklist_entries,
    expiry,
    whole_ip,
)


def test_a_whole_ip_entry_names_port_and_nonce_zero() -> None:
    assert whole_ip("10.0.0.11") == "10.0.0.11:0/0"
    assert whole_ip("fd00::11") == "[fd00::11]:0/0"
    with pytest.raises(ValueError):
        whole_ip("10.0.0.11:0/0")
    with pytest.raises(ValueError):
        whole_ip("node-1")


class Answers:
    def __init__(self, ret: int, out: bytes, err: str = "") -> None:
        self.answer = (ret, out, err)
        self.asked: list[dict[str, Any]] = []

    def mon_command(self, cmd: str, inbuf: bytes) -> tuple[int, bytes, str]:
        self.asked.append(json.loads(cmd))
        return self.answer


def test_both_arrays_of_blocklist_ls_are_read() -> None:
    """Ceph 16.2.15 prints the address entries, then the range entries."""
    out = (b'[{"addr":"10.0.0.11:0/0","until":"2026-12-09T12:00:00.123456+0000"}]'
           b'[{"range":"10.0.1.0:0/24","until":"2026-12-09T12:00:00.000000+0000"}]\n')
    cluster = Answers(0, out)
    entries = blocklist_entries(cluster)
    assert cluster.asked == [{"prefix": "osd blocklist ls", "format": "json"}]
    assert [e.addr for e in entries] == ["10.0.0.11:0/0", "10.0.1.0:0/24"]
    assert expiry(entries[0]) == datetime(2026, 12, 9, 12, 0, 0, 123456, tzinfo=UTC)
    assert blocklist_entries(Answers(0, b"[][]")) == []
    assert expiry(BlocklistEntry("a", "soon")) is None
    with pytest.raises(CephHaError, match=r"osd blocklist ls failed \(-13\): access denied"):
        blocklist_entries(Answers(-13, b"", "access denied"))


def test_a_heartbeat_is_stale_once_unchanged_for_the_down_delay_by_our_clock() -> None:
    now = [100.0]
    judge = HeartbeatJudge(30.0, clock=lambda: now[0],
                           wall=lambda: datetime(2026, 12, 2, 12, 0, int(now[0]) % 60, tzinfo=UTC))
    # the node's own sent_at says nothing: a node whose clock runs ahead is not fresher
    first = judge.observe("n1", Heartbeat(5, "2030-01-01T00:00:00Z"))
    assert not first.stale and first.seq == 5
    now[0] = 129.9
    assert not judge.observe("n1", Heartbeat(5, "2030-01-01T00:00:00Z")).stale
    now[0] = 130.0
    stale = judge.observe("n1", Heartbeat(5, None))
    assert stale.stale and stale.changed_at == first.changed_at
    assert stale.describe(datetime(2026, 12, 2, 13, tzinfo=UTC)) == \
        "stale since 2026-12-02T12:00:40+00:00"
    now[0] = 131.0
    fresh = judge.observe("n1", Heartbeat(6, None))
    assert not fresh.stale
    assert fresh.describe(datetime(2026, 12, 2, 12, 0, 14, tzinfo=UTC)) == "3 s ago"
    # a node that never wrote one is stale after the same delay, not at once
    assert not judge.observe("n2", None).stale
    now[0] = 161.0
    assert judge.observe("n2", None).stale
