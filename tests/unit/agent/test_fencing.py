"""The self-fence watchdog with a fake clock, and the reconciler refusing starts while fenced."""

from __future__ import annotations

import errno
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.drivers.hypervisor.base import VmObservation
from agent.drivers.storage.base import StorageError
from agent.fencing import Watchdog
from agent.protocol import DesiredState, ObservedVmState
from agent.reconcile import Reconciler
from agent.storage_heartbeat import blocklisted
from tests.unit.agent.test_reconcile import MINE, FakeHypervisor, FakeStorage, _image_source, vm

FENCE_AFTER = 20.0
T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Destroyer:
    """Stands for the reconciler's destroy_own_vms: records each call."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> list[str]:
        self.calls += 1
        return ["vm-1"] if self.calls == 1 else []


def watchdog(tmp_path: Path | None = None) -> tuple[Watchdog, Clock, Destroyer]:
    clock, destroy = Clock(), Destroyer()
    return Watchdog(FENCE_AFTER, destroy, state_dir=tmp_path, clock=clock,
                    wall=lambda: T0), clock, destroy


def test_a_node_that_hears_either_side_does_not_fence() -> None:
    w, clock, destroy = watchdog()
    for _ in range(10):  # the controller away for 100 s, the storage heartbeat going on
        clock.now += 10
        w.storage_ok()
        assert w.check() is None
    for _ in range(10):  # and the other way round
        clock.now += 10
        w.controller_ok()
        assert w.check() is None
    assert destroy.calls == 0 and w.start_refusal() is None


def test_a_node_that_hears_neither_fences_once_both_are_stale(
        caplog: pytest.LogCaptureFixture) -> None:
    w, clock, destroy = watchdog()
    clock.now += FENCE_AFTER - 0.5
    assert w.check() is None
    clock.now += 0.5
    assert w.check() == T0
    assert destroy.calls >= 1
    assert "self-fenced: no controller for 20 s and no storage heartbeat for 20 s" in caplog.text
    refusal = w.start_refusal()
    assert refusal is not None and "self-fenced at 2026-12-02T12:00:00+00:00" in refusal


def test_after_a_freeze_the_first_answer_cannot_avert_the_fence() -> None:
    """A frozen agent thaws with both stamps stale: whichever side answers first, the
    watchdog judges before it records that answer, so the node fences."""
    for first in ("controller_ok", "storage_ok"):
        w, clock, destroy = watchdog()
        clock.now += 300  # frozen: the monotonic clock ran on
        getattr(w, first)()
        assert w.fenced_at == T0, first
        assert destroy.calls == 1
        w.controller_ok()
        w.storage_ok()  # fresh contact afterwards does not lift it
        assert w.check() == T0 and w.start_refusal() is not None


def test_a_stopping_agent_is_not_fenced_by_its_own_silence() -> None:
    """Once the agent stops, its polls have ended: a heartbeat write that lands late, or
    the ticker, must not take that silence for a lost lease (it did, and the fence file
    outlived the restart); a blocklisted heartbeat still fences."""
    w, clock, destroy = watchdog()
    w.stand_down()
    clock.now += 300
    w.storage_ok()
    assert w.check() is None and destroy.calls == 0 and w.start_refusal() is None
    w.blocklisted("-108")
    assert w.fenced_at == T0 and destroy.calls == 1


def test_a_blocklisted_heartbeat_fences_at_once(caplog: pytest.LogCaptureFixture) -> None:
    w, _clock, destroy = watchdog()
    w.controller_ok()
    w.blocklisted("storage heartbeat: [errno 108] RADOS connection was shutdown")
    assert w.fenced_at == T0 and destroy.calls == 1
    assert "its Ceph client is blocklisted" in caplog.text


def test_blocklisted_errors_are_told_from_other_failures() -> None:
    class RadosError(OSError):
        pass

    def wrapped(code: int) -> StorageError:
        try:
            try:
                raise RadosError(code, "x")
            except RadosError as inner:
                raise StorageError("storage heartbeat: x") from inner
        except StorageError as e:
            return e

    assert blocklisted(wrapped(errno.ESHUTDOWN))
    assert blocklisted(wrapped(-errno.ESHUTDOWN))
    assert not blocklisted(wrapped(errno.ETIMEDOUT))
    assert not blocklisted(StorageError("no cause"))


def test_only_the_controller_clearing_this_very_fence_lifts_it(tmp_path: Path) -> None:
    w, clock, _destroy = watchdog(tmp_path)
    clock.now += 100
    w.check()
    assert w.fenced_at == T0
    assert not w.clear(None)
    assert not w.clear(datetime(2026, 12, 2, 11, 0, tzinfo=UTC))  # an older fence's
    assert w.start_refusal() is not None
    assert w.clear(T0)
    assert w.fenced_at is None and w.start_refusal() is None
    assert not (tmp_path / "fence.json").exists()
    assert w.check() is None  # the lease starts afresh from the clearing


def test_a_restarted_agent_keeps_its_fence(tmp_path: Path) -> None:
    w, clock, _destroy = watchdog(tmp_path)
    clock.now += 100
    w.check()
    again, _clock, destroy = watchdog(tmp_path)
    assert again.fenced_at == T0 and again.start_refusal() is not None
    again.check()
    assert destroy.calls == 1  # still fenced: a domain running now is destroyed too
    assert again.clear(T0)


def test_an_unreadable_fence_file_is_a_fence(tmp_path: Path) -> None:
    (tmp_path / "fence.json").write_text("{not json")
    w, _clock, _destroy = watchdog(tmp_path)
    assert w.fenced_at == T0 and w.start_refusal() is not None


def fenced_reconciler(tmp_path: Path) -> tuple[Reconciler, FakeHypervisor, Watchdog, Clock]:
    hv = FakeHypervisor()
    clock = Clock()
    holder: list[Reconciler] = []
    w = Watchdog(FENCE_AFTER, lambda: holder[0].destroy_own_vms(), clock=clock,
                 wall=lambda: T0)
    rec = Reconciler(hv, FakeStorage(tmp_path / "disks"), _image_source,
                     tmp_path / "instances", owner="node-1", stop_grace_s=1,
                     start_refusal=w.start_refusal)
    holder.append(rec)
    return rec, hv, w, clock


def test_the_fence_destroys_own_domains_only_and_keeps_them_defined(tmp_path: Path) -> None:
    rec, hv, w, clock = fenced_reconciler(tmp_path)
    hv.vms["aaaa-1"] = VmObservation("aaaa-1", "vauban-a", True, 1, None, MINE)
    hv.vms["bbbb-2"] = VmObservation("bbbb-2", "vauban-b", False, 1, None, MINE)
    hv.vms["cccc-3"] = VmObservation("cccc-3", "other", True, 1, None, {"vauban.node": "n2"})
    clock.now += 100
    assert w.check() == T0
    assert hv.calls == ["force-off:aaaa"]
    assert set(hv.vms) == {"aaaa-1", "bbbb-2", "cccc-3"} and hv.vms["cccc-3"].running


def test_a_fenced_node_starts_nothing_until_cleared(tmp_path: Path) -> None:
    rec, hv, w, clock = fenced_reconciler(tmp_path)
    hv.vms["aaaa-1"] = VmObservation("aaaa-1", "vauban-a", False, 1, None, MINE)
    clock.now += 100
    w.check()
    rec.apply(DesiredState(node_id="n", generation=1, vms=[vm("aaaa-1", seq=2),
                                                           vm("bbbb-2")]))
    assert rec.wait_idle(10)
    assert hv.calls == []  # neither started nor created
    views = {o.id: o for o in rec.observe()}
    assert views["aaaa-1"].state is ObservedVmState.STOPPED
    assert "node self-fenced at" in (views["aaaa-1"].error or "")
    assert rec.applied_generation == -1
    assert w.clear(T0)
    rec.apply(DesiredState(node_id="n", generation=2, vms=[vm("aaaa-1", seq=2),
                                                           vm("bbbb-2")]))
    assert rec.wait_idle(10)
    assert sorted(hv.calls) == ["define:bbbb", "start:aaaa", "start:bbbb"]


def test_a_start_that_ends_after_the_fence_is_undone(tmp_path: Path) -> None:
    """The start was allowed, the fence came while it ran: the new domain is forced off
    (kept defined, its disk kept) rather than left running beside the fence."""
    rec, hv, w, clock = fenced_reconciler(tmp_path)
    hv.vms["aaaa-1"] = VmObservation("aaaa-1", "vauban-a", False, 1, None, MINE)
    real_start = hv.start

    def start_then_fence(vm_id: str) -> None:
        real_start(vm_id)
        clock.now += 100
        w.check()

    hv.start = start_then_fence  # type: ignore[method-assign]
    rec.apply(DesiredState(node_id="n", generation=1, vms=[vm("aaaa-1", seq=2)]))
    assert rec.wait_idle(10)
    assert not hv.vms["aaaa-1"].running and "undefine:aaaa" not in hv.calls
    assert hv.calls.count("force-off:aaaa") >= 1
    assert hv.vms["aaaa-1"].power_seq == 2  # like the VMs the fence destroyed: not restarted
    assert w.clear(T0)
    rec.apply(DesiredState(node_id="n", generation=2, vms=[vm("aaaa-1", seq=2)]))
    assert rec.wait_idle(10)
    assert not hv.vms["aaaa-1"].running  # until a new power action


class AnsweringClient:
    """A controller that answers one long-poll with `answer`, then the agent stops."""

    report_interval_s = None
    poll_wait_s = None

    def __init__(self, answer: DesiredState, stop: Any) -> None:
        self.answer = answer
        self.stop = stop

    def image_chunks(self, image_id: str) -> Any:
        raise AssertionError("no image is fetched")

    def desired(self, after: int, wait: float) -> DesiredState:
        self.stop()
        return self.answer


def rbd_agent(tmp_path: Path, driver: str = "rbd") -> tuple[Any, FakeHypervisor]:
    from agent.config import AgentConfig, NodeIdentity
    from agent.daemon import Agent
    from agent.drivers.storage.rbd.cephx import new_key
    from agent.drivers.storage.rbd.driver import RbdDriver
    from agent.protocol import RbdSettings, StorageSettings
    from hardware.kvmprobe import KvmProbe

    rbd = RbdSettings(mon_host="127.0.0.1:1", user="vauban", key=new_key(), pool="vauban",
                      volume_pools=["vauban"], secret_usage="s", heartbeat_interval_s=1.0,
                      fence_after_s=5.0)
    storage = RbdDriver("vauban", "vauban", rbd.key, rbd.mon_host, "s")  # connects lazily
    hv = FakeHypervisor()
    holder: list[Any] = []
    client = AnsweringClient(DesiredState(node_id="n-1", generation=1, vms=[]),
                             lambda: holder[0].stopping.set())
    agent = Agent(AgentConfig(data_dir=tmp_path), NodeIdentity("n-1", "n1", "https://127.0.0.1:1"),
                  client, hv, storage, KvmProbe(False, False, "test"),  # type: ignore[arg-type]
                  driver, settings=StorageSettings(driver=driver, rbd=rbd))
    holder.append(agent)
    return agent, hv


def test_an_agent_on_ceph_fences_reports_it_and_takes_the_clearing_from_its_desired_state(
        tmp_path: Path) -> None:
    agent, hv = rbd_agent(tmp_path)
    hv.vms["aaaa-1"] = VmObservation("aaaa-1", "vauban-a", True, 1, None,
                                     {"vauban.node": "n-1"})
    assert agent.watchdog is not None and agent.heartbeat is not None
    assert agent.watchdog.fence_after_s == 5.0 and agent.heartbeat.interval_s == 1.0
    agent.watchdog.blocklisted("test")
    assert hv.calls == ["force-off:aaaa"]
    fenced = agent.watchdog.fenced_at
    assert agent.reconciler.start_refusal() is not None
    agent.client.answer = DesiredState(node_id="n-1", generation=1, vms=[],
                                       fence_cleared=fenced)
    agent._poll_loop()  # one answer, then stopped
    assert agent.watchdog.fenced_at is None and agent.reconciler.start_refusal() is None


def test_an_agent_on_local_storage_has_no_fence(tmp_path: Path) -> None:
    agent, _hv = rbd_agent(tmp_path, driver="localfs")
    assert agent.watchdog is None and agent.heartbeat is None
    assert agent.reconciler.start_refusal() is None


def test_the_ticker_fences_when_no_updater_returns() -> None:
    """A heartbeat write and a long-poll that both hang never call the watchdog: its own
    ticker judges it."""
    import threading

    destroyed = threading.Event()
    clock = Clock()

    def destroy() -> list[str]:
        destroyed.set()
        return []

    w = Watchdog(FENCE_AFTER, destroy, clock=clock, wall=lambda: T0)
    stopping = threading.Event()
    ticker = threading.Thread(target=w.watch, args=(stopping, 0.01))
    ticker.start()
    try:
        clock.now += FENCE_AFTER  # nothing recorded since
        assert destroyed.wait(30), "the ticker never judged"
        assert w.fenced_at == T0
    finally:
        stopping.set()
        ticker.join()


def test_the_status_names_the_nodes_ceph_client_addresses(tmp_path: Path) -> None:
    from agent.protocol import StorageStatus
    from agent.storage_sampler import StorageView

    agent, _hv = rbd_agent(tmp_path)
    sampled = StorageStatus(driver="rbd", health="HEALTH_OK")
    agent.storage_sampler.latest = lambda: StorageView(sampled, 0, [])
    assert agent.storage_status().client_addrs == []  # before the first heartbeat write
    agent.heartbeat._addrs = ["10.0.0.11:0/3120448913"]
    assert agent.storage_status().client_addrs == ["10.0.0.11:0/3120448913"]
    assert sampled.client_addrs == []  # the sample itself is left as it was
