"""Storage sampled on its own thread: a backend that does not answer never holds up a report.

Regression: with the Ceph cluster down, each status report waited for the timeout of
every storage call on the report thread, so the controller heard nothing for minutes
and took the node for down.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.client import ControllerUnavailable
from agent.config import AgentConfig, NodeIdentity
from agent.daemon import Agent
from agent.drivers.storage.base import PoolUsage, StorageHealth
from agent.protocol import NodeStatus, ObservedVolume
from agent.storage_sampler import StorageSampler
from hardware.kvmprobe import KvmProbe
from tests.unit.agent.test_reconcile import FakeHypervisor, FakeStorage

FREE = 10**12


class SilentStorage(FakeStorage):
    """A backend whose health() answers only when let through, like a Ceph cluster that
    is down (where each call waits for its operation timeout)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.askers: list[str] = []  # the threads health() was asked on, in order
        self._permits, self._always = 0, False
        self._cond = threading.Condition()

    def health(self) -> StorageHealth:
        with self._cond:
            self.askers.append(threading.current_thread().name)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._permits > 0 or self._always)
            if not self._always:
                self._permits -= 1
        return StorageHealth("HEALTH_OK", "", (PoolUsage("vauban", 1, FREE),))

    def let_through(self, calls: int) -> None:
        with self._cond:
            self._permits += calls
            self._cond.notify_all()

    def answer_always(self) -> None:
        with self._cond:
            self._always = True
            self._cond.notify_all()

    def wait_asked(self, calls: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: len(self.askers) >= calls)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingClient:
    """A controller that takes every report; `wanted` tells when enough have come."""

    def __init__(self, stopping: threading.Event) -> None:
        self.stopping = stopping
        self.reports: list[NodeStatus] = []
        self.heard = threading.Condition()
        self.report_interval_s: float | None = None  # no interval named: the agent's own
        self.poll_wait_s: float | None = None

    def image_chunks(self, image_id: str) -> Any:
        raise AssertionError("no image is fetched by these tests")

    def desired(self, after: int, wait: float) -> Any:
        self.stopping.wait()  # no desired state until the agent stops
        raise ControllerUnavailable("stopping")

    def console_requests(self, wait: float) -> Any:
        self.stopping.wait()  # no console asked for until the agent stops
        raise ControllerUnavailable("stopping")

    def report(self, status: NodeStatus) -> None:
        with self.heard:
            self.reports.append(status)
            self.heard.notify_all()

    def wait_for(self, check: Any) -> list[NodeStatus]:
        with self.heard:
            self.heard.wait_for(lambda: check(self.reports))
            return list(self.reports)


def make_agent(tmp_path: Path, heartbeat_s: float) -> tuple[Agent, SilentStorage,
                                                            RecordingClient]:
    stopping = threading.Event()
    client = RecordingClient(stopping)
    storage = SilentStorage(tmp_path / "disks")
    identity = NodeIdentity(node_id="n-1", name="n1", controller_url="https://127.0.0.1:1")
    agent = Agent(AgentConfig(data_dir=tmp_path, heartbeat_s=heartbeat_s), identity,
                  client, FakeHypervisor(), storage,  # type: ignore[arg-type]
                  kvm=KvmProbe(False, False, "test"), storage_driver="rbd", stopping=stopping)
    return agent, storage, client


def test_status_reports_keep_coming_while_the_storage_backend_does_not_answer(
        tmp_path: Path) -> None:
    agent, storage, client = make_agent(tmp_path, heartbeat_s=0.01)
    running = threading.Thread(target=agent.run, name="agent")
    running.start()
    try:
        storage.wait_asked(1)
        # before the fix the first report waited on health() and none ever came
        silent = client.wait_for(lambda reports: len(reports) >= 3)
        assert "report" not in storage.askers
        for s in silent:
            assert s.volumes is None and s.inventory.storage_free_bytes == 0  # unknown
            assert s.storage is None or s.storage.health == "UNREACHABLE"
        storage.answer_always()
        [answered, *_] = [s for s in client.wait_for(
            lambda reports: any(r.storage and r.storage.health == "HEALTH_OK" for r in reports))
            if s.storage and s.storage.health == "HEALTH_OK"]
        assert answered.volumes == [] and answered.inventory.storage_free_bytes == FREE
    finally:
        storage.answer_always()
        agent.stop()
        running.join()
    assert "storage-sampler" not in [t.name for t in threading.enumerate()]


def test_a_late_sample_is_reported_unreachable_with_its_age_and_the_next_answer_as_it_is(
        tmp_path: Path) -> None:
    agent, storage, _client = make_agent(tmp_path, heartbeat_s=5.0)
    clock = Clock()
    agent.storage_sampler.clock = clock
    agent.storage_sampler.start()
    try:
        storage.wait_asked(1)
        first = agent.status()  # returns while health() hangs
        assert first.storage is None and first.volumes is None  # not known yet
        assert first.inventory.storage_free_bytes == 0

        clock.now += 16  # over 3 intervals without an answer
        late = agent.status()
        assert late.storage is not None and late.storage.health == "UNREACHABLE"
        assert late.storage.detail == ("no answer from the storage backend for over 15 s "
                                       "(none since the agent started)")
        assert late.storage.pools == [] and late.volumes is None
        assert late.inventory.storage_free_bytes == 0

        storage.let_through(1)
        agent._report_now.wait()  # the answer asks for a report at once
        answered = agent.status()
        assert answered.storage is not None and answered.storage.health == "HEALTH_OK"
        assert [p.pool for p in answered.storage.pools] == ["vauban"]
        assert answered.volumes == [] and answered.inventory.storage_free_bytes == FREE

        clock.now += 100  # the next round hangs again
        again = agent.storage_status()
        assert again is not None and again.health == "UNREACHABLE"
        assert re.fullmatch(r"no answer from the storage backend for over 60 s \(last answer "
                            r"at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", again.detail), again.detail
    finally:
        storage.answer_always()
        agent.stop()
        agent.storage_sampler.join()
    assert set(storage.askers) == {"storage-sampler"}


class AnsweringStorage(FakeStorage):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.status = "HEALTH_OK"

    def health(self) -> StorageHealth:
        return StorageHealth(self.status, "", ())


def volume(used_bytes: int = 0, attached_to: str | None = None) -> ObservedVolume:
    return ObservedVolume(id="v-1", size_bytes=10, used_bytes=used_bytes, snapshots=[],
                          rollback_seq=0, attached_to=attached_to)


@pytest.mark.parametrize(("change", "reported"), [
    ("attach", True), ("used bytes", False), ("health", False), ("nothing", False)])
def test_a_sample_asks_for_a_report_when_its_volumes_say_something_new(
        tmp_path: Path, change: str, reported: bool) -> None:
    storage, volumes, changes = AnsweringStorage(tmp_path), [volume()], []
    sampler = StorageSampler(storage, "rbd", lambda: list(volumes), 5.0,
                             on_change=lambda: changes.append(1), clock=Clock())
    sampler.sample_once()
    assert changes == [1]  # the first answer
    if change == "attach":
        volumes[0] = volume(attached_to="vm-1")
    elif change == "used bytes":
        volumes[0] = volume(used_bytes=5)
    elif change == "health":
        storage.status = "HEALTH_WARN"
    sampler.sample_once()
    assert len(changes) == (2 if reported else 1)
    assert sampler.latest().volumes == volumes


def test_an_answer_after_a_late_spell_asks_for_a_report(tmp_path: Path) -> None:
    clock, changes = Clock(), []
    sampler = StorageSampler(AnsweringStorage(tmp_path), "rbd", list, 5.0,
                             on_change=lambda: changes.append(1), clock=clock)
    sampler.sample_once()
    clock.now += 16
    sampler.sample_once()  # says what the last one said, but ends a spell of no answer
    assert changes == [1, 1]
