"""Boot the test guest under QEMU (TCG) with a NoCloud seed and power it off over ACPI.

Builds the image (or reuses it) under the repository's var/cache/testguest,
boots a copy-on-write overlay of it as a virtio disk with a seed from
images.seed as a second virtio disk, and talks QMP over a unix socket.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.protocol import CloudInitSeed
from images.seed import build_nocloud_seed
from images.testguest import build as testguest

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parents[2]
CACHE = REPO / "var" / "cache" / "testguest"
IMAGE = CACHE / "testguest.raw"
BOOT_TIMEOUT_S = 120.0  # TCG on a loaded 2-core machine; a boot normally takes a few seconds
POWEROFF_TIMEOUT_S = 60.0
HOST_TOOLS = ("qemu-system-x86_64", "qemu-img", "syslinux", "mcopy", "mkfs.fat", "depmod")


def _require_tools() -> None:
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    assert not missing, f"host tools missing (make test installs them): {', '.join(missing)}"


@pytest.fixture(scope="module")
def image() -> pathlib.Path:
    """The test guest image, built once (or reused when up to date)."""
    _require_tools()
    return testguest.build(out=IMAGE, cache=CACHE).image


class Qmp:
    """A minimal QMP client: newline-delimited JSON over a unix socket."""

    def __init__(self, path: pathlib.Path, deadline: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # polling for the socket QEMU is about to create
        self.sock.settimeout(30)
        self.reader = self.sock.makefile("rb")
        greeting = self._read()
        assert "QMP" in greeting, greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.reader.readline()
        if not line:
            raise ConnectionError("QMP socket closed")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, command: str) -> Any:
        """Run `command`; return its `return` value (events received meanwhile are skipped)."""
        self.sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        while True:
            msg = self._read()
            if "error" in msg:
                raise RuntimeError(f"QMP {command}: {msg['error']}")
            if "return" in msg:
                return msg["return"]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def seed(tmp_path: pathlib.Path) -> pathlib.Path:
    """A NoCloud seed with a hostname, an instance id, a user-data script and network-config."""
    path = tmp_path / "seed.iso"
    build_nocloud_seed(
        CloudInitSeed(
            instance_id="iid-5f3e2a",
            hostname="tg-boot-1",
            user_data="#!/bin/sh\necho \"user-data says $(hostname) $((6 * 7))\"\n",
        ),
        path,
        network_config="version: 2\nethernets: {}\n",
    )
    return path


@pytest.fixture
def qemu(
    image: pathlib.Path, seed: pathlib.Path, tmp_path: pathlib.Path
) -> Iterator[tuple[subprocess.Popen[bytes], pathlib.Path, pathlib.Path]]:
    """A running QEMU booting an overlay of the image; yields (process, serial log, QMP socket)."""
    overlay = tmp_path / "root.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image), str(overlay)],
        check=True,
    )
    serial = tmp_path / "serial.log"
    qmp = tmp_path / "qmp.sock"
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", "256",
        "-nodefaults", "-display", "none", "-no-user-config",
        "-serial", f"file:{serial}",
        "-qmp", f"unix:{qmp},server=on,wait=off",
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
    ]
    log = (tmp_path / "qemu.stderr").open("wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        yield proc, serial, qmp
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


def _serial_text(serial: pathlib.Path) -> str:
    try:
        return serial.read_text(errors="replace").replace("\r", "")
    except FileNotFoundError:
        return ""


def wait_for_serial(
    serial: pathlib.Path, proc: subprocess.Popen[bytes], pattern: str, timeout: float
) -> re.Match[str]:
    """Poll the serial log until `pattern` matches; fail with the log on timeout or QEMU exit."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern, re.MULTILINE)
    while True:
        text = _serial_text(serial)
        m = regex.search(text)
        if m:
            return m
        if proc.poll() is not None:
            pytest.fail(f"QEMU exited ({proc.returncode}) before {pattern!r}; serial:\n{text}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {pattern!r} within {timeout:.0f} s; serial:\n{text}")
        time.sleep(0.1)  # polling interval, not a stand-in for the condition


@pytest.mark.timeout(600)
def test_boots_reads_seed_and_powers_off_on_acpi(
    qemu: tuple[subprocess.Popen[bytes], pathlib.Path, pathlib.Path],
) -> None:
    proc, serial, qmp_path = qemu
    started = time.monotonic()
    deadline = started + BOOT_TIMEOUT_S

    wait_for_serial(serial, proc, r"VAUBAN-TESTGUEST-BOOTED", BOOT_TIMEOUT_S)
    wait_for_serial(serial, proc, r"vauban-testguest hostname=tg-boot-1$", 30)
    wait_for_serial(serial, proc, r"vauban-testguest instance-id=iid-5f3e2a$", 30)
    wait_for_serial(serial, proc, r"user-data says tg-boot-1 42$", 30)
    wait_for_serial(serial, proc, r"vauban-testguest network-config=present$", 30)
    wait_for_serial(serial, proc, r"VAUBAN-TESTGUEST-READY", 30)

    qmp = Qmp(qmp_path, deadline)
    try:
        assert qmp.execute("query-status")["status"] == "running"
        qmp.execute("system_powerdown")
    finally:
        qmp.close()

    try:
        rc = proc.wait(timeout=POWEROFF_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"QEMU still running after system_powerdown; serial:\n{_serial_text(serial)}")
    assert rc == 0
    assert re.search(r"vauban-testguest powering off$", _serial_text(serial), re.MULTILINE)
