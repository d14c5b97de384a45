"""LibvirtDriver's freeze and thaw policy over a fake domain wrapper: a freeze that failed or
froze nothing is thawed at once and counts as not frozen; a failed thaw says the guest may
still be frozen. (The real guest agent: tests/e2e/test_debian_guest.py.)"""

from __future__ import annotations

import pytest

from agent.drivers.hypervisor.base import HypervisorError
from agent.drivers.hypervisor.libvirt import LibvirtDriver
from agent.drivers.hypervisor.libvirt.config import GUEST_AGENT_CHANNEL


def domain_xml(state: str) -> str:
    return (f"<domain><devices><channel type='unix'><target type='virtio' "
            f"name='{GUEST_AGENT_CHANNEL}' state='{state}'/></channel></devices></domain>")


class FakeGuest:
    """What the driver asks of a Guest; `freeze` is what fs_freeze does (a count or an
    error), every call is logged."""

    uuid = "vm-1"

    def __init__(self, freeze: int | HypervisorError, channel: str = "connected",
                 thaw: HypervisorError | None = None) -> None:
        self.freeze, self.channel, self.thaw = freeze, channel, thaw
        self.calls: list[str] = []

    def is_running(self) -> bool:
        return True

    def xml(self) -> str:
        return domain_xml(self.channel)

    def fs_freeze(self) -> int:
        self.calls.append("freeze")
        if isinstance(self.freeze, HypervisorError):
            raise self.freeze
        return self.freeze

    def fs_thaw(self) -> int:
        self.calls.append("thaw")
        if self.thaw is not None:
            raise self.thaw
        return 1


def driver_with(guest: FakeGuest, monkeypatch: pytest.MonkeyPatch) -> LibvirtDriver:
    driver = LibvirtDriver("test:///default", accelerated=False)
    monkeypatch.setattr(driver, "_require", lambda vm_id: guest)
    return driver


def test_a_guest_agent_that_froze_something_is_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    guest = FakeGuest(2)
    driver = driver_with(guest, monkeypatch)
    assert driver.freeze_filesystems("vm-1") is True
    driver.thaw_filesystems("vm-1")
    assert guest.calls == ["freeze", "thaw"]


@pytest.mark.parametrize("freeze", [
    HypervisorError("Guest agent is not responding: timed out"), 0])
def test_a_failed_or_empty_freeze_is_thawed_at_once_and_not_frozen(
        freeze: int | HypervisorError, monkeypatch: pytest.MonkeyPatch) -> None:
    guest = FakeGuest(freeze)
    assert driver_with(guest, monkeypatch).freeze_filesystems("vm-1") is False
    assert guest.calls == ["freeze", "thaw"]  # it may still freeze after the timeout


def test_a_guest_whose_agent_is_not_connected_is_not_asked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    guest = FakeGuest(2, channel="disconnected")
    assert driver_with(guest, monkeypatch).freeze_filesystems("vm-1") is False
    assert guest.calls == []


def test_a_failed_thaw_says_the_guest_may_still_be_frozen(
        monkeypatch: pytest.MonkeyPatch) -> None:
    guest = FakeGuest(2, thaw=HypervisorError("Guest agent is not responding"))
    driver = driver_with(guest, monkeypatch)
    assert driver.freeze_filesystems("vm-1") is True
    with pytest.raises(HypervisorError, match="may still be frozen") as e:
        driver.thaw_filesystems("vm-1")
    assert e.value.retryable
