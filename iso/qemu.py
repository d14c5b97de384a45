"""An appliance ISO (or an installed disk) booted under QEMU (TCG), its first serial port
read and typed into: for the tests and the benchmark.

QEMU connects its serial port to a socket the test listens on, so nothing it prints is
lost, and everything read is also written to a log file for the failure report. Waits
read until a pattern appears or a deadline passes (a safety net, not a timing check).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]")


class Console:
    """The guest's ttyS0: `wait_for` reads it, `send` types into it."""

    def __init__(self, conn: socket.socket, log: Path) -> None:
        self.conn = conn
        self.log = log
        self.transcript = b""  # everything read, escape sequences removed
        self.seen = b""  # what was read after the last match
        self.qemu: subprocess.Popen[bytes] | None = None

    def wait_for(self, pattern: str, deadline_s: float,
                 since_boot: bool = False) -> re.Match[bytes]:
        """The first match of `pattern` in what the guest printed since the last match
        (matched as soon as it appears: end a pattern with '\\n' to have its whole line),
        or since it booted (`since_boot`: for lines whose order against the last match is
        not known; the last match stays where it was); raises TimeoutError with the
        log's tail if the deadline passes first."""
        regex = re.compile(pattern.encode())
        end = time.monotonic() + deadline_s
        while True:
            found = regex.search(self.transcript if since_boot else self.seen)
            if found:
                if not since_boot:
                    self.seen = self.seen[found.end():]
                return found
            left = end - time.monotonic()
            if left <= 0:
                tail = self.log.read_bytes()[-3000:].decode(errors="replace")
                raise TimeoutError(f"{pattern!r} not printed in {deadline_s:.0f} s:\n{tail}")
            self.conn.settimeout(min(left, 5.0))
            try:
                chunk = self.conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise EOFError(f"QEMU closed the serial port before {pattern!r}")
            with open(self.log, "ab") as out:
                out.write(chunk)
            text = ANSI.sub(b"", chunk).replace(b"\r", b"")
            self.seen += text
            self.transcript += text

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)


@contextmanager
def boot(iso: Path | None, work: Path, uefi: bool = False, memory_mb: int = 1024,
         extra: tuple[str, ...] = (), nic: str = "") -> Iterator[Console]:
    """QEMU running `iso` as a CD (BIOS, or UEFI with OVMF), or booting from its first
    disk when `iso` is None (give the disk in `extra`); no network beyond QEMU's own user
    network (`nic`: more options for it, e.g. a guestfwd to one port of this host's
    loopback); QEMU is killed by its PID on exit, also when the body fails. The console's
    `qemu` is its process (to wait for its end, with -no-reboot)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "serial.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", str(memory_mb),
            "-smp", "2", "-display", "none", "-monitor", "none",
            "-chardev", f"socket,id=ser0,path={path}", "-serial", "chardev:ser0",
            "-nic", "user,model=virtio-net-pci,restrict=on" + (f",{nic}" if nic else ""),
            *extra]
    if iso is not None:
        argv += ["-drive", f"file={iso},media=cdrom,readonly=on,format=raw", "-boot", "d"]
    if uefi:
        shutil.copyfile(OVMF_VARS, work / "OVMF_VARS.fd")
        argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,file={work / 'OVMF_VARS.fd'}"]
    with open(work / "qemu.log", "wb") as qemu_log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_log,
                                stderr=subprocess.STDOUT)
    try:
        listener.settimeout(120)
        conn, _ = listener.accept()
        with conn:
            console = Console(conn, work / "serial.log")
            console.qemu = proc
            yield console
    finally:
        proc.kill()
        proc.wait()
        listener.close()
        os.unlink(path)


GUEST_CONTROLLER = "10.0.2.100"  # where a guest reaches the controller (QEMU forwards it)
GUEST_PORT = 8443


def forward_to(port: int) -> str:
    """`boot(nic=...)` giving the guest one way out: a connection to
    GUEST_CONTROLLER:GUEST_PORT, relayed by socat (one per connection) to `port` on this
    host's loopback."""
    return f"guestfwd=tcp:{GUEST_CONTROLLER}:{GUEST_PORT}-cmd:socat - TCP:127.0.0.1:{port}"


def ssh_forward(port: int) -> str:
    """`boot(nic=...)` option making the guest's sshd reachable at `port` on this host's
    loopback (and nowhere else)."""
    return f"hostfwd=tcp:127.0.0.1:{port}-:22"


def answer_medium(path: Path, answers: str) -> Path:
    """A small FAT image labelled VAUBAN holding vauban-answers.toml (by mtools: no mount)."""
    text = path.with_suffix(".toml")
    text.write_text(answers)
    subprocess.run(["mkfs.vfat", "-n", "VAUBAN", "-C", str(path), "2048"], check=True,
                   capture_output=True)
    subprocess.run(["mcopy", "-i", str(path), str(text), "::/vauban-answers.toml"],
                   check=True, capture_output=True)
    return path


def drives(disk: Path, answers: Path | None = None) -> tuple[str, ...]:
    """`boot(extra=...)` for the server's disk, and the answer medium when given."""
    found: tuple[str, ...] = ("-drive", f"file={disk},if=virtio,format=raw,cache=unsafe")
    if answers is not None:
        found += ("-drive", f"file={answers},if=virtio,format=raw,readonly=on")
    return found
