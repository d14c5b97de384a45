"""Real Xen behind the simulator: a dom0 under QEMU TCG, PV guests driven with `xl` over SSH.

`XlDom0` boots the cached dom0 image (tests/xapi_sim/dom0.py) from a qcow2 overlay in a
folder of the caller's (so the cache is never written), with user-mode networking whose
only way in is one port forwarded from 127.0.0.1 to dom0's sshd. It waits for the ready
line dom0 writes on its console once `xl` works, then for SSH, whose host key must be
the image's own (RejectPolicy: any other key ends the connection). It is stopped by its PID.

`XlBackend` runs PV guests there: dom0's own kernel with the test guest's initramfs
(images/testguest), one `xl` config per guest. Each guest's console is kept by
xenconsoled in a file in dom0 (`console_log`). Guests are destroyed on poweroff, reboot
and crash, so a guest that stops leaves no domain behind.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paramiko

from images.testguest import build as testguest
from images.testguest import disk as testguest_disk
from tests.xapi_sim.dom0 import CONSOLE_LOG_DIR, READY_LINE, XL_FAILED_LINE, Dom0Image
from tests.xapi_sim.wire import XapiFault

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)
MEMORY_MIB = 3072
DOM0_CMDLINE = "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M noreboot"
# qemu64, not max: with `-cpu max` (AVX2, XSAVE) dom0's sshd now and then sent or took
# bytes its peer's MAC check refused once a guest ran beside it (measured 2026-12-03: the
# connection ended in 2 of 5 guest boots, also with offloads off or one TCG thread;
# none in 13 with qemu64; the cause is not pinned down, vector state switched between
# domains under TCG is the likely one). qemu64 has no SMEP/SMAP: Xen needs no smap=0 smep=0.
CPU_MODEL = "qemu64"
KERNEL_CMDLINE = "root=/dev/vda rw console=hvc0"
BOOT_TIMEOUT_S = 900.0  # TCG on two shared cores; an idle machine needs ~40 s
SSH_TIMEOUT_S = 120.0
GUEST_DIR = "/var/lib/vauban-xl"
GUEST_KERNEL = f"{GUEST_DIR}/vmlinuz"
GUEST_INITRD = f"{GUEST_DIR}/testguest-initrd.gz"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
PowerState = Literal["running", "paused", "halted"]
MiB = 1024 * 1024


class XlError(Exception):
    """A command in dom0 failed; says which, its exit status and its stderr."""


class Dom0Lost(XlError):
    """The SSH connection to dom0 ended; says whether QEMU still runs and how dom0's
    console ends."""


class _ConnectionLost(Exception):
    """The SSH connection ended under a command (run() turns it into Dom0Lost)."""


class Dom0BootError(Exception):
    """dom0 did not come up; carries the end of its serial console."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (QEMU fails at start if another takes it first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def testguest_initrd(dest: Path) -> Path:
    """The test guest's initramfs, taken from its (built or reused) disk image into `dest`."""
    image = testguest.build(out=REPO / testguest.DEFAULT_OUT,
                            cache=REPO / testguest.DEFAULT_CACHE).image
    offset = testguest_disk.PARTITION_START_LBA * testguest_disk.SECTOR
    subprocess.run(["mcopy", "-o", "-i", f"{image}@@{offset}",
                    f"::{testguest_disk.INITRD_NAME}", str(dest)], check=True,
                   capture_output=True)
    return dest


class XlDom0:
    """A dom0 booted under QEMU TCG from an overlay in `folder` (see the module docstring).

    After `start()` succeeds dom0 answers `run`; after it fails QEMU is stopped and the
    overlay removed. `stop()` ends QEMU by its PID and removes the overlay; calling it
    again does nothing."""

    def __init__(self, image: Dom0Image, folder: Path) -> None:
        self.image = image
        self.folder = folder
        self.overlay = folder / "dom0-overlay.qcow2"
        self.serial = folder / "dom0-serial.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.ssh: paramiko.SSHClient | None = None
        self.boot_seconds = 0.0
        self.owned = True  # False: another process's dom0 (see attached)

    @classmethod
    def attached(cls, image: Dom0Image, port: int) -> XlDom0:
        """A dom0 another process booted and owns (its QEMU, its overlay), reached over
        SSH on 127.0.0.1:`port` with the image's keys; `stop` only disconnects."""
        dom0 = cls(image, Path("/nonexistent"))
        dom0.port, dom0.owned = port, False
        dom0.ssh = dom0._connect(time.monotonic() + SSH_TIMEOUT_S)
        return dom0

    def start(self) -> None:
        started = time.monotonic()
        try:
            self._launch()
            self._wait_ready(started + BOOT_TIMEOUT_S)
            self.ssh = self._connect(time.monotonic() + SSH_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - started

    def _launch(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                        "-b", str(self.image.root), str(self.overlay)], check=True,
                       capture_output=True)
        self.port = free_port()
        # multiboot modules: "path args" items separated by commas
        modules = f"{self.image.vmlinuz} {KERNEL_CMDLINE},{self.image.initrd}"
        command = [
            "qemu-system-x86_64", "-accel", "tcg", "-m", str(MEMORY_MIB), "-smp", "2",
            "-cpu", CPU_MODEL, "-display", "none", "-monitor", "none", "-parallel", "none",
            "-serial", f"file:{self.serial}", "-no-reboot",
            "-kernel", str(self.image.xen), "-append", DOM0_CMDLINE, "-initrd", modules,
            "-drive", f"file={self.overlay},if=virtio,format=qcow2",
            # restrict=on: dom0 reaches nothing; the forward is the only way in
            "-nic", "user,model=virtio-net-pci,restrict=on,"
                    f"hostfwd=tcp:127.0.0.1:{self.port}-:22",
        ]
        with open(self.folder / "qemu.log", "wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)

    def console(self) -> str:
        """What dom0 (Xen, then its kernel and units) wrote on the serial port so far."""
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        while True:
            text = self.console()
            if READY_LINE in text:
                return
            if XL_FAILED_LINE in text:
                raise Dom0BootError("dom0 booted but `xl info` failed:\n" + text[-3000:])
            if self.process.poll() is not None:
                qemu = (self.folder / "qemu.log").read_text(errors="replace")
                raise Dom0BootError(f"QEMU exited ({self.process.returncode}): {qemu}\n"
                                    + text[-3000:])
            if time.monotonic() > deadline:
                raise Dom0BootError(f"no {READY_LINE} after {BOOT_TIMEOUT_S:.0f} s:\n"
                                    + text[-3000:])
            time.sleep(0.5)  # polling the serial log QEMU appends to

    def _connect(self, deadline: float) -> paramiko.SSHClient:
        host = f"[127.0.0.1]:{self.port}"
        entry = paramiko.hostkeys.HostKeyEntry.from_line(
            f"{host} {self.image.host_key.read_text().strip()}")
        assert entry is not None and entry.key is not None
        key = paramiko.Ed25519Key(filename=str(self.image.client_key))
        while True:
            client = paramiko.SSHClient()
            client.get_host_keys().add(host, entry.key.get_name(), entry.key)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                client.connect("127.0.0.1", self.port, username="root", pkey=key,
                               allow_agent=False, look_for_keys=False, timeout=30,
                               banner_timeout=60, auth_timeout=60)
                return client
            except paramiko.BadHostKeyException:
                client.close()
                raise
            except (OSError, paramiko.SSHException, EOFError):
                client.close()  # sshd is up, but dom0's address may still be coming
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def run(self, command: str, timeout: float = 300, stdin: bytes | None = None, *,
            retry: bool = False) -> str:
        """Run `command` in dom0 (as root), fed `stdin`; its stdout. Raises XlError when
        it exits non-zero, Dom0Lost (with QEMU's state and dom0's console) when dom0
        cannot be reached or the SSH connection ends under the command.

        A connection found ended before the command is sent is made again first (while
        QEMU runs). One that ends under the command is made again and the command rerun
        only with `retry` (a command that may run twice: a read); the next call does so
        in any case."""
        if not self._connected() and not self._reconnect():
            raise Dom0Lost(f"dom0 cannot be reached for `{command}`: {self.diagnosis()}")
        try:
            return self._run_once(command, timeout, stdin)
        except _ConnectionLost as lost:
            log.warning("the SSH connection to dom0 ended under `%s` (%s)", command, lost)
            if not (retry and self._reconnect()):
                raise Dom0Lost(f"the SSH connection to dom0 ended under `{command}` "
                               f"({lost}): {self.diagnosis()}") from None
        try:
            return self._run_once(command, timeout, stdin)
        except _ConnectionLost as lost:
            raise Dom0Lost(f"the SSH connection to dom0 ended again under `{command}` "
                           f"({lost}): {self.diagnosis()}") from None

    def _connected(self) -> bool:
        transport = self.ssh.get_transport() if self.ssh is not None else None
        return transport is not None and transport.is_active()

    def _run_once(self, command: str, timeout: float, stdin: bytes | None) -> str:
        assert self.ssh is not None
        try:
            channel_in, stdout, stderr = self.ssh.exec_command(command, timeout=timeout)
            if stdin is not None:
                channel_in.write(stdin)
                channel_in.flush()
            channel_in.channel.shutdown_write()
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            status = stdout.channel.recv_exit_status()
        except (paramiko.SSHException, EOFError, ConnectionError) as e:
            raise _ConnectionLost(self._why_lost(str(e) or type(e).__name__)) from e
        if status == -1:  # the channel closed without an exit status: the connection ended
            raise _ConnectionLost(self._why_lost("no exit status came back"))
        if status != 0:
            raise XlError(f"`{command}` in dom0 exited {status}: {err.strip()}")
        return out

    def _why_lost(self, seen: str) -> str:
        """What the caller saw, and what ended the SSH transport if it says (e.g. a MAC
        that did not match: bytes changed on the way)."""
        transport = self.ssh.get_transport() if self.ssh is not None else None
        cause = transport.get_exception() if transport is not None else None
        return f"{seen}; the SSH transport ended with: {cause}" if cause else seen

    def _reconnect(self) -> bool:
        """A new SSH connection, if QEMU (ours) still runs and dom0 answers; False if not
        (or if dom0 was never started)."""
        if self.port == 0 or (self.owned and (self.process is None
                                              or self.process.poll() is not None)):
            return False
        if self.ssh is not None:
            self.ssh.close()
        try:
            self.ssh = self._connect(time.monotonic() + SSH_TIMEOUT_S)
        except (OSError, paramiko.SSHException, EOFError):
            self.ssh = None
            return False
        return True

    def diagnosis(self) -> str:
        """QEMU's state and the end of dom0's serial console: why dom0 stopped answering."""
        if not self.owned:
            return "dom0 is another process's (its QEMU and console are not ours to read)"
        if self.process is None:
            state = "QEMU is not started"
        elif (rc := self.process.poll()) is None:
            state = f"QEMU (pid {self.process.pid}) still runs"
        else:
            qemu = (self.folder / "qemu.log").read_text(errors="replace").strip()
            state = f"QEMU exited ({rc}): {qemu[-1000:]}"
        return f"{state}; dom0's console ends with:\n{self.console()[-3000:]}"

    def write(self, remote: str, data: bytes) -> None:
        """Make file `remote` in dom0 hold `data` (through the command channel: one SSH
        mechanism, no SFTP subsystem)."""
        self.run(f"cat > {shlex.quote(remote)}", stdin=data)

    def stop(self) -> None:
        if self.ssh is not None:
            self.ssh.close()
            self.ssh = None
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self.owned:
            self.overlay.unlink(missing_ok=True)


@dataclass(frozen=True)
class Domain:
    """One guest domain as `xl list` shows it."""

    name: str
    domid: int
    memory_mib: int
    vcpus: int
    flags: str  # xl's six state letters, e.g. "-b----"

    @property
    def state(self) -> PowerState:
        if any(flag in self.flags for flag in "scd"):
            return "halted"  # shut down, crashed or dying: on its way out
        if "p" in self.flags:
            return "paused"
        return "running"  # r, b, or no letter at all: runnable, waiting for a CPU


class XlBackend:
    """PV guests in `dom0`, each named by the caller (the simulator: the VM's uuid).

    `initrd` is the test guest's initramfs on this machine; it and dom0's kernel are
    copied into dom0 by the first `create`."""

    def __init__(self, dom0: XlDom0, initrd: Path) -> None:
        self.dom0 = dom0
        self.initrd = initrd
        self._copied = False

    def _copy_boot_files(self) -> None:
        if self._copied:
            return
        self.dom0.run(f"mkdir -p {GUEST_DIR}")
        self.dom0.write(GUEST_KERNEL, self.dom0.image.vmlinuz.read_bytes())
        self.dom0.write(GUEST_INITRD, self.initrd.read_bytes())
        self._copied = True

    @staticmethod
    def _check_name(name: str) -> str:
        if not NAME.fullmatch(name):
            raise ValueError(f"domain name {name!r} is not 1-64 of [A-Za-z0-9_.-]")
        return name

    def config(self, name: str, memory_mib: int, vcpus: int) -> str:
        """The xl config of a PV guest: dom0's kernel, the test guest's initramfs."""
        return (f'name = "{name}"\ntype = "pv"\nkernel = "{GUEST_KERNEL}"\n'
                f'ramdisk = "{GUEST_INITRD}"\nextra = "console=hvc0"\n'
                f"memory = {memory_mib}\nvcpus = {vcpus}\n"
                'on_poweroff = "destroy"\non_reboot = "destroy"\non_crash = "destroy"\n')

    def create(self, name: str, memory_mib: int, vcpus: int) -> None:
        """Start PV guest `name`. After success it runs and its console log starts empty;
        after failure no domain and no config of that name are left."""
        self._check_name(name)
        # below 128 MiB xl cannot place dom0's kernel and the initramfs (Out of memory)
        if not (128 <= memory_mib <= 1024 and 1 <= vcpus <= 2):
            raise ValueError(f"{memory_mib} MiB / {vcpus} vCPUs does not fit this dom0 "
                             "(128-1024 MiB, 1-2 vCPUs)")
        if any(d.name == name for d in self.domains()):
            raise XlError(f"a domain named {name} exists already")
        self._copy_boot_files()
        cfg = f"{GUEST_DIR}/{name}.cfg"
        self.dom0.run(f"rm -f {shlex.quote(self._log_path(name))}")
        self.dom0.write(cfg, self.config(name, memory_mib, vcpus).encode())
        try:
            self.dom0.run(f"xl create {shlex.quote(cfg)}")
        except XlError:
            with contextlib.suppress(XlError):
                self.dom0.run(f"xl destroy {shlex.quote(name)}")
            self.dom0.run(f"rm -f {shlex.quote(cfg)}")
            raise

    def domains(self) -> list[Domain]:
        """Every guest domain (Domain-0 left out)."""
        found = []
        for line in self.dom0.run("xl list", retry=True).splitlines()[1:]:
            name, domid, mem, vcpus, flags, _ = line.split()
            if name != "Domain-0":
                found.append(Domain(name, int(domid), int(mem), int(vcpus), flags))
        return found

    def state(self, name: str) -> PowerState:
        """`running` (running or blocked), `paused`, or `halted` (no such domain)."""
        for domain in self.domains():
            if domain.name == self._check_name(name):
                return domain.state
        return "halted"

    def shutdown(self, name: str, timeout: float = 300) -> None:
        """Ask the guest to power off and wait until it has; after success no domain of
        that name is left. Raises XlError when it did not stop within `timeout`."""
        quoted = shlex.quote(self._check_name(name))
        self.dom0.run(f"timeout {int(timeout)} xl shutdown -w {quoted}", timeout=timeout + 30)
        self.dom0.run(f"rm -f {GUEST_DIR}/{name}.cfg")

    def destroy(self, name: str) -> None:
        """Stop the guest at once; after success no domain of that name is left (there
        may have been none)."""
        if any(d.name == self._check_name(name) for d in self.domains()):
            self.dom0.run(f"xl destroy {shlex.quote(name)}")
        self.dom0.run(f"rm -f {GUEST_DIR}/{name}.cfg")

    @staticmethod
    def _log_path(name: str) -> str:
        return f"{CONSOLE_LOG_DIR}/guest-{name}.log"

    def console_log(self, name: str) -> str:
        """What the guest wrote on its console so far (kept after it stopped)."""
        return self.dom0.run(f"cat {shlex.quote(self._log_path(self._check_name(name)))}"
                             " 2>/dev/null || true", retry=True)

    def wait_console(self, name: str, text: str, timeout: float = 600) -> str:
        """The guest's console log once it holds `text`. Raises XlError with the log
        when it does not within `timeout` or when the guest is gone first."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.console_log(name)
            if text in log:
                return log
            if self.state(name) == "halted":
                raise XlError(f"guest {name} stopped before writing {text!r}:\n{log[-3000:]}")
            if time.monotonic() > deadline:
                raise XlError(f"guest {name} did not write {text!r} in {timeout:.0f} s:\n"
                              + log[-3000:])
            time.sleep(1)  # polling the log file xenconsoled appends to


class XenGuests:
    """The simulator's guest backend (lifecycle.Backend) on real Xen: each VM's guest is
    a PV guest named by the VM's uuid, with the VM's memory and vCPUs; its disks and
    NICs are not plugged in (dom0's kernel and the test guest's initramfs boot it)."""

    def __init__(self, xl: XlBackend) -> None:
        self.xl = xl
        self.records: dict[str, dict[str, Any]] = {}  # for a reboot

    def start(self, vm_uuid: str, record: dict[str, Any], paused: bool) -> None:
        if paused:
            raise XapiFault("OPERATION_NOT_ALLOWED", "paused starts: not on the xl backend")
        memory_mib = int(record["memory_static_max"]) // MiB
        try:
            self.xl.create(vm_uuid, memory_mib, int(record["VCPUs_at_startup"]))
        except (XlError, ValueError) as e:
            raise XapiFault("INTERNAL_ERROR", f"xl create: {e}") from e
        self.records[vm_uuid] = record

    def shutdown(self, vm_uuid: str, hard: bool) -> None:
        try:
            if hard or self.xl.state(vm_uuid) != "running":
                self.xl.destroy(vm_uuid)
            else:
                self.xl.shutdown(vm_uuid)
        except XlError as e:
            raise XapiFault("INTERNAL_ERROR", f"xl shutdown: {e}") from e

    def reboot(self, vm_uuid: str) -> None:
        self.shutdown(vm_uuid, True)
        self.start(vm_uuid, self.records[vm_uuid], False)

    def destroy(self, vm_uuid: str) -> None:
        self.shutdown(vm_uuid, True)
        self.records.pop(vm_uuid, None)
