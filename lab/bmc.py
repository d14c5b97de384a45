"""A BMC per lab node: OpenIPMI's `ipmi_sim` on this machine, one per node, listening on
the lab bridge's host address at UDP port BMC_FIRST_PORT + i for node i, with an admin
user whose password is random per lab (lab.json, and 0600 in each node's bmc/ folder).

Its chassis control is `python -m lab.bmc_power` (see there), which switches exactly
that node's power through its freezer cgroup. Each BMC keeps its own files in the
node's `bmc/` folder: lan.conf, emu (the management controller's definition), state/
(ipmi_sim's persistent store), sim.log, password, and fault.json, the fault switches
that tests set (`set_fault`). The lab records each BMC's PID (and start time) before
it is needed and stops it by that PID.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lab.node import LabNode, process_start_ticks

BMC_FIRST_PORT = 6230  # node i's BMC listens on port 6230 + i
BMC_USER = "admin"
START_TIMEOUT_S = 30.0  # ipmi_sim listens within a second
STOP_TIMEOUT_S = 30.0
_REPO = Path(__file__).resolve().parent.parent  # where `python -m lab.bmc_power` runs
_STARTED: dict[int, subprocess.Popen[bytes]] = {}  # BMCs this process started, by PID
EMU = """# the BMC is the management controller at IPMB address 0x20
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
mc_enable 0x20
"""


def new_password() -> str:
    return secrets.token_hex(8)  # 16 characters: the most an IPMI 1.5 password holds


def folder(node: LabNode) -> Path:
    return Path(node.folder) / "bmc"


def port_of(index: int) -> int:
    return BMC_FIRST_PORT + index


def is_running(node: LabNode) -> bool:
    """The node's BMC process is alive and is the one the lab started."""
    return (node.bmc_pid is not None and node.bmc_pid_start is not None
            and process_start_ticks(node.bmc_pid) == node.bmc_pid_start)


def configure(node: LabNode, state: Path, host: str, port: int, password: str) -> None:
    """Write the BMC's files (its lan.conf names the lab state folder and the node, for
    its chassis control) and record its address; the password file is 0600."""
    bmc = folder(node)
    (bmc / "state").mkdir(parents=True, exist_ok=True)
    secret = bmc / "password"
    secret.touch(mode=0o600)
    secret.chmod(0o600)
    secret.write_text(password)
    control = shlex.join([sys.executable, "-m", "lab.bmc_power", str(state), node.name])
    (bmc / "lan.conf").write_text(
        f'name "{node.name}"\n'
        "set_working_mc 0x20\n"
        "  startlan 1\n"
        f"    addr {host} {port}\n"
        "    priv_limit admin\n"
        "    guid " + secrets.token_hex(16) + "\n"
        "  endlan\n"
        f'  chassis_control "{control}"\n'
        f'  user 2 true "{BMC_USER}" "{password}" admin 10 md5\n')
    (bmc / "emu").write_text(EMU)
    node.bmc_address = f"{host}:{port}"


def start(node: LabNode) -> None:
    """Start the node's BMC (configure first) and return once it listens. Its PID is
    recorded in the node; RuntimeError, with its log, if it ends or does not listen."""
    if node.bmc_address is None:
        raise RuntimeError(f"node {node.name} has no BMC configured")
    bmc = folder(node)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "PYTHONPATH": str(_REPO)}
    with open(bmc / "sim.log", "ab") as log:
        proc = subprocess.Popen(
            ["ipmi_sim", "-n", "-c", str(bmc / "lan.conf"), "-f", str(bmc / "emu"),
             "-s", str(bmc / "state")], cwd=_REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _STARTED[proc.pid] = proc
    node.bmc_pid, node.bmc_pid_start = proc.pid, process_start_ticks(proc.pid)
    host, port = node.bmc_address.rsplit(":", 1)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _listening(host, int(port)):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(node)
            raise RuntimeError(f"the BMC of node {node.name} did not start:\n"
                               f"{(bmc / 'sim.log').read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)  # ipmi_sim tells nobody when it listens


def stop(node: LabNode) -> None:
    """Stop the node's BMC by its recorded PID (SIGTERM, then SIGKILL); nothing if it
    does not run. The node's power is left as it is."""
    if is_running(node):
        assert node.bmc_pid is not None
        os.kill(node.bmc_pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while is_running(node) and time.monotonic() < deadline:
            _reap(node.bmc_pid)
            time.sleep(0.05)  # ipmi_sim exits
        if is_running(node):
            os.kill(node.bmc_pid, signal.SIGKILL)
            while is_running(node):
                _reap(node.bmc_pid)
                time.sleep(0.05)
    if node.bmc_pid is not None:
        _reap(node.bmc_pid)
    node.bmc_pid = node.bmc_pid_start = None


def _reap(pid: int) -> None:
    proc = _STARTED.get(pid)
    if proc is not None and proc.poll() is not None:
        del _STARTED[pid]


def _listening(host: str, port: int) -> bool:
    """A UDP socket is bound to host:port (read from the kernel's table, no packet sent)."""
    packed = socket.inet_aton(host)[::-1].hex().upper()
    wanted = f"{packed}:{port:04X}"
    return any(line.split()[1] == wanted
               for line in Path("/proc/net/udp").read_text().splitlines()[1:])


def credentials(node: LabNode) -> tuple[str, int, str, str]:
    """(address, port, user, password) of the node's BMC."""
    if node.bmc_address is None:
        raise RuntimeError(f"node {node.name} has no BMC configured")
    host, port = node.bmc_address.rsplit(":", 1)
    return host, int(port), BMC_USER, (folder(node) / "password").read_text()


def set_fault(node: LabNode, *, ignore_power_off: bool = False, hold: bool = False) -> None:
    """Make the node's BMC misbehave: `ignore_power_off` answers a power off with
    success and reports the power off from then on, but cuts nothing (a mis-wired BMC);
    `hold` keeps a power off waiting (and the BMC busy, unable to answer anything else)
    until the switch is cleared."""
    faults = {"ignore_power_off": ignore_power_off, "hold": hold}
    path = folder(node) / "fault.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(faults) + "\n")
    tmp.replace(path)


def clear_fault(node: LabNode) -> None:
    """The BMC works as it should again (a power off it ignored still reads off until
    the next power on)."""
    (folder(node) / "fault.json").unlink(missing_ok=True)


def faults(node: LabNode) -> dict[str, bool]:
    try:
        data = json.loads((folder(node) / "fault.json").read_text())
    except FileNotFoundError:
        return {}
    return {k: bool(v) for k, v in data.items()}


def ipmitool(node: LabNode, *command: str) -> subprocess.CompletedProcess[str]:
    """ipmitool over the LAN (RMCP+) against the node's BMC, password read from its file."""
    host, port, user, _ = credentials(node)
    # cipher suite 3 (HMAC-SHA1, AES-128), named: ipmi_sim cannot list its suites
    return subprocess.run(["ipmitool", "-I", "lanplus", "-C", "3", "-H", host, "-p", str(port),
                           "-U", user, "-f", str(folder(node) / "password"), *command],
                          capture_output=True, text=True, timeout=60)
