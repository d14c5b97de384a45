"""End to end on PostgreSQL with two worker processes: a console's two legs (the user's
websocket and the agent's dial-back) are served by whichever process takes each
connection, and still meet (the rendezvous through a unix socket in the data directory,
the agent's console long-poll woken across processes by NOTIFY)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.cli.console import end
from tests.conftest import _reset_postgres
from tests.e2e.region import E2ERegion
from tests.e2e.test_consoles import Stream, connect, ticket

pytestmark = pytest.mark.e2e

CONNECTIONS = 6  # each leg lands on either process: some consoles cross between them


@pytest.fixture(scope="module")
def region(libvirtd: str, testguest_image: Path, postgres_url: str) -> Iterator[E2ERegion]:
    _reset_postgres(postgres_url)
    env = {"VAUBAN_DATABASE_URL": postgres_url, "VAUBAN_WORKERS": "2"}
    with E2ERegion.running(testguest_image, env) as r:
        yield r


def test_every_console_reaches_the_vm_whichever_process_takes_each_leg(
        region: E2ERegion) -> None:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
               "--wait")
    region.vm(name)  # recorded for removal
    for _ in range(CONNECTIONS):  # QEMU's VNC server answers from the VM's start
        ws = connect(region, ticket(region, name, "vnc")["websocket"])
        try:
            assert Stream(ws).read(12).startswith(b"RFB 003.")
        finally:
            end(ws)
