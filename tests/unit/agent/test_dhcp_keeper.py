"""The agent keeps its DHCP responder's leases to its desired ports, and says why when it
cannot serve them."""

from __future__ import annotations

from pathlib import Path

from agent.dhcp.packet import Lease
from agent.dhcp.responder import DhcpUnavailable
from agent.networks import NetworkKeeper, tap_name
from agent.protocol import DesiredNetwork, DesiredPort, DesiredState, NetworkKind
from agent.reconcile import Reconciler
from tests.unit.agent.test_reconcile import (
    FakeHypervisor,
    FakeNetwork,
    FakeStorage,
    _image_source,
    vm,
)

NET = DesiredNetwork(id="net-1", name="lan", kind=NetworkKind.TENANT, mtu=1450, vni=1000)
PORT = DesiredPort(id="port-1", network_id="net-1", mac="52:54:00:00:00:01",
                   addresses=["10.0.0.5/24"], gateways=["10.0.0.1"], mtu=1450, dhcp=True)


class FakeResponder:
    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.running = False
        self.leases: dict[str, Lease] | None = None

    def start(self) -> None:
        if self.refuse:
            raise DhcpUnavailable(self.refuse)
        self.running = True

    def stop(self) -> None:
        self.running = False

    def set_leases(self, leases: dict[str, Lease]) -> None:
        self.leases = leases


def _desired(generation: int, with_vm: bool = True) -> DesiredState:
    vms = [vm("aaaa-1").model_copy(update={"ports": [PORT]})] if with_vm else []
    return DesiredState(node_id="n", generation=generation, vms=vms,
                        networks=[NET] if with_vm else [])


def test_a_reconcile_pass_hands_the_ports_leases_to_the_responder(tmp_path: Path) -> None:
    responder = FakeResponder()
    keeper = NetworkKeeper(FakeNetwork(), None, tmp_path / "n.json",  # type: ignore[arg-type]
                           dhcp=responder)  # type: ignore[arg-type]
    rec = Reconciler(FakeHypervisor(), FakeStorage(tmp_path / "disks"), _image_source,
                     tmp_path / "instances", owner="node-1", stop_grace_s=1, networks=keeper,
                     ledger=keeper.ledger)
    rec.apply(_desired(1))
    assert rec.wait_idle(10)
    assert responder.running and responder.leases is not None
    assert {tap: str(lease.address) for tap, lease in responder.leases.items()} == \
        {tap_name("port-1"): "10.0.0.5/24"}
    rec.apply(_desired(2, with_vm=False))  # the VM went: its port is answered no more
    assert rec.wait_idle(10)
    assert responder.leases == {}
    keeper.close()
    assert not responder.running


def test_a_responder_that_cannot_start_shows_on_each_network_it_serves(tmp_path: Path) -> None:
    responder = FakeResponder(refuse="cannot open a packet socket: Operation not permitted")
    keeper = NetworkKeeper(FakeNetwork(), None, tmp_path / "n.json",  # type: ignore[arg-type]
                           dhcp=responder)  # type: ignore[arg-type]
    keeper.serve_dhcp(_desired(1))
    failure = keeper.ledger.get("network", "net-1", "dhcp")
    assert failure is not None and failure.message == (
        "DHCP is not served on this node: cannot open a packet socket: Operation not permitted")
    assert responder.leases is None
    responder.refuse = None  # e.g. the capability was given back; the retry policy allows
    keeper.ledger.forget("network", "net-1")
    keeper.serve_dhcp(_desired(2))
    assert keeper.ledger.get("network", "net-1", "dhcp") is None and responder.running
