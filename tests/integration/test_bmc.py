"""The controller's BMC client against a real IPMI BMC: OpenIPMI's ipmi_sim on loopback,
whose chassis control is a small program that keeps the power state in a file."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.ha.bmc import Bmc, BmcError

pytestmark = pytest.mark.integration

CHASSIS = """\
import sys
from pathlib import Path

state = Path(sys.argv[1])
op, args = sys.argv[2], sys.argv[3:]
if op == "get":
    for parm in args:
        print(f"{parm}:" + (state.read_text().strip() if parm == "power" else "default"))
elif op == "set":
    for parm, value in zip(args[::2], args[1::2]):
        if parm == "power":
            state.write_text(value + "\\n")
else:
    print(f"unknown operation {op}")
    sys.exit(1)
"""


@dataclass
class Sim:
    bmc: Bmc
    power_file: Path
    process: subprocess.Popen[bytes]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    if shutil.which("ipmi_sim") is None:
        pytest.skip("ipmi_sim is missing (make test installs openipmi)")
    port, password = _free_udp_port(), os.urandom(8).hex()
    power = tmp_path / "power"
    power.write_text("1\n")
    (tmp_path / "chassis.py").write_text(CHASSIS)
    (tmp_path / "lan.conf").write_text(
        f'name "test"\nset_working_mc 0x20\nstartlan 1\n  addr 127.0.0.1 {port}\n'
        "  priv_limit admin\n  guid a123456789abcdefa123456789abcdef\nendlan\n"
        f'chassis_control "{sys.executable} {tmp_path / "chassis.py"} {power}"\n'
        f'user 2 true "admin" "{password}" admin 10 md5\n')
    (tmp_path / "emu").write_text(
        "mc_setbmc 0x20\n"
        "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
        "mc_enable 0x20\n")
    (tmp_path / "state").mkdir()
    with open(tmp_path / "sim.log", "wb") as log:
        process = subprocess.Popen(
            ["ipmi_sim", "-n", "-c", str(tmp_path / "lan.conf"), "-f", str(tmp_path / "emu"),
             "-s", str(tmp_path / "state")], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, process)
        yield Sim(Bmc("test1", "127.0.0.1", port, "admin", password), power, process)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "ipmi_sim ended at start"
        listening = Path("/proc/net/udp").read_text()
        if f"0100007F:{port:04X}" in listening:
            return
        time.sleep(0.1)  # ipmi_sim says nowhere that it listens
    raise AssertionError(f"ipmi_sim did not listen on port {port}")


def test_power_off_returns_once_the_bmc_reads_off(sim: Sim) -> None:
    assert sim.bmc.power_state() == "on"
    sim.bmc.power_off()
    assert sim.power_file.read_text().strip() == "0"
    assert sim.bmc.power_state() == "off"
    sim.bmc.power_on()
    assert sim.power_file.read_text().strip() == "1"
    assert sim.bmc.power_state() == "on"


def active_sessions(sim: Sim) -> int:
    """The sessions open on the BMC, as ipmitool reads them (its own one included)."""
    done = subprocess.run(
        ["ipmitool", "-I", "lanplus", "-C", "3", "-H", sim.bmc.address, "-p",
         str(sim.bmc.port), "-U", sim.bmc.username, "-E", "session", "info", "all"],
        env={**os.environ, "IPMI_PASSWORD": sim.bmc.password}, capture_output=True,
        text=True, timeout=60, check=True)
    found = re.search(r"active sessions\s*:\s*(\d+)", done.stdout)
    assert found, done.stdout
    return int(found.group(1))


def test_each_call_closes_its_session_on_the_bmc(sim: Sim) -> None:
    """A BMC has few session slots; a session left open also goes stale and makes the
    next call wait out the client's retries."""
    if shutil.which("ipmitool") is None:
        pytest.skip("ipmitool is missing (make test installs it)")
    assert active_sessions(sim) == 1  # ipmitool's own
    assert sim.bmc.power_state() == "on"
    sim.bmc.power_off()
    assert active_sessions(sim) == 1
    sim.bmc.power_on()
    assert sim.bmc.power_state() == "on"
    assert active_sessions(sim) == 1


def test_a_wrong_password_is_named(sim: Sim) -> None:
    wrong = Bmc("test1", sim.bmc.address, sim.bmc.port, "admin", "not-" + sim.bmc.password)
    with pytest.raises(BmcError, match=r"BMC of node test1 at 127\.0\.0\.1:\d+ refused the "
                                       r"password for user 'admin'"):
        wrong.power_off()
    assert sim.power_file.read_text().strip() == "1"


def test_a_bmc_that_does_not_answer_is_named(sim: Sim) -> None:
    os.kill(sim.process.pid, signal.SIGTERM)
    sim.process.wait(timeout=30)
    with pytest.raises(BmcError, match=r"BMC of node test1 at 127\.0\.0\.1:\d+ did not "
                                       "answer"):
        sim.bmc.power_off()
