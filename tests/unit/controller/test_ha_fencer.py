"""The region's fencer without its BMCs and Ceph: what it will not fence, and what it takes
for a node's liveness."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.db.models import Node
from controller.ha.ceph import BlocklistEntry
from controller.ha.failover import FenceError, LostNode, ceph_client_ips
from controller.ha.fencer import RegionFencer, ceph_monitor_ips
from controller.secretbox import RegionKey


@dataclass
class View:
    seq: int | None
    stale: bool


class Watch:
    def __init__(self, view: View | None, error: str | None = None) -> None:
        self._view, self.error = view, error

    def view(self, node_id: str) -> View | None:
        return self._view


class Blocklist:
    def __init__(self) -> None:
        self.added: list[str] = []

    def add(self, addr: str) -> BlocklistEntry:
        self.added.append(addr)
        return BlocklistEntry(addr, "forever")


def fencer(watch: Watch | None = None, blocklist: Blocklist | None = None,
           protected: set[str] | None = None) -> RegionFencer:
    return RegionFencer(RegionKey(b"k" * 32), watch, blocklist,  # type: ignore[arg-type]
                        protected or set())


NODE = LostNode("n1", "n1", ("10.0.0.11",), None)


@pytest.mark.parametrize(("view", "error", "alive"), [
    (View(7, stale=True), None, False),
    (View(7, stale=False), None, True),
    (View(None, stale=True), None, True),  # never wrote one: cannot be judged by it
    (None, None, True),  # not read yet
    (View(7, stale=True), "Ceph does not answer", True),  # our trouble, not the node's
])
def test_only_a_heartbeat_seen_going_stale_makes_a_node_dead(
        view: View | None, error: str | None, alive: bool) -> None:
    assert fencer(Watch(view, error)).storage_alive(NODE) is alive  # type: ignore[arg-type]


def test_the_controllers_and_the_monitors_addresses_are_never_blocklisted(
        tmp_path: Path) -> None:
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nmon_host = [v2:10.0.0.11:3300,v1:10.0.0.11:6789]\n")
    assert ceph_monitor_ips(conf) == {"10.0.0.11"}
    blocklist = Blocklist()
    with pytest.raises(FenceError, match="shares its address 10.0.0.11"):
        fencer(blocklist=blocklist, protected=ceph_monitor_ips(conf)).cut_storage(NODE)
    assert blocklist.added == []


def test_without_a_bmc_nothing_is_powered_off_and_the_operator_is_told_how_to_go_on() -> None:
    with pytest.raises(FenceError, match="no BMC configured.*--confirm-powered-off"):
        fencer().power_off(NODE)


def test_the_ceph_client_ips_a_node_reports_are_blocklisted_else_its_underlay() -> None:
    node = Node(name="n1", inventory={"underlay_ip": "10.0.0.11"},
                storage_status={"client_addrs": ["v2:10.1.0.11:0/3141", "10.1.0.11:0/42",
                                                 "[fd00::11]:0/7", "0.0.0.0:0/1"]})
    assert ceph_client_ips(node) == ("10.1.0.11", "fd00::11")
    assert ceph_client_ips(Node(name="n2", inventory={"underlay_ip": "10.0.0.12"})) == \
        ("10.0.0.12",)
    blocklist = Blocklist()
    fencer(blocklist=blocklist).cut_storage(LostNode("n1", "n1", ceph_client_ips(node), None))
    assert blocklist.added == ["10.1.0.11:0/0", "[fd00::11]:0/0"]
