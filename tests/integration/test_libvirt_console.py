"""LibvirtDriver.open_console against the real libvirtd: QEMU's VNC server and the live
serial console of a running domain (its log file kept)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.drivers.hypervisor.base import HypervisorError
from agent.drivers.hypervisor.libvirt import LibvirtDriver
from tests.integration.libvirt_fixtures import URI, Domains
from tests.integration.test_libvirt_driver import make_spec

pytestmark = pytest.mark.integration


@pytest.fixture
def driver(libvirtd: list[int]) -> Iterator[LibvirtDriver]:
    drv = LibvirtDriver(URI, accelerated=False)
    yield drv
    drv.host.close()


def test_vnc_answers_the_rfb_version(driver: LibvirtDriver, domains: Domains,
                                     workdir: Path) -> None:
    spec = make_spec(domains, workdir)
    driver.define(spec)
    driver.start(spec.id)
    console = driver.open_console(spec.id, "vnc")
    try:
        greeting = b""
        while not greeting.endswith(b"\n"):
            chunk = console.recv(12 - len(greeting))
            assert chunk, "the VNC server closed before its version"
            greeting += chunk
        assert greeting.startswith(b"RFB 003.")
    finally:
        console.close()


def test_serial_opens_live_and_a_new_session_takes_over(driver: LibvirtDriver,
                                                        domains: Domains,
                                                        workdir: Path) -> None:
    spec = make_spec(domains, workdir)
    driver.define(spec)
    driver.start(spec.id)
    first = driver.open_console(spec.id, "serial")
    ended = threading.Event()
    got: list[bytes | Exception] = []

    def read_first() -> None:
        try:
            while True:
                data = first.recv(4096)
                if not data:
                    break
        except OSError as e:
            got.append(e)
        ended.set()

    reader = threading.Thread(target=read_first, daemon=True)
    reader.start()
    first.sendall(b"\r\n")  # typing into a guest that reads nothing is no error
    second = driver.open_console(spec.id, "serial")  # takes over: the first one ends
    try:
        reader.join()
        assert ended.is_set()
        second.sendall(b"\r\n")
    finally:
        second.close()
        first.close()
    assert spec.console_log.exists()  # virtlogd writes the log all along


def test_a_stopped_vm_has_no_console(driver: LibvirtDriver, domains: Domains,
                                     workdir: Path) -> None:
    spec = make_spec(domains, workdir)
    driver.define(spec)
    with pytest.raises(HypervisorError, match="not running on this node"):
        driver.open_console(spec.id, "serial")
