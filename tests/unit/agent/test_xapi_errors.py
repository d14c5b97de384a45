"""XAPI answers and failures as Vauban errors (agent/drivers/xapi/errors.py)."""

from __future__ import annotations

import pytest

from agent.drivers.xapi.errors import (
    CertificateMismatch,
    EventsLost,
    SessionInvalid,
    XapiError,
    from_failure,
    parse_result,
)


def test_success_gives_the_value() -> None:
    assert parse_result({"Status": "Success", "Value": ["OpaqueRef:a"]}, "p") == ["OpaqueRef:a"]


@pytest.mark.parametrize("answer", ["plain text", {"Value": 1}, None,
                                    {"Status": "Success"}, {"Status": "Failure"}])
def test_an_answer_that_is_not_xapi_is_a_retryable_error(answer: object) -> None:
    # XenAPI's own parser raises TypeError on a dict without Status: ours words it
    with pytest.raises(XapiError) as e:
        parse_result(answer, "p")
    assert e.value.retryable and "pool p" in str(e.value)


def test_failure_is_mapped_with_code_and_params() -> None:
    with pytest.raises(XapiError) as e:
        parse_result({"Status": "Failure",
                      "ErrorDescription": ["VM_BAD_POWER_STATE", "OpaqueRef:v",
                                           "halted", "running"]}, "lab")
    assert e.value.code == "VM_BAD_POWER_STATE"
    assert e.value.params == ["OpaqueRef:v", "halted", "running"]
    assert str(e.value) == "pool lab: the VM is running, needs halted"
    assert not e.value.retryable


@pytest.mark.parametrize(("description", "message", "retryable"), [
    (["SESSION_AUTHENTICATION_FAILED"], "pool p: credentials refused", False),
    (["HOST_NOT_ENOUGH_FREE_MEMORY", str(4096 * 2**20), str(1024 * 2**20)],
     "pool p: no host has 4096 MiB free (largest free: 1024 MiB)", True),
    (["SR_BACKEND_FAILURE_44", "", "There is insufficient space", "stderr"],
     "pool p: a storage repository failed (SM 44): There is insufficient space", True),
    (["SR_BACKEND_FAILURE", "1", "", "vhd-util failed"],
     "pool p: a storage repository failed (SM 1): vhd-util failed", True),
    (["OTHER_OPERATION_IN_PROGRESS", "VM", "OpaqueRef:v", "clean_shutdown"],
     "pool p: VM OpaqueRef:v is busy with clean_shutdown", True),
    (["HOST_IS_SLAVE", "10.0.0.2"],
     "pool p: this host is not the master; the master is 10.0.0.2", True),
    (["SOMETHING_NEW", "a", "b"], "pool p: XAPI failed with SOMETHING_NEW (a, b)", False),
    ([], "pool p: XAPI failed with INTERNAL_ERROR", False),
])
def test_known_failures_read_clearly(description: list[str], message: str,
                                     retryable: bool) -> None:
    error = from_failure(description, "p")
    assert str(error) == message
    assert error.retryable is retryable


def test_session_and_event_failures_have_their_own_types() -> None:
    assert isinstance(from_failure(["SESSION_INVALID", "OpaqueRef:s"], "p"), SessionInvalid)
    assert isinstance(from_failure(["EVENTS_LOST"], "p"), EventsLost)


def test_certificate_mismatch_names_host_and_both_fingerprints() -> None:
    error = CertificateMismatch("10.0.0.1:443", "AA:BB", "CC:DD")
    assert "10.0.0.1:443" in str(error) and "AA:BB" in str(error) and "CC:DD" in str(error)
    assert not error.retryable
