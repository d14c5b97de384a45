"""XAPI task results and failures (agent/drivers/xapi/tasks.py), without a pool."""

from __future__ import annotations

from typing import Any

import pytest

from agent.drivers.xapi.errors import XapiError
from agent.drivers.xapi.events import PoolCache
from agent.drivers.xapi.tasks import (
    PoolOps,
    Task,
    TaskLost,
    TaskPending,
    decode_result,
    task_outcome,
)
from tests.xapi_sim.tasks import result_value


@pytest.mark.parametrize("value", ["OpaqueRef:8f1c", ["OpaqueRef:a", "OpaqueRef:b"],
                                   {"size": "5497558138880", "ok": True}])
def test_a_result_is_one_xml_rpc_value(value: Any) -> None:
    assert decode_result(result_value(value)) == value


def test_an_untyped_value_is_a_string_and_void_is_none() -> None:
    assert decode_result("<value>OpaqueRef:1</value>") == "OpaqueRef:1"
    assert decode_result("") is None
    assert decode_result(None) is None


def test_a_result_that_is_no_xml_rpc_value_is_an_error() -> None:
    with pytest.raises(XapiError) as e:
        decode_result("<value><struct><member>")
    assert "not an XML-RPC value" in str(e.value)


def _task(status: str, **fields: Any) -> dict[str, Any]:
    return {"uuid": "t1", "status": status, "result": "", "error_info": [], **fields}


def test_pending_has_not_ended_and_success_gives_the_value() -> None:
    assert task_outcome(_task("pending"), "p") == (False, None)
    assert task_outcome(_task("success", result="<value>OpaqueRef:9</value>"), "p") == (
        True, "OpaqueRef:9")


def test_a_failed_task_raises_its_error_info_mapped() -> None:
    record = _task("failure", error_info=["SR_BACKEND_FAILURE_44", "", "no space", ""])
    with pytest.raises(XapiError) as e:
        task_outcome(record, "p")
    assert e.value.code == "SR_BACKEND_FAILURE_44" and e.value.retryable
    assert "SM 44" in str(e.value) and "no space" in str(e.value)


def test_no_memory_and_bad_power_state_are_worded() -> None:
    record = _task("failure", error_info=["HOST_NOT_ENOUGH_FREE_MEMORY",
                                          str(8 * 1024**3), str(2 * 1024**3)])
    with pytest.raises(XapiError) as e:
        task_outcome(record, "p")
    assert "8192 MiB" in str(e.value) and "2048 MiB" in str(e.value) and e.value.retryable
    record = _task("failure", error_info=["VM_BAD_POWER_STATE", "OpaqueRef:v", "halted",
                                          "running"])
    with pytest.raises(XapiError) as e:
        task_outcome(record, "p")
    assert str(e.value) == "pool p: the VM is running, needs halted"
    assert not e.value.retryable


def test_a_cancelled_task_without_error_info_is_task_cancelled() -> None:
    with pytest.raises(XapiError) as e:
        task_outcome(_task("cancelled"), "p")
    assert e.value.code == "TASK_CANCELLED"


class _NoClient:
    label = "p"


def _ops(cache: PoolCache) -> PoolOps:
    return PoolOps(_NoClient(), cache)  # type: ignore[arg-type]  # wait needs no client


def test_a_task_missing_from_a_later_full_read_is_lost() -> None:
    cache = PoolCache(["task"])
    cache.replace({"task": {}}, cache.begin_read())
    task = Task("VM.start", "OpaqueRef:t", "t1", baseline=0)
    with pytest.raises(TaskLost) as e:
        _ops(cache).wait(task, 60.0)
    assert e.value.retryable and "task lost: the pool's toolstack restarted" in str(e.value)


def test_a_task_not_read_yet_is_waited_for_not_lost() -> None:
    cache = PoolCache(["task"])
    cache.replace({"task": {}}, cache.begin_read())
    task = Task("VM.start", "OpaqueRef:t", "t1", baseline=cache.reads_begun)
    with pytest.raises(TaskPending):
        _ops(cache).wait(task, 0.0)


def test_a_task_deleted_by_an_event_is_lost() -> None:
    cache = PoolCache(["task"])
    cache.replace({"task": {"OpaqueRef:t": _task("pending")}}, cache.begin_read())
    cache.apply([{"class": "task", "operation": "del", "ref": "OpaqueRef:t"}])
    with pytest.raises(TaskLost):
        _ops(cache).wait(Task("VM.start", "OpaqueRef:t", "t1", cache.reads_begun), 60.0)
