"""The one retry policy and failure ledger, under an injected clock and random source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.drivers.network.base import NetworkError
from agent.drivers.storage.base import StorageError
from agent.errors import DriverError, is_retryable
from agent.retry import FailureLedger, RetryPolicy, controller_retry_delay


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delay_doubles_up_to_the_cap_and_jitter_only_shortens_it() -> None:
    policy = RetryPolicy(base_s=2.0, cap_s=30.0, give_up_after_s=600.0, jitter=0.5)
    assert [policy.delay(n, lambda: 0.0) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    assert policy.delay(1, lambda: 0.5) == 1.5
    assert policy.delay(6, lambda: 0.999999) == pytest.approx(15.0, abs=1e-4)


@pytest.mark.parametrize("interval, cap", [(None, 10.0), (5.0, 10.0), (200.0, 200.0)])
def test_a_large_region_spreads_its_agents_retries_over_its_report_interval(
        interval: float | None, cap: float) -> None:
    waits = [controller_retry_delay(n, interval, lambda: 0.0) for n in range(1, 12)]
    assert waits[0] == 0.5 and max(waits) == cap == waits[-1]
    assert controller_retry_delay(11, interval, lambda: 0.999999) == pytest.approx(cap / 2,
                                                                                   abs=1e-3)


def test_every_driver_family_error_is_a_driver_error_that_says_if_retry_helps() -> None:
    from agent.drivers.gpu.base import GpuError
    from agent.drivers.hypervisor.base import HypervisorError
    from agent.drivers.network.secgroups import FirewallError

    for family in (GpuError, HypervisorError, NetworkError, StorageError, FirewallError):
        assert issubclass(family, DriverError)
        assert is_retryable(family("x", retryable=True))
        assert not is_retryable(family("x"))
    assert not is_retryable(OSError("not a driver's word on it"))


def test_a_retryable_failure_waits_its_delay_then_gives_up() -> None:
    clock = Clock()
    ledger = FailureLedger(RetryPolicy(base_s=10, cap_s=40, give_up_after_s=100, jitter=0.5),
                           clock=clock, rand=lambda: 0.0)
    assert ledger.may_try("volume", "v1", "create", 1)
    e = ledger.failed("volume", "v1", "create", 1, StorageError("Ceph away", retryable=True))
    assert (e.attempts, e.retryable, e.final) == (1, True, False)
    assert not ledger.may_try("volume", "v1", "create", 1)
    clock.now += 10
    assert ledger.may_try("volume", "v1", "create", 1)
    e = ledger.failed("volume", "v1", "create", 1, StorageError("Ceph away", retryable=True))
    assert e.attempts == 2 and e.next_at == clock.now + 20
    clock.now += 95  # 105 s since the first failure of this request
    e = ledger.failed("volume", "v1", "create", 1, StorageError("Ceph away", retryable=True))
    assert e.final and e.attempts == 3
    clock.now += 1000
    assert not ledger.may_try("volume", "v1", "create", 1)  # final: not tried again
    assert ledger.may_try("volume", "v1", "create", 2)  # a new request is tried afresh
    e = ledger.failed("volume", "v1", "create", 2, StorageError("Ceph away", retryable=True))
    assert e.attempts == 1 and not e.final


def test_a_failure_that_is_not_retryable_is_final_at_once_and_success_forgets_it() -> None:
    clock = Clock()
    ledger = FailureLedger(clock=clock, rand=lambda: 0.0,
                           wall=lambda: datetime(2026, 1, 2, tzinfo=UTC))
    ledger.failed("network", "n1", "ensure", "spec", NetworkError("VNI 7 is taken"))
    [f] = ledger.report()
    assert (f.kind, f.object_id, f.action, f.message) == ("network", "n1", "ensure",
                                                          "VNI 7 is taken")
    assert f.final and not f.retryable and f.attempts == 1 and f.next_retry_at is None
    assert f.since == datetime(2026, 1, 2, tzinfo=UTC)
    clock.now += 10**6
    assert not ledger.may_try("network", "n1", "ensure", "spec")
    ledger.succeeded("network", "n1", "ensure")
    assert ledger.report() == [] and ledger.may_try("network", "n1", "ensure", "spec")


def test_an_error_of_no_driver_is_not_retryable_unless_told() -> None:
    ledger = FailureLedger(clock=Clock(), rand=lambda: 0.0)
    assert ledger.failed("vm", "a", "create", 1, ValueError("bad")).final
    assert not ledger.failed("vm", "b", "create", 1, "waits for x", retryable=True).final
    ledger.forget("vm", "a")
    assert [f.object_id for f in ledger.report()] == ["b"]


class Wall:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_failure_is_reported_the_same_until_it_changes() -> None:
    clock, wall = Clock(), Wall()
    ledger = FailureLedger(RetryPolicy(base_s=10, jitter=0.5), clock=clock,
                           rand=lambda: 0.0, wall=wall)
    ledger.failed("image", "i1", "import", "sha", StorageError("Ceph away", retryable=True))
    first = ledger.report()
    assert first[0].next_retry_at == datetime(2026, 12, 1, 6, 0, 10, tzinfo=UTC)
    # time passes on both clocks, and they drift apart a little: nothing failed anew
    clock.now += 3.0
    wall.now += timedelta(seconds=3.25)
    assert ledger.report() == first


def test_a_failure_keeps_the_number_of_the_request_that_failed() -> None:
    ledger = FailureLedger(clock=Clock(), rand=lambda: 0.0)
    ledger.failed("volume", "v1", "converge", "size 2", "Ceph away", retryable=True, seq=7)
    ledger.failed("volume", "v1", "converge", "size 2", "Ceph away", retryable=True, seq=8)
    assert ledger.get("volume", "v1", "converge").seq == 7  # type: ignore[union-attr]
    ledger.failed("volume", "v1", "converge", "size 3", "Ceph away", retryable=True, seq=9)
    assert ledger.get("volume", "v1", "converge").seq == 9  # type: ignore[union-attr]
