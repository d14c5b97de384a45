"""A pool VM's rfb console through xapi's CONNECT tunnel, against the XAPI simulator over
real HTTPS on loopback: the RFB banner arrives, bytes go both ways, and a console on
another member is reached there under that member's own pin."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from agent.drivers.hypervisor.base import HypervisorError
from agent.drivers.xapi.console import TlsConsole, open_console
from agent.drivers.xapi.errors import CertificateMismatch
from agent.drivers.xapi.link import PoolLink
from agent.drivers.xapi.pool import PoolClient
from agent.drivers.xapi.transport import pinned_connection, read_head, session_cookie
from agent.protocol import XapiSettings
from tests.xapi_sim.process import SimProcess

pytestmark = pytest.mark.integration

BANNER = b"RFB 003.008\n"


def _pins(pool: SimProcess) -> dict[str, str]:
    return {m.address: m.fingerprint for m in pool.members}


@pytest.fixture
def client(sim_pool: SimProcess) -> Iterator[PoolClient]:
    c = PoolClient(sim_pool.url(), "root", "secret", _pins(sim_pool), label="sim")
    yield c
    c.close()


def _running_vm(pool: SimProcess, member: int, console: bool = True) -> str:
    vm = pool.store.add("VM", {"name_label": f"on-{member}", "power_state": "Running",
                               "resident_on": pool.members[member].host_uuid})
    if console:
        pool.add_console(vm)
    return vm


def _read(console: TlsConsole, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = console.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_the_rfb_banner_arrives_and_bytes_go_both_ways(
        sim_pool: SimProcess, client: PoolClient) -> None:
    vm = _running_vm(sim_pool, 0)
    console = open_console(client, vm)
    try:
        assert _read(console, len(BANNER)) == BANNER
        console.sendall(b"RFB 003.008\n")
        assert _read(console, len(BANNER)) == BANNER  # the server echoes
        ended: list[bytes | OSError] = []

        def wait() -> None:
            try:
                ended.append(console.recv(1))
            except OSError as e:
                ended.append(e)

        waiter = threading.Thread(target=wait)
        waiter.start()
        console.close()  # from another thread, as the agent's relay ends a console
        waiter.join()
        assert len(ended) == 1 and (ended[0] == b"" or isinstance(ended[0], OSError))
    finally:
        console.close()
    (transfer,) = sim_pool.transfers
    assert transfer["kind"] == "console" and transfer["member"] == sim_pool.members[0].address


def test_a_console_on_another_member_is_connected_there_under_its_pin(
        sim_pool: SimProcess, client: PoolClient) -> None:
    vm = _running_vm(sim_pool, 1)
    console = open_console(client, vm)
    try:
        assert _read(console, len(BANNER)) == BANNER
    finally:
        console.close()
    assert [t["member"] for t in sim_pool.transfers] == [sim_pool.members[1].address]
    # the master's pin does not open the member's console: each host has its own
    master, member = sim_pool.members
    wrong = PoolClient(sim_pool.url(), "root", "secret",
                       {master.address: master.fingerprint,
                        member.address: master.fingerprint}, label="sim")
    try:
        with pytest.raises(CertificateMismatch) as refused:
            open_console(wrong, vm)
        assert member.address in str(refused.value)
    finally:
        wrong.close()
    unpinned = PoolClient(sim_pool.url(), "root", "secret",
                          {master.address: master.fingerprint}, label="sim")
    try:
        with pytest.raises(HypervisorError) as refused_unpinned:
            open_console(unpinned, vm)
        assert f"on host {member.address}, whose certificate is not pinned" in str(
            refused_unpinned.value)
    finally:
        unpinned.close()
    assert len(sim_pool.transfers) == 1  # neither reached the tunnel


def test_a_halted_vm_or_one_without_console_is_refused_in_words(
        sim_pool: SimProcess, client: PoolClient) -> None:
    halted = sim_pool.store.add("VM", {"name_label": "halted"})
    with pytest.raises(HypervisorError) as refused:
        open_console(client, halted)
    assert "is Halted: a console needs it Running" in str(refused.value)
    bare = _running_vm(sim_pool, 0, console=False)
    with pytest.raises(HypervisorError) as none:
        open_console(client, bare)
    assert "has no graphical (rfb) console" in str(none.value)
    with pytest.raises(HypervisorError) as unknown:
        open_console(client, "00000000-0000-0000-0000-000000000000")
    assert "no VM 00000000-0000-0000-0000-000000000000" in str(unknown.value)


def _connect_status(pool: SimProcess, member: int, target: str, cookie: str) -> int:
    host = pool.members[member]
    connection = pinned_connection(host.address, pool.port, host.fingerprint, 30)
    try:
        connection.sock.sendall(f"CONNECT {target} HTTP/1.0\r\nCookie: {cookie}\r\n\r\n"
                                .encode())
        return read_head(connection.sock)[0]
    finally:
        connection.close()


def test_the_tunnel_wants_a_session_and_the_vm_s_own_host(
        sim_pool: SimProcess, client: PoolClient) -> None:
    vm = _running_vm(sim_pool, 1)
    cookie = session_cookie(client.session_id())
    assert _connect_status(sim_pool, 1, f"/console?uuid={vm}", "session_id=OpaqueRef:x") == 401
    assert _connect_status(sim_pool, 0, f"/console?uuid={vm}", cookie) == 404  # not here
    assert _connect_status(sim_pool, 1, "/console?uuid=nothing", cookie) == 404
    # a VM's uuid names its rfb console, as xapi resolves it
    assert _connect_status(sim_pool, 1, f"/console?uuid={vm}", cookie) == 200


def test_a_member_re_pinned_in_the_region_is_reached_under_its_new_pin(
        sim_pool: SimProcess) -> None:
    """A member's planned certificate change, re-pinned by an operator: its consoles (and
    imports, through the same connection) open once the agent asked for the new pins;
    until the region holds the new pin the old one is refused."""
    vm = _running_vm(sim_pool, 1)
    member = sim_pool.members[1]
    held = _pins(sim_pool)  # the controller's copy of the pins
    asked: list[dict[str, str]] = []

    def settings() -> XapiSettings:
        asked.append(dict(held))
        return XapiSettings(url=sim_pool.url().rstrip("/"), username="root",
                            password="secret", pool_uuid=next(iter(sim_pool.store.live("pool"))),
                            pins=dict(held))

    link = PoolLink(settings(), "sim", refresh=settings)
    try:
        client = link.new_client()
        new = member.rekey()
        with pytest.raises(CertificateMismatch):  # not re-pinned yet: asked, still refused
            open_console(client, vm)
        held[member.address] = new
        console = open_console(client, vm)
        try:
            assert _read(console, len(BANNER)) == BANNER
        finally:
            console.close()
        assert len(asked) == 3 and client.pins[member.address] == new
    finally:
        link.stop()
