"""One lab node: an overlay over the cached root, given its own identity, booted with
systemd by systemd-nspawn in its own network namespace.

A node's writes land in its own upper folder on disk, so a node stopped and started
again keeps what its rollout installed. Its identity is written before its first boot:
hostname, machine id, libvirt host UUID (libvirt refuses to migrate between two hosts
that share one), an ed25519 SSH host key made here (its fingerprint is what the lab
hands out to pin), and the lab's SSH key for root.

Power (what a BMC switches): every process of a node is in the node's own freezer cgroup
(cgroup v1, `FREEZER/vauban-lab/<lab>-<node>`), which `start` puts nspawn in before its
first instruction. Through it the lab freezes a node (a hung server: it neither answers
nor dies), thaws it, or cuts its power (every process killed at once, by PID, as a power
cut would: no chance to shut down or write anything more). Processes are only ever found
through the group, never by name.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SSHD_CONFIG = """# written by the Vauban lab
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
"""
_STARTED: dict[int, subprocess.Popen[bytes]] = {}  # nodes this process booted, by PID
BOOT_TIMEOUT_S = 300.0  # a node boots in seconds; a loaded 2-core machine takes longer
STOP_TIMEOUT_S = 90.0
HALT_SIGNAL = signal.SIGRTMIN + 3  # what nspawn --boot passes on as SIGTERM
FREEZER = Path("/sys/fs/cgroup/freezer")
LAB_GROUPS = FREEZER / "vauban-lab"
SETTLE_TIMEOUT_S = 60.0  # freezing, thawing or emptying a group takes milliseconds


@dataclass
class LabNode:
    """Where one node lives; the lab's state file keeps a list of these."""

    name: str
    namespace: str
    veth: str
    address: str  # with its prefix, e.g. 10.241.0.11/24
    folder: str  # upper/, work/, merged/, console.log
    pid: int | None = None  # systemd-nspawn's PID while the node runs
    pid_start: int | None = None  # its start time in clock ticks: a reused PID is not ours
    host_key_sha256: str | None = None  # "SHA256:..." as OpenSSH prints it
    cgroup: str | None = None  # its freezer cgroup: every process of the node, and only those
    bmc_address: str | None = None  # its BMC's "host:port" (UDP), see lab/bmc.py
    bmc_pid: int | None = None  # the BMC's ipmi_sim while it runs
    bmc_pid_start: int | None = None

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    @property
    def merged(self) -> Path:
        return Path(self.folder) / "merged"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def process_start_ticks(pid: int) -> int | None:
    """The start time of process `pid` (field 22 of its stat), or None if it is gone (or
    has ended and waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def is_running(node: LabNode) -> bool:
    """The node's nspawn process is alive and is the one the lab started."""
    return (node.pid is not None and node.pid_start is not None
            and process_start_ticks(node.pid) == node.pid_start)


def mount_overlay(node: LabNode, root: Path) -> None:
    """Mount the node's overlay (the cached root below, its own upper folder above)."""
    folder = Path(node.folder)
    for sub in ("upper", "work", "merged"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    if os.path.ismount(node.merged):
        return
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={root},upperdir={folder / 'upper'},workdir={folder / 'work'}",
                    str(node.merged)], check=True, capture_output=True)


def unmount_overlay(node: LabNode) -> None:
    if os.path.ismount(node.merged):
        subprocess.run(["umount", str(node.merged)], check=True, capture_output=True)


def write_identity(node: LabNode, authorized_key: str) -> None:
    """Hostname, machine id, libvirt host UUID, SSH host key and root's authorized key,
    once: a node keeps its identity across restarts."""
    m = node.merged
    key = m / "etc/ssh/ssh_host_ed25519_key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        f"root@{node.name}", "-f", str(key)], check=True)
        (m / "etc/hostname").write_text(node.name + "\n")
        (m / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {node.name}\n")
        (m / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        with open(m / "etc/libvirt/libvirtd.conf", "a") as conf:
            conf.write(f'host_uuid = "{uuid.uuid4()}"\n')
        (m / "etc/ssh/sshd_config.d/vauban-lab.conf").write_text(SSHD_CONFIG)
    share_kvm_group(m / "etc/group", passwd_file=m / "etc/passwd")
    ssh = m / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(authorized_key.strip() + "\n")
    (ssh / "authorized_keys").chmod(0o600)
    node.host_key_sha256 = host_key_fingerprint(Path(str(key) + ".pub"))


def share_kvm_group(group_file: Path, host_group_file: Path = Path("/etc/group"),
                    passwd_file: Path | None = None) -> None:
    """Give the node's `kvm` group the host's GID: /dev/kvm is the host's device, bound in,
    so a node that sets its group (as the base role does) must name the host's group.
    Users whose primary group was kvm (libvirt-qemu) are moved along in `passwd_file`:
    otherwise they would keep the old GID, a group of no name, and lose kvm."""
    host_gid = _gid_of("kvm", host_group_file.read_text())
    lines = group_file.read_text().splitlines()
    old_gid = _gid_of("kvm", "\n".join(lines))
    if host_gid is None or old_gid in (None, host_gid):
        return
    taken = [line.split(":")[0] for line in lines if line.split(":")[2] == host_gid]
    if taken:
        raise RuntimeError(f"the node's group {taken[0]} has GID {host_gid}, the host's kvm "
                           "group's: /dev/kvm cannot be shared")
    if passwd_file is not None:
        users = passwd_file.read_text().splitlines()
        passwd_file.write_text("\n".join(
            ":".join([*f[:3], host_gid, *f[4:]]) if len(f) > 3 and f[3] == old_gid else line
            for line in users for f in [line.split(":")]) + "\n")
    group_file.write_text("\n".join(
        ":".join([*f[:2], host_gid, *f[3:]]) if f[0] == "kvm" else line
        for line in lines for f in [line.split(":")]) + "\n")


def _gid_of(group: str, text: str) -> str | None:
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == group:
            return fields[2]
    return None


def host_key_fingerprint(public_key_file: Path) -> str:
    """OpenSSH's "SHA256:..." fingerprint of a public key file."""
    blob = base64.b64decode(public_key_file.read_text().split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def nspawn_command(node: LabNode) -> list[str]:
    binds = [f"--bind={dev}" for dev in ("/dev/kvm", "/dev/net/tun", "/dev/vhost-net")
             if Path(dev).exists()]
    return ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
            f"--directory={node.merged}", f"--machine={node.name}",
            f"--hostname={node.name}", f"--network-namespace-path=/run/netns/{node.namespace}",
            "--capability=all", "--console=pipe", *binds]


def start(node: LabNode) -> None:
    """Boot the node; its console goes to console.log in its folder. Returns once the
    nspawn process runs (see wait_ready for the node being up). With a cgroup recorded,
    nspawn is in it from its first instruction, so everything the node runs is too."""
    join = None
    if node.cgroup is not None:
        Path(node.cgroup).mkdir(parents=True, exist_ok=True)
        procs = str(Path(node.cgroup) / "cgroup.procs")

        def join() -> None:  # in the child, before exec: no fork of it escapes the group
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

    log = open(Path(node.folder) / "console.log", "ab")
    with log:
        proc = subprocess.Popen(nspawn_command(node), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=join)
    _STARTED[proc.pid] = proc  # kept, to be waited for when the node stops
    node.pid = proc.pid
    node.pid_start = process_start_ticks(proc.pid)


def leader_pid(node: LabNode) -> int | None:
    """The PID (on the host) of the node's own PID 1, or None while there is none."""
    if not is_running(node):
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("PPid", "").strip() == str(node.pid) and \
                fields.get("NSpid", "").split()[-1:] == ["1"]:
            return int(entry.name)
    return None


def run_inside(node: LabNode, *command: str, timeout: float = 60.0) -> \
        subprocess.CompletedProcess[str]:
    """Run a command in every namespace of the running node (as its root)."""
    leader = leader_pid(node)
    if leader is None:
        raise RuntimeError(f"node {node.name} is not running")
    return subprocess.run(["nsenter", "-t", str(leader), "-a", *command],
                          capture_output=True, text=True, timeout=timeout)


def ssh_answers(node: LabNode) -> bool:
    """sshd on the node sends its banner (from the host, over the lab bridge)."""
    try:
        with socket.create_connection((node.ip, 22), timeout=2) as s:
            s.settimeout(2)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def wait_ready(node: LabNode, timeout: float = BOOT_TIMEOUT_S) -> str:
    """Wait until the node has booted (systemd's state running or degraded) and its sshd
    answers; returns systemd's state. RuntimeError, with the console's end, if the node
    stops or is not up in `timeout` s."""
    deadline = time.monotonic() + timeout
    state = "not started"
    while time.monotonic() < deadline:
        if not is_running(node):
            raise RuntimeError(f"node {node.name} stopped while booting:\n{console_tail(node)}")
        if leader_pid(node) is not None:
            state = run_inside(node, "systemctl", "is-system-running").stdout.strip()
            if state in ("running", "degraded") and ssh_answers(node):
                return state
        time.sleep(0.5)  # systemd inside the node has no way to tell the host it is up
    raise RuntimeError(f"node {node.name} not up after {timeout:.0f} s (systemd: {state}):\n"
                       f"{console_tail(node)}")


def console_tail(node: LabNode, lines: int = 20) -> str:
    try:
        text = (Path(node.folder) / "console.log").read_text(errors="replace")
    except FileNotFoundError:
        return "(no console log)"
    return "\n".join(text.splitlines()[-lines:])


def _init_hears_halt(node: LabNode) -> bool:
    """The node's systemd blocks or catches SIGRTMIN+3 (its halt request): until it does,
    the kernel drops that signal, as it does any a namespace's init has no use for yet."""
    leader = leader_pid(node)
    if leader is None:
        return False
    try:
        status = Path(f"/proc/{leader}/status").read_text()
    except OSError:
        return False
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    bit = 1 << (HALT_SIGNAL - 1)
    return any(int(fields.get(mask, "0").strip() or "0", 16) & bit
               for mask in ("SigBlk", "SigCgt"))


def ask_to_halt(node: LabNode, timeout: float = STOP_TIMEOUT_S) -> None:
    """Ask the running node for an orderly shutdown: SIGTERM to its nspawn, which passes
    the halt request to the node's systemd. Sent once: a second SIGTERM makes nspawn kill
    the node at once. A node still booting is first given up to `timeout` s to listen
    for the request, which would otherwise be lost. Nothing for a node not running."""
    deadline = time.monotonic() + timeout
    while is_running(node) and not _init_hears_halt(node) and time.monotonic() < deadline:
        time.sleep(0.1)  # the node's systemd is starting
    if is_running(node):
        assert node.pid is not None
        os.kill(node.pid, signal.SIGTERM)


def stop(node: LabNode, timeout: float = STOP_TIMEOUT_S, asked: bool = False) -> bool:
    """Power the node off (ask_to_halt, unless `asked` already), killing it if it does
    not end in `timeout` s. Only the process the lab started is signalled. True when it
    shut down in order (or was not running), False when it had to be killed."""
    if not is_running(node):
        if node.pid is not None:
            reap(node.pid)  # it may have ended already, signalled by the lab's down
        node.pid = node.pid_start = None
        return True
    assert node.pid is not None
    deadline = time.monotonic() + timeout
    if not asked:
        ask_to_halt(node, timeout)
    while is_running(node) and time.monotonic() < deadline:
        reap(node.pid)
        time.sleep(0.2)  # the node's systemd stops its units
    orderly = not is_running(node)
    if not orderly:
        os.kill(node.pid, signal.SIGKILL)
        while is_running(node):
            reap(node.pid)
            time.sleep(0.1)
    reap(node.pid)
    node.pid = node.pid_start = None
    return orderly


def reap(pid: int) -> None:
    """Collect the exit of a node this process started (a zombie keeps its PID)."""
    proc = _STARTED.get(pid)
    if proc is not None and proc.poll() is not None:
        del _STARTED[pid]


# Power, through the node's freezer cgroup


def freezer_unavailable(mounts: Path = Path("/proc/mounts")) -> str | None:
    """Why the lab cannot control its nodes' power here, or None."""
    for line in mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == str(FREEZER) and fields[2] == "cgroup" \
                and "freezer" in fields[3].split(","):
            return None
    return f"no cgroup v1 freezer is mounted at {FREEZER} (lab power control needs it)"


def group_for(lab_name: str, node_name: str) -> str:
    return str(LAB_GROUPS / f"{lab_name}-{node_name}")


def _groups(top: Path) -> Iterator[Path]:
    """`top` and every group below it, deepest first (the order they can be removed)."""
    for sub in sorted((p for p in top.iterdir() if p.is_dir()), key=str):
        yield from _groups(sub)
    yield top


def pids(node: LabNode) -> list[int]:
    """Every process in the node's group (and groups below it). A process that has
    exited leaves the group at once, before its parent reaps it."""
    found: list[int] = []
    top = _group(node)
    if not top.is_dir():
        return found
    for group in _groups(top):
        try:
            found += [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            continue  # a group below went away meanwhile
    return found


def powered(node: LabNode) -> bool:
    """The node's group holds a live process (not one waiting to be reaped)."""
    for pid in pids(node):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z":
            return True
    return False


def freeze(node: LabNode) -> None:
    """Stop every process of the node where it is; returns once the kernel reports the
    group FROZEN."""
    _set_state(node, "FROZEN")


def thaw(node: LabNode) -> None:
    """Let the node run on; returns once the kernel reports the group THAWED."""
    _set_state(node, "THAWED")


def frozen(node: LabNode) -> bool:
    return _group(node).is_dir() and _state(node) != "THAWED"


def power_cut(node: LabNode) -> None:
    """Kill every process of the node at once (SIGKILL by PID, from the group), thaw
    the group (frozen tasks die only once thawed), and return once it is empty. The
    node's nspawn PID stays recorded; `is_running` says it is gone."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        live = pids(node)
        if not live:
            break
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # already gone
        if _group(node).is_dir():
            thaw(node)
        if node.pid is not None:
            reap(node.pid)  # this process may be nspawn's parent
        if time.monotonic() > deadline:
            raise RuntimeError(f"node {node.name}: processes {live} still in "
                               f"{node.cgroup} after {SETTLE_TIMEOUT_S:.0f} s of SIGKILL")
        time.sleep(0.05)  # the kernel tears the processes down


def remove_group(node: LabNode) -> None:
    """Remove the node's (empty) group and the groups below it; the shared parent too
    once no lab uses it. Nothing if there is none."""
    top = _group(node)
    if not top.is_dir():
        return
    for group in _groups(top):
        group.rmdir()
    try:
        LAB_GROUPS.rmdir()
    except OSError:
        pass  # another lab's groups are in it


def _group(node: LabNode) -> Path:
    if node.cgroup is None:
        raise RuntimeError(f"node {node.name} has no cgroup: its lab predates power control")
    return Path(node.cgroup)


def _state(node: LabNode) -> str:
    return (_group(node) / "freezer.state").read_text().strip()


def _set_state(node: LabNode, state: str) -> None:
    (_group(node) / "freezer.state").write_text(state)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while _state(node) != state:
        if time.monotonic() > deadline:
            raise RuntimeError(f"node {node.name}: freezer.state is {_state(node)}, not "
                               f"{state}, after {SETTLE_TIMEOUT_S:.0f} s")
        time.sleep(0.01)  # FREEZING: the kernel is still stopping tasks
