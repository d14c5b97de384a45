"""End to end: a real VM's consoles through the controller, the agent and QEMU.

The graphical console answers RFB through the controller's websocket (a minimal RFB client
here gets a framebuffer that is not all one colour); the serial console is read and typed
with `vauban vm console`; tickets are refused when spent, expired or another user's; the
console's opening and end are in the audit trail.
"""

from __future__ import annotations

import os
import ssl
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import libvirt
import pytest
import requests
import simple_websocket
from sqlalchemy import create_engine, update

from agent.protocol import CONSOLE_FAILED
from controller.cli.console import end
from controller.db.models import ConsoleSession
from tests.e2e.region import BIN, E2ERegion, console_has, wait_for

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 180  # TCG boots on a loaded 2-core machine can be slow
ANSWER_TIMEOUT = 60  # for the guest's shell to answer a typed command


@pytest.fixture(scope="module")
def region(libvirtd: str, testguest_image: Path) -> Iterator[E2ERegion]:
    with E2ERegion.running(testguest_image) as r:
        yield r


@pytest.fixture(scope="module")
def vm(region: E2ERegion) -> dict[str, Any]:
    """A running test guest whose shell reads the serial console."""
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    region.cli("vm", "create", name, "--image", "testguest", "--cpus", "1", "--memory", "256",
               "--wait")
    made = region.vm(name)
    wait_for(lambda: console_has(str(made["console_log"]), "VAUBAN-TESTGUEST-READY"),
             BOOT_TIMEOUT, "the guest ready")
    return made


def api(region: E2ERegion, method: str, path: str, token: str | None = None,
        **kw: Any) -> requests.Response:
    return requests.request(method, f"{region.layout.url}/api/v1{path}",
                            headers={"Authorization": f"Bearer {token or region.token}"},
                            verify=str(region.layout.ca_file), timeout=60, **kw)


def ticket(region: E2ERegion, name: str, kind: str, token: str | None = None) -> Any:
    r = api(region, "POST", f"/instances/{name}/consoles", token, json={"kind": kind})
    assert r.status_code == 201, r.text
    return r.json()


def connect(region: E2ERegion, path: str, token: str | None = None) -> simple_websocket.Client:
    context = ssl.create_default_context(cafile=str(region.layout.ca_file))
    url = region.layout.url.replace("https://", "wss://") + path
    return simple_websocket.Client.connect(
        url, headers={"Authorization": f"Bearer {token or region.token}"}, ssl_context=context)


UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def refusal(region: E2ERegion, path: str, token: str | None = None) -> requests.Response:
    """The answer to a websocket request the controller refuses before upgrading (a plain
    HTTP client: it has nothing to leave open)."""
    r = requests.get(region.layout.url + path, verify=str(region.layout.ca_file), timeout=60,
                     headers={**UPGRADE, "Authorization": f"Bearer {token or region.token}"})
    assert r.status_code != 101, "the websocket was accepted"
    return r


class Stream:
    """Exact reads over a websocket's binary messages."""

    def __init__(self, ws: simple_websocket.Client) -> None:
        self.ws, self.buffer = ws, b""

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = self.ws.receive(timeout=ANSWER_TIMEOUT)
            assert data is not None, f"nothing from the VNC server within {ANSWER_TIMEOUT}s"
            self.buffer += data if isinstance(data, bytes) else data.encode()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


def framebuffer(ws: simple_websocket.Client) -> tuple[int, int, int, bytes]:
    """RFB 3.8 with security type None, then one full update in Raw encoding:
    (width, height, bytes per pixel, pixels)."""
    s = Stream(ws)
    version = s.read(12)
    assert version.startswith(b"RFB 003."), version
    ws.send(b"RFB 003.008\n")
    types = s.read(s.read(1)[0])
    assert 1 in types, f"security types {list(types)}: no None"
    ws.send(b"\x01")
    assert s.read(4) == b"\0\0\0\0"  # SecurityResult OK
    ws.send(b"\x01")  # ClientInit: shared
    width, height = struct.unpack(">HH", s.read(4))
    pixel_format = s.read(16)
    s.read(struct.unpack(">I", s.read(4))[0])  # the desktop's name
    bpp = pixel_format[0] // 8
    ws.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw only
    ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))  # a full update
    pixels = bytearray(width * height * bpp)
    message, _pad, rects = struct.unpack(">BBH", s.read(4))
    assert message == 0, f"server message {message}, not a framebuffer update"
    for _ in range(rects):
        x, y, w, h, encoding = struct.unpack(">HHHHi", s.read(12))
        assert encoding == 0, f"encoding {encoding}, not Raw"
        data = s.read(w * h * bpp)
        for row in range(h):
            start = ((y + row) * width + x) * bpp
            pixels[start:start + w * bpp] = data[row * w * bpp:(row + 1) * w * bpp]
    return width, height, bpp, bytes(pixels)


def test_the_graphical_console_speaks_rfb_and_shows_the_screen(region: E2ERegion,
                                                               vm: dict[str, Any]) -> None:
    issued = ticket(region, vm["name"], "vnc")
    ws = connect(region, issued["websocket"])
    try:
        width, height, bpp, pixels = framebuffer(ws)
    finally:
        end(ws)
    assert width > 0 and height > 0
    colours = {pixels[i:i + bpp] for i in range(0, len(pixels), bpp)}
    assert len(colours) > 1, "the framebuffer is all one colour"
    # spent: a second connection with the same ticket is refused before any upgrade
    spent = refusal(region, issued["websocket"])
    assert spent.status_code == 403 and "used already" in spent.json()["detail"]
    log = region.root / "log" / "controller.log"
    access_log = wait_for(lambda: "/api/v1/consoles/…" in log.read_text() and log.read_text(),
                          60, "the refusal in the access log")
    assert issued["ticket"] not in access_log


def test_the_serial_console_reads_the_guest_and_types_into_it(region: E2ERegion,
                                                              vm: dict[str, Any]) -> None:
    seen = bytearray()
    with subprocess.Popen([str(BIN / "vauban"), "vm", "console", vm["name"]],
                          env=region.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as console:
        assert console.stdin is not None and console.stdout is not None
        out = console.stdout

        def read() -> None:
            while chunk := os.read(out.fileno(), 4096):
                seen.extend(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            stdin = console.stdin

            def prompt() -> bool:
                """The shell's prompt is there (Enter pressed until it shows)."""
                if b"# " in seen:
                    return True
                if console.poll() is not None:
                    errors = console.stderr.read() if console.stderr else b""
                    raise AssertionError(f"vauban vm console ended: {errors!r}")
                stdin.write(b"\n")
                stdin.flush()
                return False

            wait_for(prompt, ANSWER_TIMEOUT, "the shell's prompt", interval=1.0)
            # the shell echoes what is typed; only the command's run prints 42 in the marker
            stdin.write(b"echo console-$((6*7))-typed\n")
            stdin.flush()
            wait_for(lambda: b"console-42-typed" in seen, ANSWER_TIMEOUT,
                     f"the command's result (so far: {bytes(seen)[-300:]!r})")
            assert b"echo console-$((6*7))-typed" in seen  # echoed as typed
        finally:
            console.stdin.close()
            rc = console.wait(timeout=60)
            reader.join()
        errors = console.stderr.read() if console.stderr else b""
    assert rc == 0, errors
    assert console_has(str(vm["console_log"]), "console-42-typed")  # the log keeps it all


def test_tickets_are_refused_expired_or_anothers(region: E2ERegion,
                                                 vm: dict[str, Any]) -> None:
    expired = ticket(region, vm["name"], "serial")
    engine = create_engine(f"sqlite:///{region.layout.root / 'controller' / 'controller.db'}")
    try:
        with engine.begin() as db:
            db.execute(update(ConsoleSession).where(ConsoleSession.id == expired["id"])
                       .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    finally:
        engine.dispose()
    late = refusal(region, expired["websocket"])
    assert late.status_code == 403 and "expired" in late.json()["detail"]

    made = region.cli("user", "create", f"u{uuid.uuid4().hex[:6]}").splitlines()
    name = made[0].split()[1]
    password = made[1].rsplit(" ", 1)[1]
    region.cli("role", "grant", name, "project-member", "--project", "default")
    login = requests.post(f"{region.layout.url}/api/v1/tokens",
                          json={"username": name, "password": password},
                          verify=str(region.layout.ca_file), timeout=60)
    assert login.status_code == 201, login.text
    theirs = login.json()["token"]
    admins = ticket(region, vm["name"], "serial")
    stolen = refusal(region, admins["websocket"], token=theirs)
    assert stolen.status_code == 403 and "unknown" in stolen.json()["detail"]
    # and the ticket is still good for its own user: refusing it spent nothing
    end(connect(region, admins["websocket"]))


def test_a_viewer_gets_no_ticket_and_consoles_are_audited(region: E2ERegion,
                                                          vm: dict[str, Any]) -> None:
    made = region.cli("user", "create", f"v{uuid.uuid4().hex[:6]}").splitlines()
    name, password = made[0].split()[1], made[1].rsplit(" ", 1)[1]
    region.cli("role", "grant", name, "project-viewer", "--project", "default")
    login = requests.post(f"{region.layout.url}/api/v1/tokens",
                          json={"username": name, "password": password},
                          verify=str(region.layout.ca_file), timeout=60)
    viewer = login.json()["token"]
    refused = api(region, "POST", f"/instances/{vm['name']}/consoles", viewer,
                  json={"kind": "vnc"})
    assert refused.status_code == 403, refused.text

    def entries(action: str) -> list[dict[str, Any]]:
        r = api(region, "GET", f"/audit-events?action={action}")
        assert r.status_code == 200, r.text
        return [e for e in r.json() if e["target"] == f"instance/{vm['id']}"]

    assert entries("console.ticket") and entries("console.open")
    closed = wait_for(lambda: entries("console.close"), 60, "a console's end in the trail")
    detail = closed[0]["detail"]
    assert {"duration_s", "bytes_to_guest", "bytes_from_guest", "reason"} <= set(detail)
    # each entry names the VM's project, like the actions of the project's other routes
    for action in ("console.ticket", "console.open", "console.close"):
        assert {e["project"] for e in entries(action)} == {vm["project"]}, action


def test_a_failure_on_the_node_reaches_the_user_in_words(region: E2ERegion,
                                                         vm: dict[str, Any]) -> None:
    """Last in this module: it powers the VM off behind the agent's back."""
    issued = ticket(region, vm["name"], "serial")  # while it still runs
    conn = libvirt.open("qemu:///system")
    try:
        conn.lookupByUUIDString(vm["id"]).destroy()
    finally:
        conn.close()
    ws = connect(region, issued["websocket"])
    try:
        with pytest.raises(simple_websocket.ConnectionClosed) as closed:
            ws.receive(timeout=ANSWER_TIMEOUT)  # nothing comes before the close
    finally:
        end(ws)
    assert closed.value.reason == CONSOLE_FAILED
    assert "is not running on this node" in (closed.value.message or "")


def test_the_serial_log_is_read_through_the_controller_once_the_vm_stopped(
        region: E2ERegion, vm: dict[str, Any]) -> None:
    """After the VM was powered off (the test before): its log still tells how it ran."""
    issued = ticket(region, vm["name"], "log")
    ws = connect(region, issued["websocket"])
    log = bytearray()
    try:
        with pytest.raises(simple_websocket.ConnectionClosed) as closed:
            while True:
                data = ws.receive(timeout=ANSWER_TIMEOUT)
                assert data is not None, "the log did not come within the wait"
                log.extend(data.encode() if isinstance(data, str) else data)
    finally:
        end(ws)
    assert closed.value.reason == 1000, closed.value.message
    assert b"VAUBAN-TESTGUEST-READY" in log
    with open(vm["console_log"], "rb") as f:  # what the node holds, as it holds it
        assert bytes(log) == f.read()[-len(log):]
