"""The XAPI simulator's VM lifecycle and tasks, without HTTP (tests/xapi_sim): power
rules and their errors, task records, held, cancelled and vanished tasks."""

from __future__ import annotations

from typing import Any

import pytest

from tests.xapi_sim import api, tasks, wire
from tests.xapi_sim.events import event_from
from tests.xapi_sim.lifecycle import MemoryBackend
from tests.xapi_sim.model import GiB, Store

WAIT = 60.0  # an upper bound on waits for the simulator's threads, never reached


class Pool:
    """A store with one host, a pool, a template and a logged-in session."""

    def __init__(self) -> None:
        self.store = Store("root", "pw")
        self.store.backend = MemoryBackend()
        self.host = self.store.add("host", {"name_label": "h1"})
        self.store.add("pool", {"master": self.host})
        self.template = self.store.add("VM", {"name_label": "T", "is_a_template": True})
        self.session = self.store.login("root", "pw", "test")

    def call(self, method: str, *args: Any) -> Any:
        return api.call(self.store, method, [self.session, *args], None)

    def fault(self, method: str, *args: Any) -> list[str]:
        with pytest.raises(wire.XapiFault) as e:
            self.call(method, *args)
        return e.value.description

    def vm(self, name: str = "vm") -> str:
        ref = self.call("VM.clone", self.call("VM.get_by_uuid", self.template), name)
        self.call("VM.provision", ref)
        return str(ref)

    def task(self, ref: str) -> dict[str, Any]:
        """The task's record once it is no longer pending."""
        uuid = self.call("task.get_uuid", ref)
        with self.store.cond:
            assert self.store.cond.wait_for(
                lambda: self.store.objects[("task", uuid)].fields["status"] != "pending", WAIT)
        return dict(self.call("task.get_record", ref))


def test_power_rules_name_expected_and_actual_states_in_lower_case() -> None:
    pool = Pool()
    vm = pool.vm()
    assert pool.fault("VM.hard_shutdown", vm) == [
        "VM_BAD_POWER_STATE", vm, "running, paused, suspended", "halted"]
    pool.call("VM.start", vm, False, False)
    assert pool.fault("VM.start", vm, False, False) == [
        "VM_BAD_POWER_STATE", vm, "halted", "running"]
    assert pool.fault("VM.destroy", vm) == ["VM_BAD_POWER_STATE", vm, "halted, suspended",
                                            "running"]
    uuid = pool.call("VM.get_uuid", vm)
    assert pool.store.objects[("VM", uuid)].fields["resident_on"] == pool.host
    pool.call("VM.hard_shutdown", vm)
    pool.call("VM.destroy", vm)
    assert pool.fault("VM.get_record", vm) == ["HANDLE_INVALID", "VM", vm]


def test_start_without_room_on_any_host() -> None:
    pool = Pool()
    vm = pool.vm()
    size = 32 * GiB
    pool.call("VM.set_memory_limits", vm, size, size, size, size)
    assert pool.fault("VM.start", vm, False, False) == [
        "HOST_NOT_ENOUGH_FREE_MEMORY", str(size), str(pool.store.faults.host_memory)]
    assert pool.fault("VM.start", pool.call("VM.get_by_uuid", pool.template), False, False)[0] \
        == "VM_IS_TEMPLATE"


def test_an_async_call_answers_a_task_that_ends_with_an_xml_rpc_value() -> None:
    pool = Pool()
    template = pool.call("VM.get_by_uuid", pool.template)
    ref = pool.call("Async.VM.clone", template, "new")
    record = pool.task(ref)
    assert record["status"] == "success" and record["progress"] == 1.0
    assert record["error_info"] == [] and record["resident_on"] != "OpaqueRef:NULL"
    assert record["result"].startswith("<value>OpaqueRef:")
    new = record["result"].removeprefix("<value>").removesuffix("</value>")
    assert pool.call("VM.get_record", new)["name_label"] == "new"
    assert record["finished"].value >= record["created"].value
    counts = event_from(pool.store, pool.session, ["task"], "", 0.0)["valid_ref_counts"]
    assert counts == {"task": 1}
    pool.call("task.destroy", ref)
    assert pool.store.live("task") == []


def test_a_failing_task_carries_the_error_asked_for_once() -> None:
    pool = Pool()
    vm = pool.vm()
    pool.store.faults.fail_next["VM.start"] = ["SR_BACKEND_FAILURE_44", "", "full", "err"]
    record = pool.task(pool.call("Async.VM.start", vm, False, False))
    assert record["status"] == "failure"
    assert record["error_info"] == ["SR_BACKEND_FAILURE_44", "", "full", "err"]
    assert pool.task(pool.call("Async.VM.start", vm, False, False))["status"] == "success"


def test_a_held_task_can_be_cancelled_and_does_nothing() -> None:
    pool = Pool()
    vm = pool.vm()
    tasks.hold(pool.store, "VM.start")
    ref = pool.call("Async.VM.start", vm, False, False)
    assert tasks.wait_tasks(pool.store, "VM.start", 1, WAIT)
    pool.call("task.cancel", ref)
    record = pool.task(ref)
    assert record["status"] == "cancelled" and record["error_info"] == ["TASK_CANCELLED", ref]
    assert pool.call("VM.get_record", vm)["power_state"] == "Halted"


def test_a_vanished_task_drops_its_work() -> None:
    pool = Pool()
    vm = pool.vm()
    tasks.hold(pool.store, "VM.start")
    pool.call("Async.VM.start", vm, False, False)
    (task,) = pool.store.live("task")
    pool.store.vanish("task", task.uuid)  # as a toolstack restart
    tasks.release(pool.store, "VM.start")
    # the worker wakes, finds its task gone and stops: a later call is not refused
    pool.call("VM.start", vm, False, False)
    assert pool.call("VM.get_record", vm)["power_state"] == "Running"


def test_hard_shutdown_cancels_a_clean_shutdown_the_guest_ignores() -> None:
    pool = Pool()
    vm = pool.vm()
    pool.call("VM.start", vm, False, False)
    pool.store.faults.guest_ignores_shutdown = True
    clean = pool.call("Async.VM.clean_shutdown", vm)
    assert tasks.wait_tasks(pool.store, "VM.clean_shutdown", 1, WAIT)
    pool.call("VM.hard_shutdown", vm)
    assert pool.task(clean)["error_info"] == ["TASK_CANCELLED", clean]
    assert pool.call("VM.get_record", vm)["power_state"] == "Halted"
