"""The agent stops, saying why, when the controller speaks another wire protocol or
refuses the node as removed from the region."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from agent.client import ControllerClient, ControllerUnavailable, NodeRemoved, ProtocolMismatch
from agent.config import AgentConfig, NodeIdentity
from agent.daemon import Agent
from hardware.kvmprobe import KvmProbe

REFUSAL = "agent speaks protocol 3, this controller speaks 2; upgrade the controller"


class RefusingClient(ControllerClient):
    """Answers every call as a controller of another protocol does."""

    def __init__(self) -> None:
        self.calls = 0
        self.report_interval_s = None
        self.poll_wait_s = None

    def image_chunks(self, image_id: str) -> Any:
        raise AssertionError("no image is fetched by these tests")

    def desired(self, after: int, wait: float) -> Any:
        self.calls += 1
        raise ProtocolMismatch(REFUSAL)

    def report(self, status: Any) -> None:
        self.calls += 1
        raise ProtocolMismatch(REFUSAL)


def refused_agent(tmp_path: Path) -> tuple[Agent, RefusingClient]:
    client = RefusingClient()
    identity = NodeIdentity(node_id="n-1", name="n1", controller_url="https://127.0.0.1:1")
    agent = Agent(AgentConfig(data_dir=tmp_path, heartbeat_s=0.01), identity, client,
                  hypervisor=None, storage=None,  # type: ignore[arg-type]  # never reached
                  kvm=KvmProbe(False, False, "test"), storage_driver="localfs")
    return agent, client


@pytest.mark.timeout(60)  # before the fix the loops retried forever
@pytest.mark.parametrize("loop", ["_poll_loop", "_report_loop"])
def test_a_protocol_refusal_stops_the_agent_with_the_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, loop: str) -> None:
    agent, client = refused_agent(tmp_path)
    agent.status = lambda: None  # type: ignore[assignment,method-assign,return-value]
    agent.stopping.clear()

    getattr(agent, loop)()  # returns once the agent stops

    assert client.calls == 1  # no retry: it cannot help
    assert agent.stopping.is_set()
    assert str(agent.refused) == REFUSAL
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"the controller refuses this agent: {REFUSAL}; stopping the agent"]


@pytest.mark.timeout(60)
def test_a_removed_node_stops_its_agent_with_the_controllers_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    agent, client = refused_agent(tmp_path)
    removed = ("node 'n1' (n-1) was removed from the region by admin at 2026-12-01T06:00:00Z; "
               "its certificate is no longer accepted")

    def desired(after: int, wait: float) -> Any:
        client.calls += 1
        raise NodeRemoved(removed)

    client.desired = desired  # type: ignore[method-assign]
    agent._poll_loop()

    assert client.calls == 1 and agent.stopping.is_set()
    assert isinstance(agent.refused, NodeRemoved)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"the controller refuses this agent: {removed}; stopping the agent"]


@pytest.mark.parametrize("told, own, expected", [(None, 5.0, 5.0), (200.0, 5.0, 200.0),
                                                 (5.0, 60.0, 60.0)])
def test_reports_follow_the_interval_the_controller_names_never_below_our_own(
        tmp_path: Path, told: float | None, own: float, expected: float) -> None:
    agent, client = refused_agent(tmp_path)
    agent.config = AgentConfig(data_dir=tmp_path, heartbeat_s=own)
    client.report_interval_s = told
    intervals = [agent.report_interval_s() for _ in range(200)]
    assert all(expected * 0.9 <= i <= expected * 1.1 for i in intervals)
    assert max(intervals) - min(intervals) > expected * 0.05  # spread, not in step


@pytest.mark.parametrize("named, expected", [(None, 25.0), (100.0, 100.0)])
def test_long_polls_ask_the_wait_the_controller_names(
        tmp_path: Path, named: float | None, expected: float) -> None:
    agent, client = refused_agent(tmp_path)
    client.poll_wait_s = named
    asked: list[float] = []

    def desired(after: int, wait: float) -> Any:
        asked.append(wait)
        raise ProtocolMismatch(REFUSAL)  # one poll, then the agent stops

    client.desired = desired  # type: ignore[method-assign]
    agent._poll_loop()
    assert asked == [expected]


@pytest.mark.timeout(60)  # before the fix the status waited a whole report interval (1 h)
def test_an_undelivered_status_is_sent_again_after_the_backoff_not_the_interval(
        tmp_path: Path) -> None:
    agent, client = refused_agent(tmp_path)
    agent.config = AgentConfig(data_dir=tmp_path, heartbeat_s=3600.0)
    agent.status = lambda: None  # type: ignore[assignment,method-assign,return-value]
    sent: list[str] = []

    def report(status: Any) -> None:
        sent.append("tried")
        if len(sent) == 1:
            raise ControllerUnavailable("connection refused")
        agent.stopping.set()  # delivered: the test is over

    client.report = report  # type: ignore[method-assign]
    agent._report_now.set()  # a change to report at once
    agent._report_loop()
    assert sent == ["tried", "tried"]


@pytest.mark.timeout(60)  # before the fix the agent waited on the stuck command
def test_a_stopping_agent_does_not_wait_for_its_hypervisor_tls_round(tmp_path: Path) -> None:
    """The TLS keeper may be restarting libvirtd, a job systemd queues behind this very
    agent's stop job (the unit is ordered after libvirtd): the agent must end without it."""
    import threading

    entered, release = threading.Event(), threading.Event()

    class StuckTls:
        def ready(self) -> bool:
            return False

        def keep(self, client: Any) -> Any:
            entered.set()
            release.wait()  # `systemctl stop libvirtd`, queued behind our own stop
            raise OSError("released by the test")

    agent, client = refused_agent(tmp_path)
    agent.hypervisor_tls = StuckTls()  # type: ignore[assignment]

    def unanswered(*_args: Any) -> Any:  # a controller that answers nothing meanwhile
        agent.stopping.wait()
        raise ControllerUnavailable("stopping")

    for call in ("desired", "report", "console_requests"):
        setattr(client, call, unanswered)
    agent.status = lambda: None  # type: ignore[assignment,method-assign,return-value]
    runner = threading.Thread(target=agent.run, daemon=True)
    try:
        runner.start()
        assert entered.wait(30), "the TLS round never started"
        agent.stop()
        runner.join(30)
        assert not runner.is_alive(), "the stopping agent waits for the TLS round"
    finally:
        release.set()


@pytest.mark.timeout(60)  # before, the arrival waited for the report interval (1 h here)
def test_a_vm_arriving_by_migration_is_reported_once_it_runs_here(tmp_path: Path) -> None:
    agent, _client = refused_agent(tmp_path)
    agent.config = AgentConfig(data_dir=tmp_path, heartbeat_s=3600.0)
    looks: list[str] = []

    class Arriving:
        def awaiting_arrival(self) -> bool:
            return True

        def arrivals(self) -> frozenset[str]:
            looks.append("looked")
            return frozenset({"vm-1"}) if len(looks) >= 3 else frozenset()

    agent.reconciler = Arriving()  # type: ignore[assignment]
    agent._wait_for_report()  # returns once the VM runs here, not after an hour
    assert len(looks) == 3
    # reported: the same arrival does not cut the next wait short again
    agent.config = AgentConfig(data_dir=tmp_path, heartbeat_s=1.0)
    agent._wait_for_report()
    assert len(looks) >= 4
