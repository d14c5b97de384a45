"""Host: lazy connection, reconnect after a drop, libvirt errors as HypervisorError."""

from __future__ import annotations

from collections.abc import Callable

import libvirt
import pytest

from agent.drivers.hypervisor.base import HypervisorError
from agent.drivers.hypervisor.libvirt import host as host_mod
from agent.drivers.hypervisor.libvirt.host import Host, is_connection_error


def make_error(code: int, domain: int, message: str = "boom") -> libvirt.libvirtError:
    err = libvirt.libvirtError(message)
    err.err = (code, domain, message, libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return err


BROKEN_PIPE = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC)  # seen on libvirtd restart
REFUSED = (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_QEMU)


class FakeConn:
    def __init__(self, n: int) -> None:
        self.n = n
        self.alive = True
        self.closed = False

    def isAlive(self) -> int:  # noqa: N802 - libvirt's name
        return int(self.alive)

    def close(self) -> int:
        self.closed = True
        return 0


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[FakeConn]:
    conns: list[FakeConn] = []

    def fake_open(uri: str) -> FakeConn:
        conns.append(FakeConn(len(conns)))
        return conns[-1]

    monkeypatch.setattr(host_mod.libvirt, "open", fake_open)
    return conns


def failing_once(error: libvirt.libvirtError) -> Callable[[FakeConn], int]:
    calls: list[int] = []

    def fn(conn: FakeConn) -> int:
        calls.append(conn.n)
        if len(calls) == 1:
            raise error
        return conn.n

    return fn


def test_connection_is_opened_lazily_and_reused(opened: list[FakeConn]) -> None:
    host = Host("qemu:///system")
    assert opened == []
    assert host.connection() is host.connection()
    assert len(opened) == 1


def test_dead_connection_is_replaced(opened: list[FakeConn]) -> None:
    host = Host()
    first = host.connection()
    opened[0].alive = False

    assert host.connection() is not first
    assert opened[0].closed and len(opened) == 2


def test_idempotent_call_retries_once_on_a_new_connection(opened: list[FakeConn]) -> None:
    host = Host()

    assert host.call("list", failing_once(make_error(*BROKEN_PIPE)), idempotent=True) == 1
    assert opened[0].closed


def test_other_calls_fail_retryable_and_reconnect_next_time(opened: list[FakeConn]) -> None:
    host = Host()

    with pytest.raises(HypervisorError, match="start x: boom") as exc:
        host.call("start x", failing_once(make_error(*BROKEN_PIPE)))

    assert exc.value.retryable is True
    assert host.connection() is opened[1]


def test_refused_call_is_not_retryable_and_keeps_connection(opened: list[FakeConn]) -> None:
    host = Host()

    with pytest.raises(HypervisorError) as exc:
        host.call("list", failing_once(make_error(*REFUSED)), idempotent=True)

    assert exc.value.retryable is False
    assert len(opened) == 1 and not opened[0].closed


def test_cannot_connect_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(uri: str) -> None:
        raise make_error(libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, "no socket")

    monkeypatch.setattr(host_mod.libvirt, "open", refuse)

    with pytest.raises(HypervisorError, match="cannot connect to qemu:///system") as exc:
        Host().connection()
    assert exc.value.retryable is True


def test_classification() -> None:
    assert is_connection_error(make_error(*BROKEN_PIPE))
    assert is_connection_error(make_error(libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_FROM_NONE))
    assert not is_connection_error(make_error(*REFUSED))
